"""Measure a checkpoint on labelled class folders: metrics.json plus plots.

    python -m training.evaluate --model assets/model --data ../shared/data/lung5 --split test \
        --out DIR

Everything goes through ``Predictor`` (the same decoding, transform and calibration as the
app). Metrics are reported before (T = 1) and after temperature scaling, per class, and per
source when a ``manifest.csv`` names sources — needed on lung5, where each class comes
mostly from one source.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from tqdm import tqdm

from imaging.load import decoded_batches
from model.predictor import Predictor
from training.calibrate import softmax
from training.data import ImageRecord, scan_class_folders
from training.metrics import binary_auroc, classification_metrics

log = logging.getLogger("lungcam.evaluate")


def predict_logits(
    predictor: Predictor, records: list[ImageRecord], batch_size: int = 16
) -> tuple[np.ndarray, list[ImageRecord], list[str]]:
    """Logits for every readable record; unreadable files are listed, not fatal."""
    by_path = {record.path: record for record in records}
    logits, kept, failed = [], [], []
    batches = decoded_batches(list(by_path), batch_size, failed)
    for batch in tqdm(batches, total=-(-len(records) // batch_size), desc="evaluate", disable=None):
        logits.extend(p.logits for p in predictor.predict_many([image for _, image in batch]))
        kept.extend(by_path[path] for path, _ in batch)
    return np.array(logits), kept, [f"{path}: {reason}" for path, reason in failed]


def evaluate(
    predictor: Predictor, records: list[ImageRecord]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """metrics.json content, plus labels and calibrated probabilities for the plots."""
    names = predictor.config.label_names
    logits, kept, failed = predict_logits(predictor, records)
    labels = np.array([r.label for r in kept])
    temperature = predictor.config.temperature
    calibrated = softmax(logits, temperature)
    result: dict[str, Any] = {
        "model": predictor.description,
        "temperature": temperature,
        "unreadable": failed,
        "uncalibrated": classification_metrics(labels, softmax(logits), names),
        "calibrated": classification_metrics(labels, calibrated, names),
    }
    result.update({k: result["calibrated"][k] for k in ("accuracy", "macro_f1", "macro_auroc")})
    if {"Bacterial Pneumonia", "Viral Pneumonia"} <= set(names):
        result["bacterial_vs_viral_auroc"] = binary_auroc(
            labels,
            calibrated,
            predictor.config.class_index("Bacterial Pneumonia"),
            predictor.config.class_index("Viral Pneumonia"),
        )
    sources = sorted({r.source for r in kept if r.source})
    if sources:
        result["per_source"] = {}
        for source in sources:
            mask = np.array([r.source == source for r in kept])
            part = classification_metrics(labels[mask], calibrated[mask], names)
            # Sensitivity per class present: macro-F1 over absent classes would mislead.
            present = {n: c for n, c in part["per_class"].items() if c["support"]}
            result["per_source"][source] = {
                key: part[key] for key in ("n", "accuracy", "macro_auroc", "ece")
            } | {
                "classes": {
                    n: {"n": c["support"], "sensitivity": c["sensitivity"]}
                    for n, c in present.items()
                }
            }
    return result, labels, calibrated


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


def resolve_folder(data: str | Path, split: str | None) -> Path:
    root = Path(data)
    return root / split if split else root


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", required=True, help="folder of class folders, or a split root")
    parser.add_argument("--split", default=None, help="e.g. test, when --data is a split root")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.load(args.model, args.device)
    records = scan_class_folders(resolve_folder(args.data, args.split))
    result, labels, probabilities = evaluate(predictor, records)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    save_plots(labels, probabilities, predictor.config.label_names, out)
    log.info(
        "accuracy %.3f, macro-F1 %.3f, macro AUROC %.3f, ECE %.3f → %.3f; wrote %s",
        result["accuracy"],
        result["macro_f1"],
        result["macro_auroc"] or float("nan"),
        result["uncalibrated"]["ece"],
        result["calibrated"]["ece"],
        out / "metrics.json",
    )


if __name__ == "__main__":
    main()
