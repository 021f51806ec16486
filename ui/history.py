"""History tab: the stored reviews, filtered, as a table or a CSV file; reopen a past case with
its marks; how often reviewers agreed with the model, and how often its heatmaps' peaks lay in
the reviewers' marks (``review.agreement``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from review.agreement import (
    HIT_COLUMNS,
    SUMMARY_COLUMNS,
    agreement_summary,
    hit_rows,
    hit_summary,
    summary_rows,
    write_summary_csv,
)
from review.marks import marks_text
from review.report import CaseReport, write_case_report, write_reviews_csv
from review.store import AGREEMENTS, ROW_COLUMNS, Review, ReviewStore
from serving.access import OwnerFolders
from ui.common import DISCLAIMER, owner_of

TITLES: dict[str, str] = {
    "id": "#",
    "review_id": "Review id",
    "created_at_utc": "Time (UTC)",
    "reviewer": "Reviewer",
    "predicted_class": "Model's class",
    "agreement": "Reviewer agrees?",
    "correct_class": "Correct class",
    "shown_class": "Heatmap of",
    "heatmap_usefulness": "Heatmap usefulness (1–5)",
    "heatmap_wrong_place": "Heatmap in the wrong place",
    "note": "Note",
    "probabilities": "Probabilities",
    "cam_method": "CAM method",
    "model": "Model",
    "checkpoint_sha256": "Checkpoint sha256",
    "image_sha256": "Image sha256",
    "image_stored": "Image stored",
    "prediction_set": "Prediction set",
    "marks": "Marks (film px: x0, y0, x1, y1)",
    "no_focal_finding": "No focal finding",
    "hit_shown": "Heatmap peak in the marks",
    "hit_top": "Top class's heatmap peak in the marks",
    "energy_shown": "Heatmap energy in the marks",
    "energy_top": "Top class's heatmap energy in the marks",
    "energy_flat": "Flat map's energy in the marks",
}
SHORT_COLUMNS = (
    "created_at_utc",
    "reviewer",
    "predicted_class",
    "agreement",
    "correct_class",
    "heatmap_usefulness",
    "note",
    "hit_shown",
    "review_id",
)


class HistoryHandlers:
    """Read ``store`` through the History tab's three filters ("All" = no filter).

    ``disabled`` says why reviews are off (an exposed server without a login): then no
    handler reads the store (the tables stay empty; exports and reopening are refused). Every
    file made is written into the requester's own folder of ``folders`` (default: under the
    store's data folder).
    """

    def __init__(
        self,
        store: ReviewStore,
        label_names: list[str] | None = None,
        disabled: str = "",
        folders: OwnerFolders | None = None,
    ) -> None:
        self.store = store
        self.label_names = label_names or []
        self.folders = folders or OwnerFolders(store.data_dir / "gradio")
        self.disabled = disabled

    def refuse_when_off(self) -> None:
        """``gr.Error`` saying why, when reviews are switched off."""
        if self.disabled:
            raise gr.Error(self.disabled)

    def filtered(self, class_name: str, agreement: str, reviewer: str | None) -> list[Review]:
        return self.store.list(
            predicted_class=None if class_name == "All" else class_name,
            agrees=None if agreement == "All" else agreement == "agree",
            reviewer=(reviewer or "").strip() or None,
        )

    def history(
        self, class_name: str, agreement: str, reviewer: str | None, all_columns: bool = False
    ) -> pd.DataFrame:
        """The table, newest first, with readable titles; the main columns unless
        ``all_columns``."""
        columns = ROW_COLUMNS if all_columns else SHORT_COLUMNS
        titles = [TITLES[c] for c in columns]
        if self.disabled:
            return pd.DataFrame([], columns=titles)
        rows = [r.as_row() for r in self.filtered(class_name, agreement, reviewer)]
        return pd.DataFrame([[row[c] for c in columns] for row in rows], columns=titles)

    def export_csv(
        self,
        class_name: str,
        agreement: str,
        reviewer: str | None,
        request: gr.Request | None = None,
    ) -> str:
        """The same rows as a CSV file (path) in the requester's own folder."""
        self.refuse_when_off()
        rows = self.filtered(class_name, agreement, reviewer)
        return str(write_reviews_csv(self.folders.request_folder(owner_of(request)), rows))

    def agreement(self, class_name: str, agreement: str, reviewer: str | None) -> list[list]:
        """Agreement rows (overall, uncertain/certain/unknown, per predicted class) with Wilson
        95 % intervals, over the reviews the class and reviewer filters keep (the agreement
        filter is ignored: it would make every rate 0 or 1); none when reviews are off."""
        if self.disabled:
            return []
        return summary_rows(self._summary(class_name, reviewer))

    def export_summary(
        self,
        class_name: str,
        agreement: str,
        reviewer: str | None,
        request: gr.Request | None = None,
    ) -> str:
        """The agreement rows of the exported reviews as a CSV file (path), in the
        requester's own folder."""
        self.refuse_when_off()
        summary = self._summary(class_name, reviewer)
        return str(write_summary_csv(self.folders.request_folder(owner_of(request)), summary))

    def heatmap_hits(self, class_name: str, agreement: str, reviewer: str | None) -> pd.DataFrame:
        """How often the heatmaps' peaks lay in the reviewers' marks (``HIT_COLUMNS``: overall,
        per class, per model version, for the shown and the top class's map, with Wilson 95 %
        intervals, mean energy in the marks and a flat map's score on the same marks), over the
        reviews all three filters keep; empty when reviews are off."""
        if self.disabled:
            return pd.DataFrame([], columns=list(HIT_COLUMNS))
        reviews = self.filtered(class_name, agreement, reviewer)
        return pd.DataFrame(hit_rows(hit_summary(reviews, self.label_names)), columns=HIT_COLUMNS)

    def _summary(self, class_name: str, reviewer: str | None) -> dict:
        reviews = self.filtered(class_name, "All", reviewer)
        return agreement_summary(reviews, self.label_names)

    @staticmethod
    def picked(table: pd.DataFrame, event: gr.SelectData) -> str:
        """The review id of the table row clicked (to reopen it)."""
        row = event.row_value if event.row_value is not None else table.iloc[event.index[0]]
        names = list(table.columns)
        return str(row[names.index(TITLES["review_id"])]) if TITLES["review_id"] in names else ""

    def reopen(
        self, review_id: str | None, request: gr.Request | None = None
    ) -> tuple[str, str | None, str, bool]:
        """A past case: its PDF, made from the store, its image when it was stored (else
        None), both copied into the requester's own folder, and its marks (JSON text in the
        film's pixels, "" for none) and "no focal finding". The heatmap is not stored, so the
        PDF shows the stored image, with the marks on it, alone."""
        self.refuse_when_off()
        review = self.store.get((review_id or "").strip())
        if review is None:
            raise gr.Error(f"No review with id {review_id!r}: click a row of the table first.")
        folder = self.folders.request_folder(owner_of(request))
        stored = self.store.image_file(review)
        image = None if stored is None else Path(shutil.copyfile(stored, folder / stored.name))
        pixels = None if image is None else _gray(image)
        shown = CaseReport(review, DISCLAIMER, pixels)
        pdf = write_case_report(folder / f"review-{review.review_id}.pdf", shown)
        marks = marks_text(review.marks)
        return str(pdf), None if image is None else str(image), marks, review.no_finding


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def history_tab(handlers: HistoryHandlers, labels: list[str], demo: gr.Blocks) -> None:
    """The History tab: the stored reviews, filtered; agreement and heatmap-hit figures; CSV
    exports; a case reopened. Refreshed when the page loads and whenever the tab is opened."""
    with gr.Tab("History") as tab:
        with gr.Row():
            class_filter = gr.Dropdown(["All", *labels], value="All", label="Predicted class")
            agreement_filter = gr.Radio(["All", *AGREEMENTS], value="All", label="Agreement")
            reviewer_filter = gr.Textbox(label="Reviewer (exact name; empty = all)")
            all_columns = gr.Checkbox(label="All columns")
        table = gr.Dataframe(
            headers=[TITLES[c] for c in SHORT_COLUMNS], interactive=False, wrap=True
        )
        agreement_table = gr.Dataframe(
            headers=list(SUMMARY_COLUMNS),
            interactive=False,
            label="Reviewers agreeing with the top class (Wilson 95 % interval; the class and "
            "reviewer filters apply)",
        )
        hits_table = gr.Dataframe(
            headers=list(HIT_COLUMNS),
            interactive=False,
            label="Heatmap peaks in the reviewers' marks (Wilson 95 %), beside a flat map on "
            "the same marks (filtered)",
        )
        with gr.Row():
            refresh = gr.Button("Refresh")
            export = gr.Button("Export these rows as CSV")
        csv_file = gr.File(label="CSV")
        summary_file = gr.File(label="Agreement summary (CSV)")
        gr.Markdown("Click a row, then reopen its case: the PDF, and the image if stored.")
        with gr.Row():
            reopen_id = gr.Textbox(label="Review id to reopen")
            reopen = gr.Button("Reopen case")
        with gr.Row():
            reopened_pdf = gr.File(label="Case report (PDF)")
            reopened_image = gr.Image(label="Stored image", type="filepath", interactive=False)
        with gr.Row():
            reopened_marks = gr.Textbox(label="Marks (film pixels: x0, y0, x1, y1)")
            reopened_no_finding = gr.Checkbox(label="No focal finding", interactive=False)

    filters = [class_filter, agreement_filter, reviewer_filter]
    refreshers = [refresh.click, class_filter.input, agreement_filter.input]
    refreshers += [reviewer_filter.submit, tab.select, demo.load, all_columns.input]
    gr.on(refreshers, handlers.history, [*filters, all_columns], table)
    gr.on(refreshers, handlers.agreement, filters, agreement_table)
    gr.on(refreshers, handlers.heatmap_hits, filters, hits_table)
    exported = export.click(handlers.export_csv, filters, csv_file, api_name="export_csv")
    exported.then(handlers.export_summary, filters, summary_file)
    table.select(HistoryHandlers.picked, table, reopen_id)
    reopened = [reopened_pdf, reopened_image, reopened_marks, reopened_no_finding]
    reopen.click(handlers.reopen, reopen_id, reopened, api_name="reopen")
