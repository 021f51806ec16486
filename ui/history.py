"""History tab: the stored reviews, filtered, as a table or a CSV file, and how often reviewers
agreed with the model (``review.agreement``)."""

from __future__ import annotations

from review.agreement import agreement_summary, summary_rows, write_summary_csv
from review.report import write_reviews_csv
from review.store import Review, ReviewStore


class HistoryHandlers:
    """Read ``store`` through the History tab's three filters ("All" = no filter)."""

    def __init__(self, store: ReviewStore, label_names: list[str] | None = None) -> None:
        self.store = store
        self.label_names = label_names or []
        self.exports = store.data_dir / "exports"

    def filtered(self, class_name: str, agreement: str, reviewer: str | None) -> list[Review]:
        return self.store.list(
            predicted_class=None if class_name == "All" else class_name,
            agrees=None if agreement == "All" else agreement == "agree",
            reviewer=(reviewer or "").strip() or None,
        )

    def history(self, class_name: str, agreement: str, reviewer: str | None) -> list[list]:
        """The table rows, newest first, in ``ROW_COLUMNS`` order."""
        return [list(r.as_row().values()) for r in self.filtered(class_name, agreement, reviewer)]

    def export_csv(self, class_name: str, agreement: str, reviewer: str | None) -> str:
        """The same rows as a CSV file (path) under the exports folder."""
        return str(write_reviews_csv(self.exports, self.filtered(class_name, agreement, reviewer)))

    def agreement(self, class_name: str, agreement: str, reviewer: str | None) -> list[list]:
        """Agreement rows (overall, uncertain/certain/unknown, per predicted class) with Wilson
        95 % intervals, over the reviews the class and reviewer filters keep (the agreement
        filter is ignored: it would make every rate 0 or 1)."""
        return summary_rows(self._summary(class_name, reviewer))

    def export_summary(self, class_name: str, agreement: str, reviewer: str | None) -> str:
        """The agreement rows of the exported reviews as a CSV file (path) beside the rows."""
        return str(write_summary_csv(self.exports, self._summary(class_name, reviewer)))

    def _summary(self, class_name: str, reviewer: str | None) -> dict:
        reviews = self.filtered(class_name, "All", reviewer)
        return agreement_summary(reviews, self.label_names)
