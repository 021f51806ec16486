"""Explain tab: other CAM methods, side by side, contrastive maps and ROAD, for the cached case.

The work is in ``explain.views``, run by name where the model is (``ModelService.call``);
these handlers only check that a case was analysed and turn bad choices into ``gr.Error``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from serving.model_process import ModelService, ModelUnavailable
from ui.common import Case

TQDM = gr.Progress(track_tqdm=True)  # Score-CAM's tqdm bar, when the model is in this process


SLOW_METHOD = "Score-CAM"  # minutes on CPU: runs in its own queue, one at a time


def is_slow(methods: str | list[str] | None) -> bool:
    """Whether a request involves Score-CAM (and so belongs to the slow queue)."""
    if isinstance(methods, str):
        return methods == SLOW_METHOD
    return SLOW_METHOD in (methods or [])


class ExplainHandlers:
    """The Explain tab's events on ``model``; PNG downloads go under ``exports``.

    Each action is wired twice, to a fast queue and to Score-CAM's own queue (limit 1); the
    ``slow`` flag says which one a handler serves, and it skips (``gr.skip()``) requests that
    belong to the other, so nobody's Grad-CAM waits behind someone's Score-CAM.
    """

    def __init__(self, model: ModelService, exports: Path) -> None:
        self.model = model
        self.exports = exports
        self.score_cam_runs: dict[str, float] = {}  # target layer → seconds of the last run

    def explained(self, view: str, case: Case | None, *choices: Any) -> Any:
        """The cached case's ``view`` (a name in ``explain.views``); bad choices and a stopped
        model process become ``gr.Error``."""
        if case is None:
            raise gr.Error("Analyze an image first (Analyze tab).")
        try:
            return self.model.call(view, case.prediction, *choices)
        except (ValueError, ModelUnavailable) as err:
            raise gr.Error(str(err)) from err

    def timed(self, slow: bool, layer: str, view: str, *args: Any) -> Any:
        """Run ``view``; a Score-CAM run's duration becomes the next estimate for ``layer``."""
        start = time.perf_counter()
        result = self.explained(view, *args)
        if slow:
            self.score_cam_runs[layer] = time.perf_counter() - start
        return result

    def explain_one(
        self, case, method, class_name, layer, opacity, colormap, contour, slow=False, progress=TQDM
    ):
        """One method's overlay and its PNG downloads."""
        if is_slow(method) != slow:
            return gr.skip(), gr.skip()
        look = (opacity, colormap, contour, self.exports / "heatmaps")
        return self.timed(slow, layer, "method_overlay", case, method, class_name, layer, *look)

    def compare(
        self, case, methods, class_name, layer, opacity, colormap, contour, slow=False,
        progress=TQDM,
    ):  # fmt: skip
        """2–4 methods side by side for one class."""
        if is_slow(methods) != slow:
            return gr.skip()
        look = (opacity, colormap, contour)
        return self.timed(slow, layer, "side_by_side", case, methods, class_name, layer, *look)

    def contrasted(self, case, class_a, class_b, opacity, colormap, contour):
        """Where the image speaks for class A rather than class B."""
        look = (opacity, colormap, contour)
        return self.explained("contrast_overlay", case, class_a, class_b, *look)

    def faithfulness(self, case, method, class_name, layer, slow=False, progress=TQDM):
        """The ROAD score of the shown map, as one line."""
        if is_slow(method) != slow:
            return gr.skip()
        return self.timed(slow, layer, "faithfulness_line", case, method, class_name, layer)

    @staticmethod
    def defaults(case: Case | None) -> tuple[Any, Any, Any]:
        """The Explain tab's choices for a newly analysed case: the predicted class, and the
        image's two most probable classes for "why A rather than B"."""
        if case is None:
            return gr.skip(), gr.skip(), gr.skip()
        probabilities = case.prediction.confidences()
        first, second = sorted(probabilities, key=lambda k: -probabilities[k])[:2]
        return first, first, second

    def method_hint(self, method_name: str, target_layer: str) -> str:
        """Expected time of a method: Score-CAM's from its last run on this server, else
        measured now on this machine (timed forwards × channels)."""
        if method_name == SLOW_METHOD and target_layer in self.score_cam_runs:
            seconds = self.score_cam_runs[target_layer]
            return (
                f"⏳ Score-CAM: about {seconds:.0f} s — its last run on this layer here took "
                f"{seconds:.0f} s. It runs in its own queue, one at a time; Cancel frees the "
                "screen."
            )
        try:
            hint = self.model.call("method_hint", method_name, target_layer)
        except ModelUnavailable as err:
            raise gr.Error(str(err)) from err
        if method_name == SLOW_METHOD:
            hint += " It runs in its own queue, one at a time; Cancel frees the screen."
        return hint
