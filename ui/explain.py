"""Explain tab: other CAM methods, side by side, contrastive maps and ROAD, for the cached case.

The work is in ``explain.views``, run by name where the model is (``ModelService.call``);
these handlers only check that a case was analysed and turn bad choices into ``gr.Error``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from explain.choices import CONFUSABLE, DEFAULT_METHOD, METHODS, TARGET_LAYERS
from imaging.overlay import DEFAULT_COLORMAP
from serving.model_process import ModelService, ModelUnavailable
from ui.common import DISPLAY_FORMAT, SHOWN, Case, legend
from ui.files import ShownGallery, ShownImage

PROGRESS = gr.Progress()  # Score-CAM's batches, reported from the model's process


SLOW_METHOD = "Score-CAM"  # minutes on CPU: one run at a time per server
SLOW_BUSY = (
    "Score-CAM is running for another request (one run at a time: it takes minutes on a "
    "CPU). Try again when it has finished, or choose another method."
)


def is_slow(methods: str | list[str] | None) -> bool:
    """Whether a request involves Score-CAM."""
    if isinstance(methods, str):
        return methods == SLOW_METHOD
    return SLOW_METHOD in (methods or [])


class ExplainHandlers:
    """The Explain tab's events on ``model``; PNG downloads go under ``exports``.

    Score-CAM runs one at a time: a second request is refused at once rather than queued, so
    nobody's Grad-CAM waits behind someone's Score-CAM.
    """

    def __init__(self, model: ModelService, exports: Path) -> None:
        self.model = model
        self.exports = exports
        self.score_cam_runs: dict[str, float] = {}  # target layer → seconds of the last run
        self.score_cam = threading.Lock()

    def explained(self, view: str, case: Case | None, *choices: Any, progress: Any = None) -> Any:
        """The cached case's ``view`` (a name in ``explain.views``), reporting (done, total)
        to ``progress``; bad choices and a stopped model process become ``gr.Error``."""
        if case is None:
            raise gr.Error("Analyze an image first (Analyze tab).")
        try:
            return self.model.call(view, case.prediction, *choices, progress=progress)
        except (ValueError, ModelUnavailable) as err:
            raise gr.Error(str(err)) from err

    def timed(
        self, methods: str | list[str], layer: str, view: str, *args: Any, progress: Any = None
    ) -> Any:
        """Run ``view``; a Score-CAM run holds the server's one Score-CAM slot, and its
        duration becomes the next estimate for ``layer``."""
        if not is_slow(methods):
            return self.explained(view, *args)
        if not self.score_cam.acquire(blocking=False):
            raise gr.Error(SLOW_BUSY)
        try:
            start = time.perf_counter()
            shown = None if progress is None else (lambda s: progress(s, desc=SLOW_METHOD))
            result = self.explained(view, *args, progress=shown)
            self.score_cam_runs[layer] = time.perf_counter() - start
            return result
        finally:
            self.score_cam.release()

    def explain_one(self, case, method, class_name, layer, opacity, colormap, contour,
                    progress=PROGRESS):  # fmt: skip
        """One method's overlay and its PNG downloads."""
        look = (opacity, colormap, contour, self.exports / "heatmaps")
        return self.timed(method, layer, "method_overlay", case, method, class_name, layer, *look,
                          progress=progress)  # fmt: skip

    def compare(self, case, methods, class_name, layer, opacity, colormap, contour,
                progress=PROGRESS):  # fmt: skip
        """2–4 methods side by side for one class."""
        look = (opacity, colormap, contour)
        return self.timed(methods, layer, "side_by_side", case, methods, class_name, layer, *look,
                          progress=progress)  # fmt: skip

    def contrasted(self, case, class_a, class_b, opacity, colormap, contour):
        """Where the image speaks for class A rather than class B."""
        look = (opacity, colormap, contour)
        return self.explained("contrast_overlay", case, class_a, class_b, *look)

    def faithfulness(self, case, method, class_name, layer, progress=PROGRESS):
        """The ROAD score of the shown map, as one line."""
        view = "faithfulness_line"
        return self.timed(method, layer, view, case, method, class_name, layer, progress=progress)

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
                f"{seconds:.0f} s. One run at a time; Cancel frees the screen."
            )
        try:
            hint = self.model.call("method_hint", method_name, target_layer)
        except ModelUnavailable as err:
            raise gr.Error(str(err)) from err
        if method_name == SLOW_METHOD:
            hint += " One run at a time; Cancel frees the screen."
        return hint


