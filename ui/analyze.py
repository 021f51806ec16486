"""Analyze tab: one upload → calibrated confidences, the top class's overlay and notes (which
start with the conformal prediction set, ``model.conformal.describe_set``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from imaging.image import ImageInputError, LoadedImage
from imaging.load import load_image
from imaging.overlay import save_png
from model import lung_share
from model.conformal import describe_set
from model.ood import headline
from model.prediction import Prediction
from serving.model_process import ModelUnavailable
from serving.runtime import data_dir
from ui.common import Case, describe_input, draw, label_value, shown_pixels
from ui.files import UPLOADS


def analyze_upload(predict: Callable[[LoadedImage], Prediction], path: str | None) -> Case:
    """Decode the upload at ``path`` once (then it is deleted: ``ui.files``) and predict once;
    a bad file, or a model process that stopped on it, becomes ``gr.Error``."""
    if path is None:
        raise gr.Error("Upload a chest X-ray (PNG, JPEG or DICOM) first.")
    try:
        return Case(path, predict(UPLOADS.take(path, load_image)))
    except (ImageInputError, ModelUnavailable) as err:
        raise gr.Error(str(err)) from err


SET_HIDDEN = "**Prediction set:** hidden with the class scores (tick “show anyway” to see both)."


def uncertainty(case: Case | None, show_anyway: bool = False) -> str:
    """The case's conformal set as one Markdown line ("**90 % set:** A, B · ⚠️ **uncertain**"),
    what the screen shows under the confidences; empty before any analysis. When the guard
    warns, the set names classes as much as the bars do: it is folded away with them unless
    ``show_anyway``."""
    if case is None:
        return ""
    prediction = case.prediction
    if not show_anyway and headline(prediction.image, prediction.ood) is not None:
        return SET_HIDDEN
    return describe_set(prediction.prediction_set, prediction.set_alpha)


class AnalyzeHandlers:
    """The Analyze tab's events, bound to the app's model call ``predict``; full-resolution
    overlays are written under ``exports`` (default: the data folder's ``exports``)."""

    def __init__(
        self, predict: Callable[[LoadedImage], Prediction], exports: Path | None = None
    ) -> None:
        self.predict = predict
        self.exports = exports

    def analyze(
        self,
        path: str | None,
        opacity: float,
        colormap: str,
        cached: Case | None = None,
        show_anyway: bool = False,
        outline: bool = False,
    ) -> tuple[Any, np.ndarray, str, str, Case]:
        """(label, overlay, shown class, notes, case) for the upload at ``path``.

        The label headlines the top class, or "Not a chest X-ray?" with the class bars folded
        away (unless ``show_anyway``) when the guard warns. An upload runs this at once and
        the Analyze button runs it again: the second call finds the case cached for the same
        path and neither decodes nor predicts. The notes end with every class's on-lung share
        (``model.lung_share``); ``outline`` draws the lung fields.
        """
        case = cached if cached is not None and cached.of(path) else None
        case = case or analyze_upload(self.predict, path)
        prediction = case.prediction
        top = prediction.top_label
        return (
            label_value(prediction, show_anyway),
            draw(prediction, top, opacity, colormap, outline),
            top,
            uncertainty(case, show_anyway)
            + "\n\n"
            + describe_input(prediction.image, prediction.ood)
            + "".join(f"\n\n{line}" for line in lung_share.notes(prediction)),
            case,
        )

    @staticmethod
    def relabel(case: Case | None, show_anyway: bool) -> Any:
        """The label again, with the class bars shown or folded (no model call)."""
        return None if case is None else label_value(case.prediction, show_anyway)

    @staticmethod
    def original(case: Case | None) -> np.ndarray | None:
        """The upload as the model read it (grayscale, at display size), beside the overlay."""
        return None if case is None else shown_pixels(case.prediction.image)

    def full_resolution(
        self,
        case: Case | None,
        class_name: str,
        opacity: float,
        colormap: str,
        outline: bool = False,
    ) -> str:
        """The overlay on screen at the upload's own resolution, as a lossless PNG (path)."""
        if case is None:
            raise gr.Error("Analyse a chest X-ray first.")
        drawn = draw(case.prediction, class_name, opacity, colormap, outline, max_side=None)
        folder = Path(tempfile.mkdtemp(dir=self._exports()))  # one per request: never shared
        name = f"overlay-{case.review_id}-{class_name.lower().replace(' ', '-')}.png"
        return str(save_png(drawn, folder / name))

    def _exports(self) -> Path:
        folder = self.exports or data_dir() / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def example_picker(paths: list[str]) -> Callable[[gr.SelectData], str]:
        """A select handler: the path of the example thumbnail clicked (then analysed)."""

        def picked(event: gr.SelectData) -> str:
            return paths[event.index]

        return picked

    @staticmethod
    def cleared(count: int) -> tuple[None, ...]:
        """What ``count`` outputs of the last case show after a failed analysis: nothing."""
        return (None,) * count

    @staticmethod
    def redraw(
        case: Case | None, class_name: str, opacity: float, colormap: str, outline: bool = False
    ) -> np.ndarray | None:
        """The cached case's overlay for another class, opacity, colormap or lung outline
        (no model call)."""
        if case is None:
            return None
        return draw(case.prediction, class_name, opacity, colormap, outline)

    @staticmethod
    def lung_line(case: Case | None, class_name: str) -> str:
        """Beside the overlay: how much of ``class_name``'s heatmap lies on the lungs."""
        if case is None or not class_name:
            return ""
        return lung_share.share_line(case.prediction, class_name)
