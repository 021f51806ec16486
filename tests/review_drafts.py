"""A draft review to store, and a review row as the first revisions wrote it, for the review
store's tests (the store itself: ``conftest.store``)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import text

from review.store import ReviewDraft, new_review_id, pixels_sha256

LABELS = ["Bacterial Pneumonia", "COVID-19", "Normal", "Tuberculosis", "Viral Pneumonia"]
PIXELS = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8)


def make_draft(**changes) -> ReviewDraft:
    fields = {
        "review_id": new_review_id(),
        "reviewer": "dr-a",
        "image_sha256": pixels_sha256(PIXELS),
        "probabilities": dict(zip(LABELS, [0.05, 0.1, 0.15, 0.6, 0.1], strict=True)),
        "shown_class": "Tuberculosis",
        "cam_method": "Grad-CAM",
        "model_name": "densenet201",
        "model_version": "lung5-v1",
        "checkpoint_sha256": "c" * 64,
        "agreement": "agree",
        "correct_class": None,
        "heatmap_usefulness": 4,
        "heatmap_wrong_place": False,
        "note": "",
    }
    return ReviewDraft(**{**fields, **changes})


def insert_old_review(engine, review_id: str) -> None:
    """A review row as revisions 0001–0003 wrote it (none of the later columns)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO reviews (review_id, created_at, reviewer, image_sha256, "
                "probabilities, predicted_class, shown_class, cam_method, model_name, "
                "model_version, checkpoint_sha256, agrees, heatmap_usefulness, "
                "heatmap_wrong_place, note) VALUES "
                "(:id, '2025-11-25 10:00:00', 'dr-a', :sha, '{\"Normal\": 1.0}', 'Normal', "
                "'Normal', 'Grad-CAM', 'densenet201', 'v1', '', TRUE, 3, FALSE, '')"
            ),
            {"id": review_id, "sha": "a" * 64},
        )
