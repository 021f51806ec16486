"""Split conformal prediction sets on the calibrated probabilities (what serving applies).

A checkpoint fitted by ``python -m training.calibrate`` carries one threshold ``q`` in its
``config.json`` (``lungcam.conformal``). For a new image the set is every class whose
non-conformity score is at most ``q``; over exchangeable images the set holds the true class
with probability at least 1 − α (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle
Introduction to Conformal Prediction and Distribution-Free Uncertainty Quantification",
2021, §1 and §2.1). Two scores:

- ``lac``: 1 − p(class) ("least ambiguous set-valued classifier", Sadinle, Lei & Wasserman,
  JASA 2019): the smallest sets on average for a given coverage;
- ``aps``: the probability mass of the classes ranked at or above the class ("adaptive
  prediction sets", Romano, Sesia & Candès, NeurIPS 2020; non-randomised): larger sets, but
  coverage closer to even across easy and hard images.

The threshold is the ⌈(n + 1)(1 − α)⌉-th smallest of the n calibration scores (the
finite-sample correction); when that rank exceeds n the set is every class. A set never comes
out empty here: the top class is always in it (which can only raise coverage), so a set of
one class is "certain" and more than one is "uncertain".

    sets = ConformalConfig(method="lac", alpha=0.1, threshold=0.83, split="val", n=1285)
    sets.named_set(probabilities, label_names)  # ["Bacterial Pneumonia", "Viral Pneumonia"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHODS = ("lac", "aps")
DEFAULT_METHOD = "lac"
DEFAULT_ALPHA = 0.10


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in (0, 1), or a ``ValueError`` saying what would work."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in (0, 1), e.g. 0.1; got {alpha!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.1 for 90 % sets; got {alpha!r}")
    return value


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; choose one of {METHODS}")
    return method


def class_scores(probabilities: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """(N, K) probabilities → (N, K) non-conformity score of every candidate class.

    ``lac``: 1 − p_k. ``aps``: the sum of the probabilities ranked at or above class k (ties
    broken by class order, as a stable sort does).
    """
    probs = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    if check_method(method) == "lac":
        return 1.0 - probs
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def true_class_scores(
    probabilities: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD
) -> np.ndarray:
    """(N,) score of each image's true class: what the threshold is fitted on."""
    labels = np.asarray(labels, dtype=np.int64)
    return class_scores(probabilities, method)[np.arange(len(labels)), labels]


def conformal_rank(n: int, alpha: float) -> int:
    """⌈(n + 1)(1 − α)⌉: which order statistic of n calibration scores is the threshold."""
    if n < 1:
        raise ValueError(f"need at least one calibration score; got {n}")
    # The epsilon keeps e.g. (99 + 1) · 0.9 = 90.00000000000001 from rounding up to 91.
    return math.ceil((n + 1) * (1 - check_alpha(alpha)) - 1e-9)


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ⌈(n + 1)(1 − α)⌉-th smallest score, or 1.0 (every class) when that rank exceeds n.

    Both scores lie in [0, 1], so 1.0 lets every class in.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not np.isfinite(values).all():
        raise ValueError("calibration scores must be finite")
    rank = conformal_rank(len(values), alpha)
    return 1.0 if rank > len(values) else float(values[rank - 1])


def prediction_sets(
    probabilities: np.ndarray, threshold: float, method: str = DEFAULT_METHOD
) -> np.ndarray:
    """(N, K) bool: class k is in image i's set when its score is ≤ ``threshold``; the top
    class is always in (no empty sets)."""
    probs = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    member = class_scores(probs, method) <= threshold
    member[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return member


@dataclass(frozen=True)
class ConformalConfig:
    """The conformal section of a checkpoint's config: how sets are made at serving.

    ``threshold`` is on the ``method``'s score, fitted at level ``alpha`` on ``n`` images of
    the ``split`` (e.g. "val of lung5, lung5-extra").
    """

    method: str = DEFAULT_METHOD
    alpha: float = DEFAULT_ALPHA
    threshold: float = 1.0
    split: str = ""
    n: int = 0

    def __post_init__(self) -> None:
        check_method(self.method)
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        threshold = float(self.threshold)
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"conformal threshold must be in [0, 1]; got {self.threshold!r}")
        object.__setattr__(self, "threshold", threshold)
        if int(self.n) < 1 or int(self.n) != self.n:
            raise ValueError(f"conformal n (calibration images) must be ≥ 1; got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalConfig:
        """From config.json's ``lungcam.conformal``; unknown keys are an error naming them."""
        unknown = set(data) - {"method", "alpha", "threshold", "split", "n"}
        if unknown:
            raise ValueError(f"unknown keys in the conformal section: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sets(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, K) bool membership for (N, K) calibrated probabilities."""
        return prediction_sets(probabilities, self.threshold, self.method)

    def named_set(self, probabilities: np.ndarray, label_names: Sequence[str]) -> list[str]:
        """One image's (K,) probabilities → its set's class names, most probable first."""
        probs = np.asarray(probabilities, dtype=np.float64).ravel()
        member = self.sets(probs[None])[0]
        return [label_names[k] for k in np.argsort(-probs, kind="stable") if member[k]]
