"""Any upload → 8-bit grayscale pixels or a clear error, and drawing heatmaps over them.

The lowest floor: ``image`` (leaf types, limits, suffixes), ``load`` (the one decoder, PIL),
``dicom`` (the DICOM reader) and ``overlay`` (colormaps). Imports nothing from LungCAM.
"""
