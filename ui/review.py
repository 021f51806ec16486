"""The review form under the Analyze tab: save a clinician's review, then its PDF report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from explain.verdict import headline, input_warnings, lung_notes
from imaging.image import LoadedImage
from model.config import ModelConfig
from model.prediction import Prediction
from review.marks import mark_list, peak_line
from review.report import CaseReport, write_case_report
from review.store import (
    AGREEMENTS,
    USEFULNESS,
    Review,
    ReviewStore,
    draft_from_prediction,
    pixels_sha256,
)
from serving.access import OwnerFolders
from ui.analyze import analyze_upload
from ui.common import DISCLAIMER, Case, draw, owner_of
from ui.marks import NO_MARKS


class ReviewHandlers:
    """Save reviews of the analysed case to ``store``; each report is written into the
    requester's own folder of ``folders`` (default: under the store's data folder)."""

    def __init__(
        self,
        predict: Callable[[LoadedImage], Prediction],
        model_config: Callable[[], ModelConfig],
        store: ReviewStore,
        disabled: str = "",
        folders: OwnerFolders | None = None,
    ) -> None:
        self.predict = predict
        # Read at each save: the served weights' config (sha256 of the file as loaded), which
        # the model's process may still be loading when the screen is built.
        self.model_config = model_config
        self.store = store
        self.folders = folders or OwnerFolders(store.data_dir / "gradio")
        self.disabled = disabled  # why reviews are off ("" = on)

    def reviewed_case(self, path: str | None, cached: Case | None, marked: bool = False) -> Case:
        """The cached case when it is of the image sent (no decode, no prediction); a fresh
        analysis for API callers who send another image. ``marked``: the review comes with
        marks (or "no focal finding"), which need the film they were drawn on."""
        if path is None:
            if cached is None and marked:
                raise gr.Error(
                    "Marks need the analysed film they were drawn on: analyse the chest X-ray "
                    "(or send it with the review) first. Nothing was stored."
                )
            if cached is None:
                raise gr.Error("Upload a chest X-ray (or send one with the review) first.")
            return cached
        if cached is not None and cached.of(path):
            return cached
        return analyze_upload(self.predict, path)

    def save_review(
        self,
        image: str | None,
        shown_class: str | None,
        agreement: str | None,
        correct_class: str | None,
        heatmap_usefulness: float | None,
        heatmap_wrong_place: bool,
        note: str | None,
        reviewer: str | None,
        store_image: bool,
        review_id: str | None,
        marks: str | None,
        no_finding: bool,
        cached: Case | None,
        request: gr.Request | None = None,
    ) -> tuple[str, Any]:
        """Validate and store one review; returns a status line and (review, prediction),
        what the PDF button prints.

        One review per case: without a ``review_id`` the case's own id is used, so saving
        the same case twice never stores two reviews (the second save is refused). ``marks``
        is the JSON text of the reviewer's boxes in the film's pixels ("" or "[]": none,
        ``review.marks.parse_marks``); with marks the status says whether the shown heatmap's
        peak lies in them. On any error nothing is stored and the form keeps what was typed.
        """
        if self.disabled:
            raise gr.Error(self.disabled)
        try:
            marked = bool(mark_list(marks)) or bool(no_finding)
            case = self.reviewed_case(image, cached, marked)
            prediction = case.prediction
            draft = draft_from_prediction(
                prediction,
                self.model_config(),
                shown_class=shown_class,
                agreement=agreement,
                correct_class=correct_class,
                heatmap_usefulness=heatmap_usefulness,
                heatmap_wrong_place=heatmap_wrong_place,
                note=note,
                reviewer=getattr(request, "username", None) or reviewer or "",
                review_id=review_id or case.review_id,
                marks=marks,
                no_finding=no_finding,
            )
            pixels = prediction.image.pixels if store_image else None
            saved, created = self.store.add(draft, pixels)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        if not created:
            return self.already_saved(saved, prediction, request)
        status = f"Saved: review `{saved.review_id}` by {saved.reviewer}."
        return " ".join(filter(None, (status, peak_line(draft.scores)))), (saved, prediction)

    @staticmethod
    def already_saved(
        saved: Review, prediction: Prediction, request: gr.Request | None
    ) -> tuple[str, Any]:
        """A save of a stored review id: nothing changes. With a login, another reviewer's id
        is refused; the session may print the review only when it is of the image sent."""
        username = getattr(request, "username", None)
        if username and saved.reviewer != username:
            raise gr.Error(
                f"Review id `{saved.review_id}` belongs to another reviewer's case: this save "
                "changed nothing. Leave the review id empty for a review of your own."
            )
        status = (
            f"Already saved: review `{saved.review_id}` by {saved.reviewer} (one review per "
            "case; this save changed nothing). Analyse another image for a new review."
        )
        if pixels_sha256(prediction.image.pixels) != saved.image_sha256:
            other_image = " It is of another image: no report of it is made from this one."
            return status + other_image, gr.skip()
        return status, (saved, prediction)

    @staticmethod
    def new_case(case: Case | None, form_case: str | None) -> tuple[Any, ...]:
        """A new analysis starts a new case: the form and marks cleared, the case's review id,
        no PDF.

        Returns (agreement, correct class, usefulness, wrong place, note, store image,
        review id, status, report file, last review, form case, marks, no finding). When the
        form already belongs to ``case`` (Analyze pressed again on the same upload) nothing
        changes.
        """
        if case is None or case.review_id == form_case:
            return tuple(gr.skip() for _ in range(13))
        form = (None, None, None, False, "", False, case.review_id)
        return (*form, "", gr.File(value=None, visible=False), None, case.review_id, "", False)

    def make_report(
        self,
        last: tuple[Review, Prediction] | None,
        opacity: float,
        colormap: str,
        outline: bool = False,
        request: gr.Request | None = None,
    ) -> str:
        """The saved review's one-page PDF (path), with the overlay as reviewed (``outline``:
        the lung fields drawn) and the heatmaps' share on the lungs.

        Made from the stored review, over the session's image only when that is the image
        reviewed (same pixel sha256), and written into the requester's own folder.
        """
        if self.disabled:
            raise gr.Error(self.disabled)
        if last is None:
            raise gr.Error("Save the review first: the report includes it.")
        prediction = last[1]
        review = self.printable(last[0].review_id, prediction, request)
        drawn = draw(prediction, review.shown_class, opacity, colormap, outline)
        folder = self.folders.request_folder(owner_of(request))
        path = folder / f"review-{review.review_id}.pdf"
        image, check = prediction.image, prediction.ood
        shown = CaseReport(
            review,
            DISCLAIMER,
            image.pixels,
            drawn,
            colormap,
            warning=headline(image, check),
            warnings=input_warnings(image, check),
            lungs=lung_notes(prediction, mark="Warning: "),
        )
        return str(write_case_report(path, shown))

    def printable(
        self, review_id: str, prediction: Prediction, request: gr.Request | None
    ) -> Review:
        """The stored review ``review_id``, when ``request``'s caller may print it over
        ``prediction``: their own (with a login) and of the same pixels."""
        review = self.store.get(review_id)
        if review is None:
            raise gr.Error(f"No review with id {review_id!r} is stored: save it first.")
        username = getattr(request, "username", None)
        if username and review.reviewer != username:
            raise gr.Error(
                f"Review `{review_id}` is {review.reviewer}'s: only they can make its report "
                "here (anyone logged in can reopen it from History)."
            )
        if pixels_sha256(prediction.image.pixels) != review.image_sha256:
            raise gr.Error(
                f"The image analysed here is not the one reviewed in `{review_id}`: a report "
                "never puts a review on another image. Reopen the case from History."
            )
        return review


@dataclass(frozen=True)
class ReviewForm:
    """The review form's components: ``answers`` in ``ReviewHandlers.save_review``'s order
    (after the image and the shown class), ``fields`` in ``new_case``'s."""

    agreement: gr.Radio
    correct_class: gr.Dropdown
    usefulness: gr.Radio
    wrong_place: gr.Checkbox
    note: gr.Textbox
    reviewer: gr.Textbox
    store_image: gr.Checkbox
    review_id: gr.Textbox
    marks: gr.Textbox
    no_finding: gr.Checkbox
    marks_line: gr.Markdown
    save: gr.Button
    report: gr.Button
    status: gr.Markdown
    report_file: gr.File

    @property
    def answers(self) -> list[gr.components.Component]:
        return [self.agreement, self.correct_class, self.usefulness, self.wrong_place,
                self.note, self.reviewer, self.store_image, self.review_id, self.marks,
                self.no_finding]  # fmt: skip

    @property
    def fields(self) -> list[gr.components.Component]:
        return [self.agreement, self.correct_class, self.usefulness, self.wrong_place,
                self.note, self.store_image, self.review_id]  # fmt: skip


