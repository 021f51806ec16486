"""Classification and calibration metrics, from scikit-learn (ECE in a few lines of numpy).

Plain functions over arrays so evaluation, tests and the model card share one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

ECE_BINS = 15


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, label_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, macro AUROC, per-class sensitivity/specificity/PPV/AUROC, confusion
    matrix, 15-bin ECE and multiclass Brier score for (N,) labels and (N, K) probabilities.

    With some classes absent from ``labels`` (a folder holding only some class folders),
    what needs them is ``None``: their sensitivity and AUROC, and macro-F1 (an absent class's
    F1 is 0 or undefined, which would drag the mean down for no error made). Macro AUROC
    averages the classes with both positives and negatives.
    """
    classes = list(range(len(label_names)))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    present = [k for k in classes if (labels == k).any() and (labels != k).any()]
    per_class = {}
    for k, name in enumerate(label_names):
        is_k = labels == k
        per_class[name] = {
            "support": int(is_k.sum()),
            "sensitivity": _nan_to_none(recall_score(is_k, predicted == k, zero_division=np.nan)),
            "specificity": _nan_to_none(recall_score(~is_k, predicted != k, zero_division=np.nan)),
            "ppv": _nan_to_none(precision_score(is_k, predicted == k, zero_division=np.nan)),
            "auroc": float(roc_auc_score(is_k, probabilities[:, k])) if k in present else None,
        }
    aurocs = [per_class[label_names[k]]["auroc"] for k in present]
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(
            f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)
        )
        if all((labels == k).any() for k in classes)
        else None,
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(labels, probabilities),
        "brier": float(brier_score_loss(labels, probabilities, labels=classes)),
    }


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Top-label ECE with 15 equal-width bins (Guo et al. 2017): the gap between accuracy and
    mean confidence in each bin, weighted by the bin's share of the images."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bins = np.digitize(confidence, np.linspace(0, 1, ECE_BINS + 1), right=True)
    return float(
        sum(
            abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
            for b in np.unique(bins)
        )
    )


def binary_auroc(
    labels: np.ndarray, probabilities: np.ndarray, positive: int, negative: int
) -> float | None:
    """AUROC of ``positive`` vs ``negative`` among images of those two classes, scored by
    p(positive) / (p(positive) + p(negative)) (e.g. bacterial vs viral pneumonia)."""
    keep = np.isin(labels, [positive, negative])
    if len(np.unique(labels[keep])) < 2:
        return None
    pair = probabilities[keep][:, [positive, negative]]
    score = pair[:, 0] / np.clip(pair.sum(axis=1), 1e-12, None)
    return float(roc_auc_score(labels[keep] == positive, score))


def label_set_metrics(
    allowed: np.ndarray, probabilities: np.ndarray, label_names: list[str]
) -> dict[str, Any]:
    """Scores of images labelled with a *set* of classes, e.g. "Pneumonia" of unknown cause
    (either pneumonia class is right), for (N, K) bool ``allowed`` and (N, K) probabilities:
    ``accuracy`` counts an image right when its top class is in its set, ``set_probability``
    is the mean of the probabilities summed over the set, ``called`` the share of images
    whose top class is each class."""
    if not len(allowed):
        raise ValueError("no label-set images to score")
    predicted = probabilities.argmax(axis=1)
    return {
        "n": len(allowed),
        "accuracy": float(allowed[np.arange(len(allowed)), predicted].mean()),
        "set_probability": float(np.where(allowed, probabilities, 0.0).sum(axis=1).mean()),
        "called": {name: float((predicted == k).mean()) for k, name in enumerate(label_names)},
    }


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
