"""What every tab shares: the analysed case kept in the session, and drawing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np
from gradio.components.label import LabelConfidence, LabelData

from imaging.image import LoadedImage
from imaging.overlay import colorbar_stops, draw_box, draw_outline, overlay
from model.ood import OODCheck, headline, input_warnings
from model.predictor import Prediction
from review.drafts import new_review_id

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
    review_id: str = field(default_factory=new_review_id)  # one review per case

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
    warnings = "".join(f"\n\n⚠️ {note}" for note in input_warnings(image, ood))
    return " · ".join(facts) + warnings


def label_value(prediction: Prediction, show_anyway: bool = False) -> dict[str, float] | LabelData:
    """What the confidence label shows: the classes, or a warning headline instead of a class.

    When the guard warns (``model.ood.headline``) the headline is the warning and the class
    bars are folded away unless ``show_anyway``; the headline stays the warning either way.
    """
    warning = headline(prediction.image, prediction.ood)
    if warning is None:
        return prediction.confidences()
    ranked = sorted(prediction.confidences().items(), key=lambda item: -item[1])
    bars = [LabelConfidence(label=k, confidence=v) for k, v in ranked] if show_anyway else None
    return LabelData(label=warning, confidences=bars)


class HeadlineLabel(gr.Label):
    """``gr.Label`` whose headline may be a warning rather than the top class.

    Gradio's Label always headlines the highest confidence; this one also takes a
    ``LabelData`` (headline + optional bars) as is. The browser draws it as a Label.
    """

    def get_block_name(self) -> str:
        return "label"

    def postprocess(self, value: Any) -> Any:
        return value if isinstance(value, LabelData) else super().postprocess(value)


def legend(colormap: str) -> str:
    """The heatmap's colour scale as HTML: a low → high bar in ``colormap``'s colours."""
    gradient = ", ".join(colorbar_stops(colormap))
    return (
        '<div class="lungcam-legend" style="display:flex;align-items:center;gap:6px;'
        'font-size:0.85em">'
        "<span>low</span>"
        f'<span role="img" aria-label="{colormap} colour scale, low to high" '
        f'style="flex:1;height:12px;border-radius:3px;background:linear-gradient(to right, '
        f'{gradient})"></span>'
        "<span>high</span></div>"
        '<div style="font-size:0.8em;opacity:0.75">Relative to this image and class '
        "(each map is scaled to its own 0–1).</div>"
    )
