"""What the app's "Explain" tab shows, as plain functions (the screen itself is in app.py).

Each function takes the cached ``Prediction`` and the user's choices and returns images,
file paths or text; bad choices raise ``ValueError`` with what would work.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from explain.choices import DEFAULT_METHOD
from explain.contrastive import contrast
from explain.faithfulness import road_meaning, road_score
from explain.methods import explain, score_cam_seconds
from imaging.overlay import export_pngs, overlay
from model.prediction import Prediction
from model.predictor import Predictor


def method_hint(predictor: Predictor, method: str, target_layer: str) -> str:
    """Expected time of ``method`` (measured for Score-CAM, which is slow), as Markdown."""
    if method == "Score-CAM":
        seconds = score_cam_seconds(predictor, target_layer)
        return (
            f"⏳ Score-CAM: about {seconds:.0f} s on `{predictor.device}` (one pass per channel)."
        )
    if method == DEFAULT_METHOD and target_layer == predictor.config.target_layer:
        return "Instant: the all-class Grad-CAM computed with the prediction."
    return "About one forward and backward pass."


def method_overlay(
    predictor: Predictor,
    prediction: Prediction,
    method: str,
    class_name: str,
    target_layer: str,
    opacity: float,
    colormap: str,
    contour: bool,
    folder: Path,
) -> tuple[np.ndarray, list[str]]:
    """One method's overlay, and its heatmap + overlay PNGs (paths) in a new subfolder."""
    index = predictor.config.class_index(class_name)
    heat = explain(predictor, prediction, method, index, target_layer)
    drawn = overlay(prediction.image.pixels, heat, opacity, colormap, contour)
    stem = f"{_slug(method)}-{_slug(class_name)}-{target_layer.rsplit('.', 1)[-1]}"
    folder.mkdir(parents=True, exist_ok=True)
    own = tempfile.mkdtemp(dir=folder)  # one folder per request: users never share a file
    return drawn, [str(path) for path in export_pngs(heat, drawn, own, stem)]


def side_by_side(
    predictor: Predictor,
    prediction: Prediction,
    methods: Sequence[str],
    class_name: str,
    target_layer: str,
    opacity: float,
    colormap: str,
    contour: bool,
) -> list[tuple[np.ndarray, str]]:
    """Overlays of 2–4 methods for the same image and class, captioned, for a gallery."""
    if not 2 <= len(methods) <= 4:
        raise ValueError(f"pick 2 to 4 methods to compare; got {len(methods)}")
    index = predictor.config.class_index(class_name)
    return [
        (
            overlay(
                prediction.image.pixels,
                explain(predictor, prediction, m, index, target_layer),
                opacity,
                colormap,
                contour,
            ),
            m,
        )
        for m in methods
    ]


def contrast_overlay(
    predictor: Predictor,
    prediction: Prediction,
    class_a: str,
    class_b: str,
    opacity: float,
    colormap: str,
    contour: bool,
) -> np.ndarray:
    """Overlay of where the image speaks for ``class_a`` rather than ``class_b``."""
    heat = contrast(predictor, prediction, class_a, class_b)
    return overlay(prediction.image.pixels, heat, opacity, colormap, contour)


def faithfulness_line(
    predictor: Predictor, prediction: Prediction, method: str, class_name: str, target_layer: str
) -> str:
    """The ROAD score of the shown map and one line on what it means."""
    index = predictor.config.class_index(class_name)
    heat = explain(predictor, prediction, method, index, target_layer)
    score = road_score(predictor, prediction.image, heat, index, box=prediction.box)
    return f"**{method}, {class_name}** — {road_meaning(score, class_name)}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
