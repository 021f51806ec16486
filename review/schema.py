"""The review table: one row per clinician's verdict on one prediction.

The schema is versioned with Alembic (``review/migrations``, whose ``env.py`` reads
``Base.metadata``); ``ROW_COLUMNS`` is the flat row the History table and the CSV export share.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from review.marks import marks_text

MAX_REVIEWER = 200


class Base(DeclarativeBase):
    pass


class Review(Base):
    """One clinician's verdict on one prediction (see docs/REVIEW.md for every column)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("review_id", name="uq_reviews_review_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_path: Mapped[str | None] = mapped_column(String(255))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    predicted_class: Mapped[str] = mapped_column(String(100), index=True)
    shown_class: Mapped[str] = mapped_column(String(100))
    cam_method: Mapped[str] = mapped_column(String(50))
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(100))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    agrees: Mapped[bool] = mapped_column(Boolean, index=True)
    correct_class: Mapped[str | None] = mapped_column(String(100))
    heatmap_usefulness: Mapped[int | None] = mapped_column(Integer)  # None: not rated
    heatmap_wrong_place: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text)
    # The conformal set shown (class names; NULL: unknown, e.g. saved before sets existed).
    prediction_set: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    set_alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Where the reviewer sees the finding (``review.marks``): boxes [x0, y0, x1, y1] in the
    # film's pixels (NULL: none), or no focal finding; neither: not marked.
    marks: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True)
    no_finding: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The heatmaps scored against the marks at save (``review.marks.MarkScores``; NULL: no marks).
    hit_shown: Mapped[float | None] = mapped_column(Float, nullable=True)
    hit_top: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_shown: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_top: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_flat: Mapped[float | None] = mapped_column(Float, nullable=True)

    def as_row(self) -> dict[str, Any]:
        """The review as one flat row (History table and CSV export share ``ROW_COLUMNS``)."""
        values = (
            self.id,
            self.review_id,
            _as_utc(self.created_at).isoformat(timespec="seconds"),
            self.reviewer,
            self.predicted_class,
            "agree" if self.agrees else "disagree",
            self.correct_class or "",
            self.shown_class,
            "" if self.heatmap_usefulness is None else self.heatmap_usefulness,
            self.heatmap_wrong_place,
            self.note,
            ", ".join(f"{k}: {v:.4f}" for k, v in self.probabilities.items()),
            self.cam_method,
            f"{self.model_name} {self.model_version}",
            self.checkpoint_sha256,
            self.image_sha256,
            self.image_path is not None,
            "" if self.prediction_set is None else "|".join(self.prediction_set),
            marks_text(self.marks),
            self.no_finding,
            *(
                "" if score is None else round(score, 4)
                for score in (
                    self.hit_shown,
                    self.hit_top,
                    self.energy_shown,
                    self.energy_top,
                    self.energy_flat,
                )
            ),
        )
        return dict(zip(ROW_COLUMNS, values, strict=True))


ROW_COLUMNS: tuple[str, ...] = (
    "id",
    "review_id",
    "created_at_utc",
    "reviewer",
    "predicted_class",
    "agreement",
    "correct_class",
    "shown_class",
    "heatmap_usefulness",
    "heatmap_wrong_place",
    "note",
    "probabilities",
    "cam_method",
    "model",
    "checkpoint_sha256",
    "image_sha256",
    "image_stored",
    "prediction_set",
    "marks",
    "no_focal_finding",
    "hit_shown",
    "hit_top",
    "energy_shown",
    "energy_top",
    "energy_flat",
)


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