@dataclass(frozen=True)
class ExplainTab:
    """What the Analyze tab sets in the Explain tab: the class choices a new case resets,
    the views it empties, and the colour scale its colormap redraws."""

    classes: list[gr.Dropdown]
    views: list[gr.components.Component]
    scale: gr.HTML


def explain_tab(
    handlers: ExplainHandlers,
    labels: list[str],
    target_layer: str,
    case: gr.State,
    opacity: gr.Slider,
    colormap: gr.Dropdown,
) -> ExplainTab:
    """The Explain tab on the analysed ``case``, wired to ``handlers``, drawn with the Analyze
    tab's ``opacity`` and ``colormap``."""
    with gr.Tab("Explain"):
        gr.Markdown(
            "Other CAM methods and layers, side by side, contrastive maps and a faithfulness "
            "score for the analysed image. Opacity and colormap: Analyze tab."
        )
        with gr.Row():
            with gr.Column():
                method = gr.Dropdown(list(METHODS), value=DEFAULT_METHOD, label="Method")
                layer = gr.Dropdown(
                    list(TARGET_LAYERS),
                    value=target_layer,
                    label="Target layer (earlier blocks: finer maps)",
                )
                class_name = gr.Dropdown(labels, value=labels[0], label="Class")
                contour = gr.Checkbox(label="Outline the top-10 % activation region")
                hint = gr.Markdown()
                with gr.Row():
                    show = gr.Button("Explain", variant="primary")
                    faithful = gr.Button("Faithfulness (ROAD, ~10 s)")
                    cancel = gr.Button("Cancel", variant="stop")
                faith_text = gr.Markdown()
            with gr.Column():
                explained = ShownImage(label="Overlay", **SHOWN)
                scale = gr.HTML(legend(DEFAULT_COLORMAP))
                pngs = gr.File(label="Heatmap and overlay (PNG)", file_count="multiple")
        compared = gr.CheckboxGroup(
            list(METHODS), value=["Grad-CAM", "Grad-CAM++", "LayerCAM"], label="2–4 methods"
        )
        compare = gr.Button("Compare side by side")
        gallery = ShownGallery(label="Same image and class", columns=4, format=DISPLAY_FORMAT)
        with gr.Row():
            class_a = gr.Dropdown(labels, value=CONFUSABLE[2], label="Why class A …")
            class_b = gr.Dropdown(labels, value=CONFUSABLE[1], label="… rather than class B")
            contrast = gr.Button("Contrast A vs B")
        contrasted = ShownImage(label="Where the image speaks for A rather than B", **SHOWN)

    look = [opacity, colormap, contour]
    choice = [case, method, class_name, layer]
    gr.on([method.input, layer.input], handlers.method_hint, [method, layer], hint)
    queue = {"concurrency_id": "explain"}
    slow_events = [
        show.click(handlers.explain_one, [*choice, *look], [explained, pngs], api_name="explain",
                   **queue),
        compare.click(handlers.compare, [case, compared, class_name, layer, *look], gallery,
                      **queue),
        faithful.click(handlers.faithfulness, choice, faith_text, **queue),
    ]  # fmt: skip
    contrast.click(handlers.contrasted, [case, class_a, class_b, *look], contrasted, **queue)
    cancel.click(None, None, None, cancels=slow_events)
    return ExplainTab([class_name, class_a, class_b], [explained, pngs, gallery, contrasted,
                      faith_text], scale)  # fmt: skip
