"""Analyze tab: one upload → calibrated confidences, the film and its overlay in one viewer,
the prediction set, the lung share and notes; every redraw reuses the cached case."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from explain.verdict import describe_set, headline, input_facts, lung_line, lung_notes
from imaging.image import ImageInputError, LoadedImage
from imaging.load import load_image
from imaging.overlay import FULL_WINDOW, save_png
from model.prediction import Prediction
from serving.model_process import ModelUnavailable
from serving.runtime import data_dir
from ui.common import Case, draw, draw_over, film, label_value
from ui.files import UPLOADS
from ui.marks import NO_MARKS


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


Viewer = tuple[np.ndarray, np.ndarray]  # (the film, its overlay): the before/after slider


class CaseView(NamedTuple):
    """What the Analyze tab shows of one case, in the order of the screen's outputs (what
    ``/predict`` returns; the case itself stays in the session)."""

    label: Any
    viewer: Viewer
    shown_class: str
    notes: str
    set_line: str
    lung_line: str
    case: Case


class FreshCase(NamedTuple):
    """The rest of the Analyze tab for a newly analysed case (a case analysed again keeps
    its marks)."""

    mark_film: Any  # the film to mark, with no marks yet
    corner: Any  # no half-drawn mark
    marks_line: str
    full_file: Any  # the full-resolution PNG: hidden until asked for
    show_anyway: Any  # the "show the class scores anyway" box: only when the guard warns


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
        level: float = FULL_WINDOW[0],
        width: float = FULL_WINDOW[1],
    ) -> CaseView:
        """The Analyze tab's view of the upload at ``path``.

        The label headlines the top class, or "Not a chest X-ray?" with the class bars folded
        away (unless ``show_anyway``) when the guard warns. A case cached for the same path
        is reused (no decode, no prediction). ``outline`` draws the lung fields; ``level`` and
        ``width`` are the film's display window.
        """
        reused = cached is not None and cached.of(path)
        case = cached if reused else analyze_upload(self.predict, path)
        prediction = case.prediction
        top = prediction.top_label
        notes = [input_facts(prediction.image, prediction.ood), *lung_notes(prediction)]
        return CaseView(
            label=label_value(prediction, show_anyway),
            viewer=self.redraw(case, top, opacity, colormap, outline, level, width),
            shown_class=top,
            notes="\n\n".join(notes),
            set_line=uncertainty(case, show_anyway),
            lung_line=self.lung_line(case, top),
            case=case,
        )

    @staticmethod
    def fresh(
        case: Case,
        form_case: str | None,
        level: float = FULL_WINDOW[0],
        width: float = FULL_WINDOW[1],
    ) -> FreshCase:
        """The rest of the tab for ``case`` (the film to mark through the window ``level``,
        ``width``); when the review form already belongs to it (the same upload analysed
        again) its marks stay as they are."""
        again = case.review_id == form_case
        warned = headline(case.prediction.image, case.prediction.ood) is not None
        return FreshCase(
            mark_film=gr.skip() if again else film(case.prediction.image, (level, width)),
            corner=gr.skip() if again else None,
            marks_line=gr.skip() if again else NO_MARKS,
            full_file=gr.skip() if again else gr.File(value=None, visible=False),
            show_anyway=gr.Checkbox(visible=warned),
        )

    @staticmethod
    def relabel(case: Case | None, show_anyway: bool) -> tuple[Any, str]:
        """The label and the set line again, with the class scores shown or folded."""
        if case is None:
            return None, ""
        return label_value(case.prediction, show_anyway), uncertainty(case, show_anyway)

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
        case: Case | None,
        class_name: str,
        opacity: float,
        colormap: str,
        outline: bool = False,
        level: float = FULL_WINDOW[0],
        width: float = FULL_WINDOW[1],
    ) -> Viewer | None:
        """The film and ``class_name``'s overlay, both through the window (level, width), for
        the before/after viewer (no model call)."""
        if case is None:
            return None
        gray = film(case.prediction.image, (level, width))  # once: shown as is and under the map
        return gray, draw_over(gray, case.prediction, class_name, opacity, colormap, outline)

    @staticmethod
    def lung_line(case: Case | None, class_name: str) -> str:
        """Beside the overlay: how much of ``class_name``'s heatmap lies on the lungs."""
        if case is None or not class_name:
            return ""
        return lung_line(case.prediction, class_name)
