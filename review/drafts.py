"""A review as sent by the screen or the API, and its validation before it is stored.

``draft_from_prediction`` fills the model's side from a prediction and the checkpoint config,
checks the reviewer's marks against the film and scores the heatmaps against them
(``review.marks``); ``ReviewDraft.validate`` raises ``ReviewError`` saying what to change.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from explain.localization import Box
from review.marks import MarkScores, parse_marks, score_marks
from review.schema import MAX_REVIEWER

if TYPE_CHECKING:
    from model.config import ModelConfig
    from model.prediction import Prediction

AGREEMENTS = ("agree", "disagree")
USEFULNESS = range(1, 6)
REVIEW_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_NOTE = 5000


class ReviewError(ValueError):
    """A review that cannot be saved as sent; the message says what to change."""


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
    heatmap_usefulness: int | None  # None: not rated
    heatmap_wrong_place: bool
    note: str
    prediction_set: Sequence[str] | None = None  # the conformal set shown (None: no sets)
    set_alpha: float | None = None
    marks: Sequence[Box] = ()  # film pixels, checked by ``review.marks.parse_marks``
    no_finding: bool = False  # the reviewer sees no focal finding
    scores: MarkScores | None = None  # the heatmaps against ``marks`` (None: no marks)

    @property
    def predicted_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def validate(self) -> None:
        """Raise ``ReviewError`` naming every field that is wrong or missing, at once."""
        problems = self.problems()
        if problems:
            raise ReviewError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every field that is wrong or missing, each as what to do (empty: valid)."""
        labels = list(self.probabilities)
        problems: list[str] = []
        if self.agreement not in AGREEMENTS:
            problems.append(
                f"choose agree/disagree (agreement must be one of {AGREEMENTS}; "
                f"got {self.agreement!r})"
            )
        if self.agreement == "disagree":
            if not self.correct_class:
                problems.append("disagree requires the correct class: choose it")
            elif self.correct_class not in labels:
                problems.append(f"correct class {self.correct_class!r} is not one of {labels}")
            elif self.correct_class == self.predicted_class:
                problems.append(
                    f"disagree, but the correct class given is the predicted one "
                    f"({self.predicted_class}); choose 'agree' or another class"
                )
        if not self.reviewer.strip():
            problems.append("give a reviewer name (a reviewer name is required, or log in)")
        elif len(self.reviewer) > MAX_REVIEWER:
            problems.append(f"reviewer name is {len(self.reviewer)} characters; max {MAX_REVIEWER}")
        if not REVIEW_ID.fullmatch(self.review_id):
            problems.append(
                f"review_id {self.review_id!r} must be 1-64 letters, digits or _.:- "
                "(leave it empty to get a fresh one)"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.image_sha256):
            problems.append(
                f"image_sha256 must be 64 lowercase hex digits; got {self.image_sha256!r}"
            )
        values = list(self.probabilities.values())
        if not labels or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
            problems.append(f"probabilities must be finite values in [0, 1]; got {values}")
        elif abs(sum(values) - 1.0) > 1e-3:
            problems.append(f"probabilities must sum to 1; they sum to {sum(values):.4f}")
        if self.shown_class not in labels:
            problems.append(f"shown class {self.shown_class!r} is not one of {labels}")
        if self.heatmap_usefulness is not None and self.heatmap_usefulness not in USEFULNESS:
            problems.append(
                f"heatmap usefulness must be 1-5 (or none); got {self.heatmap_usefulness!r}"
            )
        if len(self.note) > MAX_NOTE:
            problems.append(f"note is {len(self.note)} characters; max {MAX_NOTE}")
        if self.prediction_set is not None and (
            not self.prediction_set
            or not set(self.prediction_set) <= set(labels)
            or len(set(self.prediction_set)) != len(self.prediction_set)
        ):
            problems.append(
                f"prediction set must be distinct classes of {labels}; got {self.prediction_set}"
            )
        return problems


def draft_from_prediction(
    prediction: Prediction,
    config: ModelConfig,
    *,
    shown_class: str | None,
    agreement: str,
    correct_class: str | None,
    heatmap_usefulness: float | None,
    heatmap_wrong_place: bool,
    note: str | None,
    reviewer: str,
    review_id: str | None = None,
    cam_method: str = "Grad-CAM",
    marks: str | Sequence | None = None,
    no_finding: bool = False,
) -> ReviewDraft:
    """A draft with the model's side filled in from ``prediction`` and the checkpoint config.

    An empty ``shown_class`` means the top class (what the screen shows first); an empty
    ``review_id`` gets a fresh one. ``marks`` (JSON text or a list of boxes in the film's
    pixels) are checked against the film (a ``ValueError`` saying what is wrong) and the shown
    and top class's heatmaps scored against them.
    """
    boxes = parse_marks(marks, *prediction.image.size, no_finding=bool(no_finding))
    shown = shown_class or prediction.top_label
    return ReviewDraft(
        review_id=(review_id or "").strip() or new_review_id(),
        reviewer=reviewer,
        image_sha256=pixels_sha256(prediction.image.pixels),
        probabilities=prediction.confidences(),
        shown_class=shown,
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
        marks=boxes,
        no_finding=bool(no_finding),
        scores=score_marks(prediction, shown, boxes) if boxes else None,
    )


def _as_score(value: float | str | None) -> int | None:
    # None or "": not rated. Sliders and radios send floats or strings; 3.0 is valid, 3.5 not.
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ReviewError(f"heatmap usefulness must be a whole number 1-5; got {value!r}")
    return int(number)


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
