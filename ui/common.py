"""What every tab shares: the analysed case kept in the session, and drawing it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imaging.image import LoadedImage
from imaging.overlay import draw_box, draw_outline, overlay
from model.ood import OODCheck, describe
from model.predictor import Prediction

# Overlays are shown at the upload's own resolution; as PNG a 2048² overlay took ~740 ms to
# encode against 12 ms as JPEG (docs/BENCHMARKS.md). Lossless PNGs: Explain tab downloads.
DISPLAY_FORMAT = "jpeg"
DISCLAIMER = (
    "**Research demo — not a diagnostic device.** Outputs are not medical advice and must not "
    "guide patient care. The model was trained on a small public dataset whose classes come "
    "from different hospitals, so it may have learned the source instead of the disease."
)


@dataclass(frozen=True)
class Case:
    """One analysed upload, kept in the session (``gr.State``) for every later action.

    ``path`` is the upload's path in Gradio's cache, whose folder is named after the file's
    hash: the same path means the same bytes, so a later action on it needs no new decode
    and no new prediction.
    """

    path: str | None
    prediction: Prediction

    def of(self, path: str | None) -> bool:
        """Whether this case is the analysis of the upload at ``path``."""
        return path is not None and path == self.path


def draw(
    prediction: Prediction,
    class_name: str,
    opacity: float,
    colormap: str,
    lungs: bool = False,
) -> np.ndarray:
    """``class_name``'s heatmap over the upload at its own resolution (RGB uint8).

    ``lungs`` outlines the lung fields found (and the crop box when the model saw only that).
    """
    index = prediction.class_index(class_name)
    drawn = overlay(prediction.image.pixels, prediction.heatmap(index), opacity, colormap)
    if lungs and prediction.lungs is not None and prediction.lungs.found:
        drawn = draw_outline(drawn, prediction.lungs.mask)
    if lungs and prediction.cropped:
        box = prediction.box
        drawn = draw_box(drawn, (box.x0, box.y0, box.x1, box.y1))
    return drawn


def describe_input(image: LoadedImage, ood: OODCheck | None = None) -> str:
    """Non-identifying facts about the upload and any warnings (incl. not-a-chest-X-ray)."""
    facts = [f"{image.size[0]}×{image.size[1]} px, {image.source_format} ({image.original_mode})"]
    facts += [
        f"{key}: {value}" for key, value in image.metadata.items() if key not in ("format", "mode")
    ]
    notes = [*image.notes, describe(ood)] if ood and ood.warn else image.notes
    warnings = "".join(f"\n\n⚠️ {note}" for note in notes)
    return " · ".join(facts) + warnings
