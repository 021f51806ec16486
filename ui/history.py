"""History tab: the stored reviews, filtered, as a table or a CSV file."""

from __future__ import annotations

from review.report import write_reviews_csv
from review.store import Review, ReviewStore


class HistoryHandlers:
    """Read ``store`` through the History tab's three filters ("All" = no filter)."""

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
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
