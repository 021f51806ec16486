"""DICOM → 8-bit grayscale display pixels, reading only the tags needed to draw the image.

The display pipeline follows PS3.3 C.11 / PS3.4 N.2: stored values → Modality LUT (rescale
slope/intercept) → VOI LUT or window centre/width → ``MONOCHROME1`` inverted → 0..255.
Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) decode through pydicom's pixel
data plugins (pylibjpeg and friends).

Patient identifiers never enter memory as parsed values: ``dcmread(specific_tags=...)`` keeps
only the whitelisted tags below, so names, IDs, dates and accession numbers cannot reach a
log, an error message, the screen or the disk through this module.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging.image import MAX_PIXELS, ImageInputError, LoadedImage, rescale_to_uint8, saturation

# Projection radiography; OT ("other") is what many secondary-capture exports carry.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})
# Non-identifying tags shown to the user, in display order.
SHOWN_TAGS = (
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "BitsStored",
)
# Everything read from the file: pixel module, LUTs, and the shown tags. Nothing else.
READ_TAGS = [
    *SHOWN_TAGS,
    "SamplesPerPixel",
    "Rows",
    "Columns",
    "BitsAllocated",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(data: bytes, name: str) -> LoadedImage:
    """Decode a DICOM file's first frame for display, or raise ``ImageInputError`` saying why.

    Refuses files without pixel data and modalities that are not projection radiographs
    (CT, MR, SR, ...). Warns about multi-frame files and lateral views in ``notes``.
    """
    ds = _parse(data, name)
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise ImageInputError(
            f"{name}: DICOM modality {modality!r} is not a radiograph; LungCAM reads chest "
            f"X-rays (modality {', '.join(sorted(RADIOGRAPH_MODALITIES))})"
        )
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ImageInputError(
            f"{name}: the DICOM file has no pixel data (e.g. a structured report or a "
            "header-only export); upload the image itself"
        )
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > MAX_PIXELS:
        raise ImageInputError(
            f"{name}: {columns}×{rows} is {rows * columns / 1e6:.0f} MP; images over "
            f"{MAX_PIXELS / 1e6:.0f} MP are refused"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        stored = pixel_array(ds, index=0 if frames > 1 else None)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as err:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        syntax_name = getattr(syntax, "name", str(syntax))
        raise ImageInputError(
            f"{name}: the DICOM pixel data could not be decoded (transfer syntax "
            f"{syntax_name}; {type(err).__name__}: {_first_line(err)})"
        ) from err
    try:
        pixels, colour = _display_pixels(stored, ds)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise ImageInputError(
            f"{name}: the DICOM rescale, LUT or window values are invalid "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    notes = []
    if frames > 1:
        notes.append(f"the DICOM file has {frames} frames; the first one is analysed")
    view = str(ds.get("ViewPosition", "")).upper()
    if view in LATERAL_VIEWS:
        notes.append(
            f"view position is {view} (lateral); the model was trained on frontal (PA/AP) "
            "views only, so its output is unreliable"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    return LoadedImage(
        pixels,
        "DICOM",
        photometric or "unknown",
        notes,
        _shown_metadata(ds),
        saturation=colour,
    )


def _parse(data: bytes, name: str) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=READ_TAGS)
        for keyword in (*SHOWN_TAGS, "Rows", "Columns", "NumberOfFrames"):
            ds.get(keyword)  # convert now, so a malformed value fails here with a clear message
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        raise ImageInputError(
            f"{name}: not a readable DICOM file ({type(err).__name__}: {_first_line(err)})"
        ) from err
    if len(ds) == 0 and len(ds.file_meta) == 0:
        raise ImageInputError(
            f"{name}: not a readable DICOM file (no DICOM elements found); upload a PNG, "
            "JPEG, TIFF, BMP, WebP, GIF or DICOM file"
        )
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare dataset without the file meta group
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return ds


def _display_pixels(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float]:
    """Stored values → (H, W) uint8 for display, plus the colour saturation of RGB data."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        stored = apply_color_lut(stored, ds)
    if stored.ndim == 3:  # RGB (pydicom already converted YBR to RGB)
        rgb = rescale_to_uint8(stored) if stored.dtype != np.uint8 else stored
        gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.round(gray), 0, 255).astype(np.uint8), saturation(rgb)
    values = apply_modality_lut(stored, ds)
    windowed = apply_voi_lut(values, ds, index=0).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds and not ds.get("VOILUTSequence"):
        # The window's own output range (what it gives far below and above the window),
        # so values outside the window clip to black and white instead of being stretched.
        low, high = apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0)
        if high > low:
            scaled = np.clip((windowed - low) * (255.0 / (high - low)), 0, 255)
            pixels = np.round(scaled).astype(np.uint8)
        else:
            pixels = rescale_to_uint8(windowed)
    else:  # a VOI LUT, or no VOI at all: the output's own range
        pixels = rescale_to_uint8(windowed)
    if photometric == "MONOCHROME1":  # bright = low values: invert to the usual look
        pixels = 255 - pixels
    return pixels, 0.0


def _shown_metadata(ds: Dataset) -> dict[str, str]:
    """The whitelisted, non-identifying tags as display strings (absent tags are skipped)."""
    shown = {"format": "DICOM", "mode": str(ds.get("PhotometricInterpretation", ""))}
    for keyword in SHOWN_TAGS:
        value = ds.get(keyword)
        if value not in (None, ""):
            shown[keyword] = str(value)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None:
        shown["TransferSyntax"] = getattr(syntax, "name", str(syntax))
    return shown


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no detail"
