"""Clinician reviews in a real database: SQLite by default, PostgreSQL via ``DATABASE_URL``.

The schema is versioned with Alembic (``review/migrations``); ``ReviewStore.open`` upgrades it
to the newest revision before the first query. Every ``add`` is committed before it returns,
and a client-chosen ``review_id`` makes retries idempotent: sending the same review twice
stores it once.

    store = ReviewStore.open("data")  # $DATABASE_URL, else data/reviews.sqlite
    saved, created = store.add(draft)
    rows = store.list(predicted_class="Tuberculosis", agrees=False)
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from alembic import command
from alembic.config import Config
from PIL import Image
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.predictor import Prediction

DATABASE_URL_ENV = "DATABASE_URL"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
AGREEMENTS = ("agree", "disagree")
USEFULNESS = range(1, 6)
REVIEW_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_NOTE = 5000
MAX_REVIEWER = 200


class ReviewError(ValueError):
    """A review that cannot be saved as sent; the message says what to change."""


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
    heatmap_usefulness: Mapped[int] = mapped_column(Integer)
    heatmap_wrong_place: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text)
    # The conformal set shown (class names; NULL: unknown, e.g. saved before sets existed).
    prediction_set: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    set_alpha: Mapped[float | None] = mapped_column(Float, nullable=True)

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
            self.heatmap_usefulness,
            self.heatmap_wrong_place,
            self.note,
            ", ".join(f"{k}: {v:.4f}" for k, v in self.probabilities.items()),
            self.cam_method,
            f"{self.model_name} {self.model_version}",
            self.checkpoint_sha256,
            self.image_sha256,
            self.image_path is not None,
            "" if self.prediction_set is None else "|".join(self.prediction_set),
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
)


@dataclass(frozen=True)
class ReviewDraft:
    """A review as sent by the screen or the API, before it has an id and a time."""

    review_id: str
    reviewer: str
    image_sha256: str
    probabilities: Mapping[str, float]
    shown_class: str
    cam_method: str
    model_name: str
    model_version: str
    checkpoint_sha256: str
    agreement: str
    correct_class: str | None
    heatmap_usefulness: int
    heatmap_wrong_place: bool
    note: str
    prediction_set: Sequence[str] | None = None  # the conformal set shown (None: no sets)
    set_alpha: float | None = None

    @property
    def predicted_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def validate(self) -> None:
        """Raise ``ReviewError`` naming the first field that is wrong."""
        labels = list(self.probabilities)
        if not REVIEW_ID.fullmatch(self.review_id):
            raise ReviewError(
                f"review_id {self.review_id!r} must be 1-64 letters, digits or _.:- "
                "(leave it empty to get a fresh one)"
            )
        if not self.reviewer.strip():
            raise ReviewError("a reviewer name is required (or log in when auth is on)")
        if len(self.reviewer) > MAX_REVIEWER:
            raise ReviewError(
                f"reviewer name is {len(self.reviewer)} characters; max {MAX_REVIEWER}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.image_sha256):
            raise ReviewError(
                f"image_sha256 must be 64 lowercase hex digits; got {self.image_sha256!r}"
            )
        values = list(self.probabilities.values())
        if not labels or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
            raise ReviewError(f"probabilities must be finite values in [0, 1]; got {values}")
        if abs(sum(values) - 1.0) > 1e-3:
            raise ReviewError(f"probabilities must sum to 1; they sum to {sum(values):.4f}")
        if self.shown_class not in labels:
            raise ReviewError(f"shown class {self.shown_class!r} is not one of {labels}")
        if self.agreement not in AGREEMENTS:
            raise ReviewError(f"agreement must be one of {AGREEMENTS}; got {self.agreement!r}")
        if self.agreement == "disagree":
            if not self.correct_class:
                raise ReviewError("disagree requires the correct class")
            if self.correct_class not in labels:
                raise ReviewError(f"correct class {self.correct_class!r} is not one of {labels}")
            if self.correct_class == self.predicted_class:
                raise ReviewError(
                    f"disagree, but the correct class given is the predicted one "
                    f"({self.predicted_class}); choose 'agree' or another class"
                )
        if self.heatmap_usefulness not in USEFULNESS:
            raise ReviewError(f"heatmap usefulness must be 1-5; got {self.heatmap_usefulness!r}")
        if len(self.note) > MAX_NOTE:
            raise ReviewError(f"note is {len(self.note)} characters; max {MAX_NOTE}")
        if self.prediction_set is not None and (
            not self.prediction_set
            or not set(self.prediction_set) <= set(labels)
            or len(set(self.prediction_set)) != len(self.prediction_set)
        ):
            raise ReviewError(
                f"prediction set must be distinct classes of {labels}; got {self.prediction_set}"
            )


def draft_from_prediction(
    prediction: Prediction,
    config: ModelConfig,
    *,
    shown_class: str | None,
    agreement: str,
    correct_class: str | None,
    heatmap_usefulness: float,
    heatmap_wrong_place: bool,
    note: str | None,
    reviewer: str,
    review_id: str | None = None,
    cam_method: str = "Grad-CAM",
) -> ReviewDraft:
    """A draft with the model's side filled in from ``prediction`` and the checkpoint config.

    An empty ``shown_class`` means the top class (what the screen shows first); an empty
    ``review_id`` gets a fresh one.
    """
    return ReviewDraft(
        review_id=(review_id or "").strip() or new_review_id(),
        reviewer=reviewer,
        image_sha256=pixels_sha256(prediction.image.pixels),
        probabilities=prediction.confidences(),
        shown_class=shown_class or prediction.top_label,
        cam_method=cam_method,
        model_name=config.architecture,
        model_version=config.version,
        checkpoint_sha256=config.weights_sha256,
        agreement=agreement,
        correct_class=correct_class or None,
        heatmap_usefulness=_as_score(heatmap_usefulness),
        heatmap_wrong_place=bool(heatmap_wrong_place),
        note=note or "",
        prediction_set=prediction.prediction_set,
        set_alpha=prediction.set_alpha,
    )


def _as_score(value: float) -> int:
    # Sliders send floats; 3.0 is a valid score, 3.5 is not.
    if value is None or float(value) != int(value):
        raise ReviewError(f"heatmap usefulness must be a whole number 1-5; got {value!r}")
    return int(value)


def new_review_id() -> str:
    """A fresh idempotency key (what the screen uses when the sender gives none)."""
    return uuid.uuid4().hex


def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 of decoded 8-bit grayscale pixels: ``b"<height>x<width>:"`` + row-major bytes.

    Hashing pixels, not the uploaded file, gives the same hash for the stored PNG copy and
    never hashes DICOM header fields.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 2:
        raise ValueError(f"expected (H, W) grayscale pixels; got shape {pixels.shape}")
    header = f"{pixels.shape[0]}x{pixels.shape[1]}:".encode()
    return hashlib.sha256(header + pixels.tobytes()).hexdigest()


def resolve_database_url(data_dir: str | Path, url: str | None = None) -> str:
    """``url``, else ``$DATABASE_URL``, else SQLite at ``<data_dir>/reviews.sqlite``.

    ``postgresql://`` and ``postgres://`` URLs are pointed at psycopg 3, the driver we ship.
    """
    url = url or os.environ.get(DATABASE_URL_ENV) or None
    if url is None:
        return f"sqlite:///{Path(data_dir).resolve() / 'reviews.sqlite'}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def alembic_config(engine: Engine) -> Config:
    """An Alembic config built in code: migrations ship inside the package, no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the History tab read while a review is written; synchronous=FULL also syncs
    # the WAL on every commit, so an acknowledged review survives a power cut, not only a
    # killed process (NORMAL would survive the latter only). Reviews are few; the fsync is cheap.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class ReviewStore:
    """Save, fetch and filter reviews; opt-in image copies live under ``data_dir/images``."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, data_dir: str | Path, url: str | None = None) -> ReviewStore:
        """Connect (see ``resolve_database_url``) and upgrade the schema to the newest revision.

        ``data_dir`` holds the SQLite file (when no URL is given) and opted-in images.
        """
        folder = Path(data_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        resolved = resolve_database_url(folder, url)
        engine = create_engine(resolved, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        command.upgrade(alembic_config(engine), "head")
        return cls(engine, folder)

    def close(self) -> None:
        self.engine.dispose()

    def add(self, draft: ReviewDraft, pixels: np.ndarray | None = None) -> tuple[Review, bool]:
        """Validate and commit ``draft``; returns (review, created).

        ``created`` is False when a review with the same ``review_id`` already exists: the
        stored one is returned unchanged, so a retried request never makes a duplicate.
        ``pixels`` (the decoded image) are saved as PNG only when given, i.e. opted in.
        """
        draft.validate()
        existing = self.get(draft.review_id)
        if existing is not None:
            return existing, False
        image_path = None if pixels is None else self._save_image(pixels, draft.image_sha256)
        review = Review(
            review_id=draft.review_id,
            created_at=datetime.now(UTC),
            reviewer=draft.reviewer.strip(),
            image_sha256=draft.image_sha256,
            image_path=image_path,
            probabilities={k: float(v) for k, v in draft.probabilities.items()},
            predicted_class=draft.predicted_class,
            shown_class=draft.shown_class,
            cam_method=draft.cam_method,
            model_name=draft.model_name,
            model_version=draft.model_version,
            checkpoint_sha256=draft.checkpoint_sha256,
            agrees=draft.agreement == "agree",
            correct_class=draft.correct_class if draft.agreement == "disagree" else None,
            heatmap_usefulness=int(draft.heatmap_usefulness),
            heatmap_wrong_place=bool(draft.heatmap_wrong_place),
            note=draft.note,
            prediction_set=None if draft.prediction_set is None else list(draft.prediction_set),
            set_alpha=draft.set_alpha,
        )
        try:
            with self._session.begin() as session:
                session.add(review)
        except IntegrityError:  # the same review_id committed concurrently
            stored = self.get(draft.review_id)
            if stored is None:
                raise
            return stored, False
        return review, True

    def get(self, review_id: str) -> Review | None:
        with self._session() as session:
            return session.scalar(sql_select(Review).where(Review.review_id == review_id))

    def list(
        self,
        predicted_class: str | None = None,
        agrees: bool | None = None,
        reviewer: str | None = None,
    ) -> Sequence[Review]:
        """Reviews matching every filter given (``None`` = any), newest first."""
        query = sql_select(Review).order_by(Review.created_at.desc(), Review.id.desc())
        if predicted_class:
            query = query.where(Review.predicted_class == predicted_class)
        if agrees is not None:
            query = query.where(Review.agrees == agrees)
        if reviewer:
            query = query.where(Review.reviewer == reviewer)
        with self._session() as session:
            return session.scalars(query).all()

    def reviewers(self) -> list[str]:
        with self._session() as session:
            query = sql_select(Review.reviewer).distinct().order_by(Review.reviewer)
            return list(session.scalars(query))

    def image_file(self, review: Review) -> Path | None:
        """Where the review's opted-in image copy is, or None."""
        return None if review.image_path is None else self.data_dir / review.image_path

    def _save_image(self, pixels: np.ndarray, sha256: str) -> str:
        if pixels_sha256(pixels) != sha256:
            raise ReviewError("the image sent does not match image_sha256")
        relative = Path("images") / f"{sha256}.png"
        target = self.data_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
            Image.fromarray(pixels).save(partial, format="PNG")  # no metadata is written
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            partial.replace(target)
        return relative.as_posix()


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
