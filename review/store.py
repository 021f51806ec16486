"""Clinician reviews in a real database: SQLite by default, PostgreSQL via ``DATABASE_URL``.

The repository over ``review.schema`` (the table) and ``review.drafts`` (what is sent and its
validation). ``ReviewStore.open`` upgrades the schema to the newest Alembic revision before the
first query. Every ``add`` is committed before it returns, and a client-chosen ``review_id``
makes retries idempotent: sending the same review twice stores it once.

    store = ReviewStore.open("data")  # $DATABASE_URL, else data/reviews.sqlite
    saved, created = store.add(draft)
    rows = store.list(predicted_class="Tuberculosis", agrees=False)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from alembic.config import Config
from PIL import Image
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from review.drafts import (
    AGREEMENTS,
    MAX_NOTE,
    REVIEW_ID,
    USEFULNESS,
    ReviewDraft,
    ReviewError,
    draft_from_prediction,
    new_review_id,
    pixels_sha256,
)
from review.schema import MAX_REVIEWER, ROW_COLUMNS, Base, Review

__all__ = [
    "AGREEMENTS",
    "DATABASE_URL_ENV",
    "MAX_NOTE",
    "MAX_REVIEWER",
    "MIGRATIONS",
    "REVIEW_ID",
    "ROW_COLUMNS",
    "USEFULNESS",
    "Base",
    "Review",
    "ReviewDraft",
    "ReviewError",
    "ReviewStore",
    "alembic_config",
    "draft_from_prediction",
    "new_review_id",
    "pixels_sha256",
    "resolve_database_url",
]

DATABASE_URL_ENV = "DATABASE_URL"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
            heatmap_usefulness=draft.heatmap_usefulness,
            heatmap_wrong_place=bool(draft.heatmap_wrong_place),
            note=draft.note,
            prediction_set=None if draft.prediction_set is None else list(draft.prediction_set),
            set_alpha=draft.set_alpha,
            marks=[list(box) for box in draft.marks] or None,
            no_finding=draft.no_finding,
            **({} if draft.scores is None else asdict(draft.scores)),
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
