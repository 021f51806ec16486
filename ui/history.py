"""History tab: the stored reviews, filtered, as a table or a CSV file; reopen a past case;
how often reviewers agreed with the model (``review.agreement``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from review.agreement import agreement_summary, summary_rows, write_summary_csv
from review.report import write_case_report, write_reviews_csv
from review.store import ROW_COLUMNS, Review, ReviewStore
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
}
SHORT_COLUMNS = (
    "created_at_utc",
    "reviewer",
    "predicted_class",
    "agreement",
    "correct_class",
    "heatmap_usefulness",
    "note",
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
    ) -> tuple[str, str | None]:
        """A past case: its PDF, made from the store, and its image when it was stored (else
        None), both copied into the requester's own folder. The heatmap is not stored, so
        the PDF shows the stored image alone."""
        self.refuse_when_off()
        review = self.store.get((review_id or "").strip())
        if review is None:
            raise gr.Error(f"No review with id {review_id!r}: click a row of the table first.")
        folder = self.folders.request_folder(owner_of(request))
        stored = self.store.image_file(review)
        image = None if stored is None else Path(shutil.copyfile(stored, folder / stored.name))
        pixels = None if image is None else _gray(image)
        pdf = write_case_report(
            folder / f"review-{review.review_id}.pdf", review, pixels, None, DISCLAIMER
        )
        return str(pdf), None if image is None else str(image)


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))
