"""Is this a frontal chest X-ray? A warning, never a refusal, when an upload looks foreign.

Five signals, all cheap at serving time:

1. **Feature distance** on the pooled 1920-d DenseNet features of the same forward pass that
   gives the prediction. The features are projected onto the top principal components of
   the training features; the score is the Mahalanobis distance to the nearest class mean
   with one shared covariance (Lee et al., "A Simple Unified Framework for Detecting
   Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), together with the
   norm of the residual outside that subspace (as in ViM, Wang et al., CVPR 2022). Each
   warns above its ``quantile`` on the validation split.
2. **Whole-image distance**: the same statistics on the lung segmenter's pooled encoder
   features (``LungMask.features``). The classifier sees only the lung crop, so a hand or a
   CT slice whose "lungs" the segmenter draws can look like a chest to it; the segmenter
   sees the whole image. Fitted for one segmenter's weights (its sha256 is stored).
3. **Colour**: the mean saturation of the upload before it was turned gray.
4. **Shape**: an aspect ratio no chest radiograph has.
5. **No lung fields**: the lung segmenter (``model.segmenter``) found no lungs, while the
   feature score is above ``NO_LUNGS_SCORE`` (further evidence, measured in docs/INPUTS.md).

The fitted statistics travel in the checkpoint's ``config.json`` (``lungcam.ood``, the
whole-image ones under ``lungcam.ood.whole_image``); they are fitted and measured offline by
``training.ood_fit``::

    python -m training.ood_fit fit --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --max-per-class 300
    python -m training.ood_fit measure --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging.image import LoadedImage
from model.lungs import LungMask

MAX_SATURATION = 0.05  # lung5 radiographs: 0; colour photos: 0.1 and more
ASPECT_RANGE = (0.5, 2.0)  # width / height; lung5 spans 0.82 to 1.62
DEFAULT_COMPONENTS = 32
DEFAULT_QUANTILE = 0.99
# "No lung fields found" warns when the feature score (1 = the feature threshold) is above this
# lower bar, or when there is no score (no fitted statistics). Chosen by measuring
# (`python -m training.ood_fit measure`, docs/INPUTS.md): the 3 of 300 lung5 test films
# without lung fields scored 0.68–0.84, every non-chest image without them > 1.03 (already
# caught). At 0.9 the rule adds no false warning there; at 0 it added 1 point.
NO_LUNGS_SCORE = 0.9
NO_LUNGS_CANDIDATES = (float("inf"), 0.9, 0.75, 0.5, 0.25, 0.0)  # inf: the lungs are not used
NO_LUNGS_REASON = "no lung fields were found on it"


@dataclass
class OODCheck:
    """The guard's verdict on one image: ``reasons`` is empty when it looks like a chest X-ray.

    ``score`` is the larger feature score over its threshold (> 1 warns); ``None`` when the
    checkpoint carries no fitted statistics (then only colour and shape are checked).
    ``whole_image_score`` is the same for the segmenter's view of the whole image (``None``
    without a segmenter or its fitted statistics).
    """

    reasons: list[str] = field(default_factory=list)
    score: float | None = None
    whole_image_score: float | None = None

    @property
    def warn(self) -> bool:
        return bool(self.reasons)


@dataclass
class FeatureStats:
    """Training-feature statistics: PCA basis, class means and shared precision in that basis."""

    mean: np.ndarray  # (D,)
    basis: np.ndarray  # (k, D), orthonormal rows
    class_means: np.ndarray  # (K, k)
    precision: np.ndarray  # (k, k)
    distance_threshold: float
    residual_threshold: float

    def score(self, features: np.ndarray) -> float:
        """One image's (D,) features → the larger of its two scores over their thresholds."""
        distance, residual = (float(v[0]) for v in self.scores(features))
        return max(distance / self.distance_threshold, residual / self.residual_threshold)

    def scores(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features → (Mahalanobis distance to the nearest class, residual norm), (N,)."""
        centred = np.atleast_2d(features).astype(np.float64) - self.mean
        projected = centred @ self.basis.T
        residual = np.linalg.norm(centred - projected @ self.basis, axis=1)
        offsets = projected[:, None, :] - self.class_means[None]  # (N, K, k)
        squared = np.einsum("nkd,de,nke->nk", offsets, self.precision, offsets)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)), residual

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "pca-mahalanobis+residual",
            "mean": _rounded(self.mean),
            "basis": _rounded(self.basis),
            "class_means": _rounded(self.class_means),
            "precision": _rounded(self.precision),
            "thresholds": {
                "distance": self.distance_threshold,
                "residual": self.residual_threshold,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        try:
            return cls(
                mean=np.asarray(data["mean"], dtype=np.float64),
                basis=np.asarray(data["basis"], dtype=np.float64),
                class_means=np.asarray(data["class_means"], dtype=np.float64),
                precision=np.asarray(data["precision"], dtype=np.float64),
                distance_threshold=float(data["thresholds"]["distance"]),
                residual_threshold=float(data["thresholds"]["residual"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"config 'ood' section lacks {err}; refit it with `python -m training.ood_fit fit`"
            ) from err


def load_feature_stats(ood: dict[str, Any] | None) -> FeatureStats | None:
    """The checkpoint config's ``ood`` section as ``FeatureStats`` (None when not fitted)."""
    return FeatureStats.from_dict(ood) if ood else None


def load_whole_image_stats(
    ood: dict[str, Any] | None, segmenter_sha256: str | None
) -> FeatureStats | None:
    """The ``ood.whole_image`` section for the segmenter whose weights have ``segmenter_sha256``.

    None when it was not fitted or no segmenter is loaded. Statistics fitted on another
    segmenter's features would score nonsense, so a mismatch is an error naming the refit.
    """
    section = (ood or {}).get("whole_image")
    if not section or segmenter_sha256 is None:
        return None
    fitted_for = section.get("segmenter_sha256", "")
    if fitted_for != segmenter_sha256:
        raise ValueError(
            f"the guard's whole-image statistics were fitted for segmenter weights "
            f"{fitted_for[:12] or 'unknown'}…, but the loaded segmenter's are "
            f"{segmenter_sha256[:12]}…; refit with `python -m training.ood_fit fit`"
        )
    return FeatureStats.from_dict(section)


def check_image(image: LoadedImage) -> list[str]:
    """The cheap checks that need no model: colour saturation and aspect ratio."""
    reasons = []
    if image.saturation > MAX_SATURATION:
        reasons.append(
            f"the upload is in colour (saturation {image.saturation:.2f}); radiographs are gray"
        )
    width, height = image.size
    if not ASPECT_RANGE[0] <= width / height <= ASPECT_RANGE[1]:
        reasons.append(
            f"its shape ({width}×{height}) is unlike a chest radiograph's "
            f"(width/height {ASPECT_RANGE[0]}–{ASPECT_RANGE[1]})"
        )
    return reasons


def assess(
    image: LoadedImage,
    features: np.ndarray | None,
    stats: FeatureStats | None,
    lungs: LungMask | None = None,
    no_lungs_score: float = NO_LUNGS_SCORE,
    whole_image_stats: FeatureStats | None = None,
) -> OODCheck:
    """Combine the cheap checks, the feature scores and the lung fields for one image.

    ``lungs`` is the segmenter's answer (None: no segmenter loaded, nothing is concluded);
    its ``features`` are scored with ``whole_image_stats``. "No lung fields found" is a
    reason when the feature score exceeds ``no_lungs_score`` (or there is no score).
    """
    reasons = check_image(image)
    score = None
    if stats is not None and features is not None:
        score = stats.score(features)
        if score > 1:
            reasons.append(
                f"the model's features are far from its training X-rays "
                f"(score {score:.1f}; above 1 is unusual for chest X-rays)"
            )
    whole_score = None
    if whole_image_stats is not None and lungs is not None and lungs.features is not None:
        whole_score = whole_image_stats.score(lungs.features)
        if whole_score > 1:
            reasons.append(
                f"seen whole, it is unlike the chest X-rays the lung segmenter knows "
                f"(score {whole_score:.1f}; above 1 is unusual for chest X-rays)"
            )
    if no_lungs_warns(None if lungs is None else lungs.found, score, no_lungs_score):
        reasons.append(NO_LUNGS_REASON)
    return OODCheck(reasons, score, whole_score)


def no_lungs_warns(
    lungs_found: bool | None, score: float | None, no_lungs_score: float = NO_LUNGS_SCORE
) -> bool:
    """Whether the segmenter's answer (``lungs_found``; None: no segmenter) counts against an
    image with feature ``score`` (None: no fitted statistics)."""
    if lungs_found is None or lungs_found:
        return False
    return score is None or score > no_lungs_score


def _rounded(values: np.ndarray) -> list:
    return np.round(values.astype(np.float64), 6).tolist()