def review_form(labels: list[str]) -> ReviewForm:
    """The review form, compact enough to sit beside the film at 1400 × 1000."""
    with gr.Group(elem_id="review-form"):
        with gr.Row():
            agreement = gr.Radio(list(AGREEMENTS), label="Your review: agree?")
            correct_class = gr.Dropdown(labels, value=None, label="Correct class (if not)")
        usefulness = gr.Radio(
            list(USEFULNESS), value=None, label="Heatmap usefulness (1 useless … 5 very useful)"
        )
        marks_line = gr.Markdown(NO_MARKS)
        with gr.Row():
            no_finding = gr.Checkbox(label="No focal finding")
            wrong_place = gr.Checkbox(label="Heatmap looks at the wrong place")
            store_image = gr.Checkbox(label="Store the image (else its sha256)")
        with gr.Row():
            note = gr.Textbox(label="Note", lines=1)
            reviewer = gr.Textbox(label="Reviewer name (if not logged in)")
        marks = gr.Textbox(visible=False, label="marks")  # the boxes' JSON (ui.marks)
        review_id = gr.Textbox(visible=False, label="review_id")
        with gr.Row():
            save = gr.Button("Save review", variant="primary")
            report = gr.Button("PDF report")
        status = gr.Markdown()
        report_file = gr.File(label="Case report (PDF)", visible=False)
    return ReviewForm(agreement, correct_class, usefulness, wrong_place, note, reviewer,
                      store_image, review_id, marks, no_finding, marks_line, save, report,
                      status, report_file)  # fmt: skip
