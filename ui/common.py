"""What every tab shares: the analysed case kept in the session, and drawing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import gradio as gr
import numpy as np
from gradio.components.label import LabelConfidence, LabelData

from explain.verdict import headline
from imaging.image import LoadedImage, fit_within
from imaging.overlay import (
    FULL_WINDOW,
    apply_window,
    colorbar_stops,
    draw_box,
    draw_outline,
    overlay,
)
from model.prediction import Prediction
from review.drafts import new_review_id

# Overlays are shown as JPEG (a 2048² PNG took ~740 ms to encode, JPEG 12 ms) and at most
# DISPLAY_SIDE px a side: the screen shows them smaller still, and a 2048² upload's full-size
# overlay cost more to draw, encode and download than the forward (docs/BENCHMARKS.md,
# "End-to-end vs a peer app"). Full resolution is a click away: the Analyze tab's
# "Full-resolution overlay (PNG)" and the Explain tab's PNGs.
DISPLAY_FORMAT = "jpeg"
DISPLAY_SIDE = 1024
SHOWN = {"format": DISPLAY_FORMAT, "type": "numpy", "interactive": False}  # an output image
DISCLAIMER = (
    "**Research demo — not a diagnostic device.** Outputs are not medical advice and must not "
    "guide patient care. The model was trained on a small public dataset whose classes come "
    "from different hospitals, so it may have learned the source instead of the disease."
)


# The Analyze tab at 1400 × 1000: the film viewer, the scores and the review form in one view.
SCREEN_CSS = (
    "#review-form .form {gap: 4px}\n"
    "#review-form textarea {min-height: 2.2em}\n"
    ".gradio-container {padding-top: 4px !important}\n"
)


def shown_when_made(path: str | None) -> Any:
    """An output ``gr.File`` shown once it holds a file, hidden while empty (no placeholder
    box on the screen)."""
    return gr.File(visible=path is not None)


@dataclass(frozen=True)
class Case:
    """One analysed upload, kept in the session (``gr.State``) for every later action.

    ``path`` is the upload's path in Gradio's cache, whose folder is named after the file's
    hash: the same path means the same bytes, so a later action on it needs no new decode
    and no new prediction (the file itself is deleted once read: ``ui.files``).
    """

    path: str | None
    prediction: Prediction
    review_id: str = field(default_factory=new_review_id)  # one review per case

    def of(self, path: str | None) -> bool:
        """Whether this case is the analysis of the upload at ``path``."""
        return path is not None and path == self.path


def owner_of(request: gr.Request | None) -> str:
    """Whom the files made for ``request`` belong to (``serving.access.OwnerFolders``): the
    login, else the browser session."""
    username = getattr(request, "username", None)
    if username:
        return f"user:{username}"
    return f"session:{getattr(request, 'session_hash', None) or ''}"


def shown_pixels(image: LoadedImage, max_side: int | None = DISPLAY_SIDE) -> np.ndarray:
    """The upload's gray pixels at display size (area-averaged when scaled down)."""
    size = fit_within(image.size, max_side)
    if size == image.size:
        return image.pixels
    return cv2.resize(image.pixels, size, interpolation=cv2.INTER_AREA)


def film(
    image: LoadedImage,
    window: tuple[float, float] = FULL_WINDOW,
    max_side: int | None = DISPLAY_SIDE,
) -> np.ndarray:
    """The upload's gray pixels at display size seen through ``window`` (level, width)."""
    return apply_window(shown_pixels(image, max_side), *window)


def draw(
    prediction: Prediction,
    class_name: str,
    opacity: float,
    colormap: str,
    lungs: bool = False,
    max_side: int | None = DISPLAY_SIDE,
    window: tuple[float, float] = FULL_WINDOW,
) -> np.ndarray:
    """``class_name``'s heatmap over the upload seen through ``window`` (RGB uint8), at most
    ``max_side`` px a side (None: the upload's own resolution).

    ``lungs`` outlines the lung fields found (and the crop box when the model saw only that).
    """
    gray = film(prediction.image, window, max_side)
    return draw_over(gray, prediction, class_name, opacity, colormap, lungs)


def draw_over(
    gray: np.ndarray,
    prediction: Prediction,
    class_name: str,
    opacity: float,
    colormap: str,
    lungs: bool = False,
) -> np.ndarray:
    """``draw`` on a film already at its shown size and window (``film``), for callers that
    show the film itself too."""
    size = (gray.shape[1], gray.shape[0])
    index = prediction.class_index(class_name)
    drawn = overlay(gray, prediction.heatmap(index, size), opacity, colormap)
    if lungs and prediction.lungs is not None and prediction.lungs.found:
        mask = prediction.lungs.mask.astype(np.uint8)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        drawn = draw_outline(drawn, mask.astype(bool))
    if lungs and prediction.cropped:
        scale = size[0] / prediction.image.size[0]
        box = prediction.box
        corners = (box.x0, box.y0, box.x1, box.y1)
        drawn = draw_box(drawn, tuple(round(v * scale) for v in corners))
    return drawn


def label_value(prediction: Prediction, show_anyway: bool = False) -> dict[str, float] | LabelData:
    """What the confidence label shows: the classes, or a warning headline instead of a class.

    When the guard warns (``explain.verdict.headline``) the headline is the warning and the class
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
