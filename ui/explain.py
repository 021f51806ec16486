"""Explain tab: other CAM methods, side by side, contrastive maps and ROAD, for the cached case.

The work is in ``explain.views``; these handlers only check that a case was analysed and turn
bad choices into ``gr.Error``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from explain.views import (
    contrast_overlay,
    faithfulness_line,
    method_hint,
    method_overlay,
    side_by_side,
)
from model.predictor import Predictor
from ui.common import Case

TQDM = gr.Progress(track_tqdm=True)  # shows Score-CAM's own tqdm progress bar


class ExplainHandlers:
    """The Explain tab's events on ``predictor``; PNG downloads go under ``exports``."""

    def __init__(self, predictor: Predictor, exports: Path) -> None:
        self.predictor = predictor
        self.exports = exports

    def explained(self, view: Callable[..., Any], case: Case | None, *choices: Any) -> Any:
        """Any Explain-tab view of the cached case; bad choices become ``gr.Error``."""
        if case is None:
            raise gr.Error("Analyze an image first (Analyze tab).")
        try:
            return view(self.predictor, case.prediction, *choices)
        except ValueError as err:
            raise gr.Error(str(err)) from err

    def explain_one(
        self, case, method, class_name, layer, opacity, colormap, contour, progress=TQDM
    ):
        """One method's overlay and its PNG downloads."""
        look = (opacity, colormap, contour, self.exports / "heatmaps")
        return self.explained(method_overlay, case, method, class_name, layer, *look)

    def compare(self, case, methods, class_name, layer, opacity, colormap, contour, progress=TQDM):
        """2–4 methods side by side for one class."""
        look = (opacity, colormap, contour)
        return self.explained(side_by_side, case, methods, class_name, layer, *look)

    def contrasted(self, case, class_a, class_b, opacity, colormap, contour):
        """Where the image speaks for class A rather than class B."""
        look = (opacity, colormap, contour)
        return self.explained(contrast_overlay, case, class_a, class_b, *look)

    def faithfulness(self, case, method, class_name, layer, progress=TQDM):
        """The ROAD score of the shown map, as one line."""
        return self.explained(faithfulness_line, case, method, class_name, layer)

    def method_hint(self, method_name: str, target_layer: str) -> str:
        """Expected time of a method (Score-CAM is measured)."""
        return method_hint(self.predictor, method_name, target_layer)
