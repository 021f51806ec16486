"""The plots of ``training.evaluate``'s classification metrics: confusion matrix, one-vs-rest
ROC curves and a reliability diagram, as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def save_plots(labels: np.ndarray, probabilities: np.ndarray, names: list[str], out: Path) -> None:
    """Confusion matrix, one-vs-rest ROC curves and a reliability diagram, as PNG."""
    predicted = probabilities.argmax(axis=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(
        labels,
        predicted,
        labels=list(range(len(names))),
        display_labels=names,
        ax=ax,
        xticks_rotation=30,
        colorbar=False,
    )
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    for k, name in enumerate(names):
        if 0 < (labels == k).sum() < len(labels):
            RocCurveDisplay.from_predictions(labels == k, probabilities[:, k], name=name, ax=ax)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_title("ROC, one class vs rest")
    fig.tight_layout()
    fig.savefig(out / "roc_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    confidence = probabilities.max(axis=1)
    accuracy, mean_conf = calibration_curve(predicted == labels, confidence, n_bins=15)
    ax.plot(mean_conf, accuracy, "o-", label="model (top label)")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (15 bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)
