"""The review store against SQLite and a real PostgreSQL server (no mocks).

The server is ``tests/conftest.py``'s ``postgres_server``; each test gets a fresh database.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from imaging.image import LoadedImage
from model.config import ModelConfig
from model.prediction import Prediction
from review.store import (
    ReviewError,
    ReviewStore,
    draft_from_prediction,
    new_review_id,
    pixels_sha256,
    resolve_database_url,
)
from tests.review_drafts import LABELS, PIXELS, make_draft


def test_round_trip_keeps_every_field(store):
    draft = make_draft(
        agreement="disagree",
        correct_class="Normal",
        shown_class="COVID-19",
        heatmap_usefulness=2,
        heatmap_wrong_place=True,
        note="Looks at the marker — not the lung. Ünïcode ok.",
    )
    before = datetime.now(UTC)
    saved, created = store.add(draft)
    stored = store.get(draft.review_id)
    assert created and stored is not None and stored.id == saved.id
    assert stored.probabilities == draft.probabilities
    assert list(stored.probabilities) == LABELS  # order kept for reports
    assert (stored.predicted_class, stored.shown_class) == ("Tuberculosis", "COVID-19")
    assert (stored.agrees, stored.correct_class) == (False, "Normal")
    assert (stored.heatmap_usefulness, stored.heatmap_wrong_place) == (2, True)
    assert stored.note == draft.note and stored.reviewer == "dr-a"
    assert (stored.model_name, stored.model_version) == ("densenet201", "lung5-v1")
    assert stored.checkpoint_sha256 == "c" * 64 and stored.cam_method == "Grad-CAM"
    assert stored.image_sha256 == pixels_sha256(PIXELS) and stored.image_path is None
    created_at = datetime.fromisoformat(stored.as_row()["created_at_utc"])
    assert created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=2) <= created_at <= datetime.now(UTC)


def test_agree_drops_a_leftover_correct_class(store):
    saved, _ = store.add(make_draft(agreement="agree", correct_class="Normal"))
    assert saved.agrees and store.get(saved.review_id).correct_class is None


def test_same_review_id_is_stored_once_even_when_sent_concurrently(store):
    draft = make_draft()
    results: list[bool] = []

    def send() -> None:
        results.append(store.add(draft)[1])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert [r.review_id for r in store.list()] == [draft.review_id]


def test_concurrent_writers_lose_nothing(store):
    ids = [[new_review_id() for _ in range(10)] for _ in range(8)]

    def send(batch: list[str]) -> None:
        for review_id in batch:
            store.add(make_draft(review_id=review_id))

    threads = [threading.Thread(target=send, args=(batch,)) for batch in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.review_id for r in store.list()) == sorted(i for batch in ids for i in batch)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["d", "c", "b", "a"]),
        ({"predicted_class": "Normal"}, ["c", "b"]),
        ({"agrees": False}, ["d", "b"]),
        ({"reviewer": "dr-b"}, ["d", "c"]),
        ({"predicted_class": "Normal", "agrees": False, "reviewer": "dr-a"}, ["b"]),
        ({"predicted_class": "Viral Pneumonia"}, []),
    ],
)
def test_filters(store, filters, expected):
    normal = dict(zip(LABELS, [0.1, 0.1, 0.6, 0.1, 0.1], strict=True))
    for review_id, reviewer, probabilities, correct in [
        ("a", "dr-a", None, None),
        ("b", "dr-a", normal, "COVID-19"),
        ("c", "dr-b", normal, None),
        ("d", "dr-b", None, "Normal"),
    ]:
        changes = {"review_id": review_id, "reviewer": reviewer}
        if probabilities:
            changes["probabilities"] = probabilities
        if correct:
            changes.update(agreement="disagree", correct_class=correct)
        store.add(make_draft(**changes))
    assert [r.review_id for r in store.list(**filters)] == expected
    assert store.reviewers() == ["dr-a", "dr-b"]


def test_opted_in_image_is_a_png_with_the_same_pixel_hash(store):
    kept, _ = store.add(make_draft(), PIXELS)
    hashed_only, _ = store.add(make_draft())
    path = store.image_file(kept)
    assert path is not None and path.parent == store.data_dir / "images"
    assert pixels_sha256(np.asarray(Image.open(path))) == kept.image_sha256
    assert store.image_file(hashed_only) is None
    with pytest.raises(ReviewError, match="does not match image_sha256"):
        store.add(make_draft(), PIXELS[::-1])


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    store = ReviewStore.open(tmp_path)
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "reviews.sqlite").is_file()
    store.close()


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        (None, None, "sqlite:///{data}/reviews.sqlite"),
        (None, "postgres://u:p@db:5432/r", "postgresql+psycopg://u:p@db:5432/r"),
        ("postgresql://u@h/r", "sqlite:///ignored", "postgresql+psycopg://u@h/r"),
        (None, "postgresql+psycopg://u@h/r", "postgresql+psycopg://u@h/r"),
        (None, "", "sqlite:///{data}/reviews.sqlite"),
    ],
)
def test_database_url(monkeypatch, tmp_path, url, env, expected):
    if env is None:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("DATABASE_URL", env)
    assert resolve_database_url(tmp_path, url) == expected.format(data=tmp_path.resolve())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"agreement": "disagree"}, "disagree requires the correct class"),
        ({"agreement": "disagree", "correct_class": "Lupus"}, "'Lupus' is not one of"),
        ({"agreement": "disagree", "correct_class": "Tuberculosis"}, "is the predicted one"),
        ({"agreement": None}, "agreement must be one of"),
        ({"agreement": "maybe"}, "agreement must be one of"),
        ({"heatmap_usefulness": 0}, "usefulness must be 1-5"),
        ({"heatmap_usefulness": 6}, "usefulness must be 1-5"),
        ({"reviewer": "  "}, "reviewer name is required"),
        ({"review_id": "../etc"}, "review_id '../etc' must be"),
        ({"shown_class": "Lupus"}, "shown class 'Lupus'"),
        ({"image_sha256": "abc"}, "64 lowercase hex"),
        ({"probabilities": {"Normal": 0.5, "COVID-19": 0.2}}, "sum to 1"),
        ({"probabilities": {"Normal": float("nan"), "COVID-19": 1.0}}, "finite"),
        ({"note": "x" * 5001}, "note is 5001 characters"),
    ],
)
def test_bad_reviews_are_refused_and_nothing_is_stored(store, changes, message):
    with pytest.raises(ReviewError, match=message):
        store.add(make_draft(**changes))
    assert store.list() == []


def _prediction() -> Prediction:
    probabilities = np.array([0.1, 0.2, 0.4, 0.2, 0.1], dtype=np.float32)
    image = LoadedImage(PIXELS, "PNG", "L")
    return Prediction(LABELS, probabilities, np.log(probabilities), np.zeros((5, 2, 2)), image)


@pytest.mark.parametrize(
    ("shown", "usefulness", "review_id", "expected_shown"),
    [(None, 3.0, None, "Normal"), ("", 5, "", "Normal"), ("COVID-19", 1.0, "key-1", "COVID-19")],
)
def test_draft_from_prediction(shown, usefulness, review_id, expected_shown):
    config = ModelConfig(version="v9", weights_sha256="e" * 64)
    draft = draft_from_prediction(
        _prediction(),
        config,
        shown_class=shown,
        agreement="agree",
        correct_class="",
        heatmap_usefulness=usefulness,
        heatmap_wrong_place=False,
        note=None,
        reviewer="dr-a",
        review_id=review_id,
    )
    draft.validate()
    assert draft.shown_class == expected_shown and draft.predicted_class == "Normal"
    assert draft.heatmap_usefulness == int(usefulness) and draft.note == ""
    assert draft.review_id == (review_id or draft.review_id) and len(draft.review_id) >= 5
    assert (draft.model_version, draft.checkpoint_sha256) == ("v9", "e" * 64)
    assert draft.image_sha256 == pixels_sha256(PIXELS) and draft.correct_class is None
    assert draft.probabilities["Normal"] == pytest.approx(0.4)


def test_half_point_usefulness_is_refused():
    with pytest.raises(ReviewError, match=r"whole number 1-5; got 3\.5"):
        draft_from_prediction(
            _prediction(),
            ModelConfig(),
            shown_class=None,
            agreement="agree",
            correct_class=None,
            heatmap_usefulness=3.5,
            heatmap_wrong_place=False,
            note="",
            reviewer="dr-a",
        )


def test_pixel_hash_depends_on_shape_not_only_bytes():
    flat = np.zeros((4, 6), np.uint8)
    assert pixels_sha256(flat) != pixels_sha256(flat.reshape(6, 4))
    assert pixels_sha256(flat) == pixels_sha256(flat.copy())
    with pytest.raises(ValueError, match=r"\(H, W\) grayscale"):
        pixels_sha256(np.zeros((4, 6, 3), np.uint8))


def test_every_missing_field_is_named_at_once_and_no_rating_is_allowed(store):
    draft = make_draft(agreement=None, reviewer=" ", heatmap_usefulness=None)
    with pytest.raises(ReviewError) as raised:
        store.add(draft)
    assert "choose agree/disagree" in str(raised.value)
    assert "give a reviewer name" in str(raised.value)
    saved, _ = store.add(make_draft(heatmap_usefulness=None))
    assert saved.heatmap_usefulness is None and saved.as_row()["heatmap_usefulness"] == ""
