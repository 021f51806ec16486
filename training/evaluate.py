"""Measure a checkpoint on labelled class folders: metrics.json plus plots.

    python -m training.evaluate --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --split test --out DIR

Everything goes through ``Predictor`` (the same decoding, transform and calibration as the
app). Metrics are reported before (T = 1) and after temperature scaling, per class, and per
source (from each folder's ``manifest.csv``; a folder without one is one source named after
it) — needed on lung5, where each class comes mostly from one source. A folder may hold only
some of the five class folders; what needs the absent classes is null. The shortcut audit
(``training.audit``; ``--no-audit`` skips it) scores every image again with its centre or its
border blanked and histogram-equalised, per source and class. With a conformal section in
the checkpoint (``python -m training.calibrate``), ``conformal`` holds the empirical coverage
and mean set size overall, per class and per source; ``coverage_vs_alpha.png`` (and
``conformal_curve``) plots coverage and set size against α, fitted on random halves of the
evaluated images (docs/UNCERTAINTY.md). With the lung segmenter loaded, the ``lung_share``
section (``training.lung_share``) says how much of the predicted class's heatmap lies on the
lung fields, per class and per source (plot: ``lung_share.png``).

All of the above scores the images with one true class. A ``Pneumonia`` class folder (e.g.
``../shared/data/adult-extra``) is the label set {Bacterial, Viral Pneumonia}: its images are
scored apart in ``label_sets`` — right when the top class is in the set, the probability
summed over the set, what they are called — overall, per view (the manifest's ``view``) and
per source.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from model.conformal import NO_SETS
from model.predictor import Predictor
from training.audit import (
    VARIANTS,
    format_audit,
    predict_variants,
    save_audit_plots,
    shortcut_audit,
)
from training.calibrate import softmax
from training.conformal import (
    coverage_curve,
    coverage_report,
    format_report,
    save_coverage_plot,
)
from training.data import ImageRecord, allowed_mask
from training.lung_share import format_lung_share, lung_share_section, save_lung_share_plot
from training.metrics import binary_auroc, classification_metrics, label_set_metrics
from training.sources import scan_folders

log = logging.getLogger("lungcam.evaluate")


class NothingToScore(ValueError):
    """No image of the given folders could be read."""


def predict_logits(
    predictor: Predictor, records: list[ImageRecord], batch_size: int = 16
) -> tuple[np.ndarray, list[ImageRecord], list[str]]:
    """Logits for every readable record; unreadable files are listed, not fatal."""
    logits, kept, failed = predict_variants(
        predictor, records, {"clean": VARIANTS["clean"]}, batch_size
    )
    return logits["clean"], kept, failed


def evaluate(
    predictor: Predictor, records: list[ImageRecord], *, audit: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """metrics.json content, plus labels and calibrated probabilities of the single-label
    images for the plots.

    With ``audit``, every image is also scored under the shortcut audit's edits (same
    ``Predictor`` path, one decode per file) and the result has an ``audit`` section. With a
    lung segmenter, it has a ``lung_share`` section. Those and every per-class figure use the
    single-label images; label-set images (``Pneumonia``) make the ``label_sets`` section.
    Without any single-label image, ``calibrated``, ``accuracy`` and the like are ``None``.
    """
    names = predictor.config.label_names
    variants = VARIANTS if audit else {"clean": VARIANTS["clean"]}
    lungs: list[tuple[bool | None, float | None]] = []
    all_logits, kept, failed = predict_variants(predictor, records, variants, lungs=lungs)
    if not kept:
        raise NothingToScore(f"none of the {len(records)} images could be read, e.g. {failed[0]}")
    temperature = predictor.config.temperature
    result: dict[str, Any] = {
        "model": predictor.description,
        "temperature": temperature,
        "unreadable": failed,
    }
    single = np.array([not r.is_set for r in kept])
    if not single.all():
        sets = [r for r, one in zip(kept, single, strict=True) if not one]
        set_probabilities = softmax(all_logits["clean"][~single], temperature)
        result["label_sets"] = label_set_section(sets, set_probabilities, names)
    kept = [r for r, one in zip(kept, single, strict=True) if one]
    lungs = [share for share, one in zip(lungs, single, strict=True) if one]
    all_logits = {name: z[single] for name, z in all_logits.items()}
    if not kept:
        none = dict.fromkeys(("uncalibrated", "calibrated", "accuracy", "macro_f1", "macro_auroc"))
        return result | none, np.zeros(0, np.int64), np.zeros((0, len(names)))
    logits = all_logits["clean"]
    labels = np.array([r.label for r in kept], dtype=np.int64)
    calibrated = softmax(logits, temperature)
    result |= {
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
    if audit:
        result["audit"] = shortcut_audit(all_logits, kept, names, temperature)
    result.update(conformal_results(predictor, calibrated, labels, [r.source for r in kept]))
    if predictor.segmenter is not None:
        segmenter = predictor.segmenter.description
        predicted = logits.argmax(axis=1)
        result["lung_share"] = lung_share_section(lungs, kept, predicted, names, segmenter)
    return result, labels, calibrated


def label_set_section(
    records: Sequence[ImageRecord], probabilities: np.ndarray, label_names: list[str]
) -> dict[str, Any]:
    """The ``label_sets`` section: ``label_set_metrics`` of the label-set images (calibrated
    probabilities) overall, per view (the manifest's ``view``; "unknown" when not given) and
    per source, with how many images carry each set."""
    allowed = allowed_mask(list(records), len(label_names))
    views = np.array([r.view or "unknown" for r in records])
    sources = np.array([r.source or "unknown" for r in records])

    def per(groups: np.ndarray) -> dict[str, dict[str, Any]]:
        return {
            group: label_set_metrics(
                allowed[groups == group], probabilities[groups == group], label_names
            )
            for group in sorted(set(groups.tolist()))
        }

    sets = Counter(" or ".join(label_names[k] for k in r.allowed) for r in records)
    return {
        "description": "images labelled with a set of classes (a Pneumonia folder: either "
        "pneumonia class); right when the top class is in the set; set_probability: the "
        "calibrated probabilities summed over the set",
        "sets": dict(sorted(sets.items())),
        **label_set_metrics(allowed, probabilities, label_names),
        "per_view": per(views),
        "per_source": per(sources),
    }


def format_label_sets(section: dict[str, Any]) -> str:
    """One line: n, accuracy and mean set probability overall, accuracy per view, and the
    classes they are called (shares of 5 % and more)."""
    views = ", ".join(
        f"{v} {b['accuracy']:.2f} (n={b['n']})" for v, b in section["per_view"].items()
    )
    called = ", ".join(
        f"{name} {share:.0%}" for name, share in section["called"].items() if share >= 0.05
    )
    return (
        f"Label sets ({', '.join(section['sets'])}): n={section['n']}, top class in the set "
        f"{section['accuracy']:.3f}, mean p(set) {section['set_probability']:.3f}; "
        f"per view {views}; called {called}"
    )


def conformal_results(
    predictor: Predictor, calibrated: np.ndarray, labels: np.ndarray, sources: list[str]
) -> dict[str, Any]:
    """``conformal`` (coverage of the checkpoint's own sets, when it has them) and
    ``conformal_curve`` (coverage against α on random halves, from 4 images up)."""
    sets = predictor.config.conformal
    found: dict[str, Any] = {}
    if sets is not None:
        names = predictor.config.label_names
        found["conformal"] = coverage_report(calibrated, labels, sets, names, sources)
    if len(labels) >= 4:
        found["conformal_curve"] = coverage_curve(
            calibrated, labels, sets.method if sets else "lac"
        )
    return found


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


def check_folders(data: Sequence[str], split: str | None) -> list[ImageRecord]:
    """Records of every ``--data`` folder (its ``--split`` subfolder if given).

    Raises ``ValueError`` naming the first folder that is missing, a file, empty, or holds no
    class folders (with a hint when it is a split root and ``--split`` was left out).
    """
    for item in data:
        folder = resolve_folder(item, split)
        if not split and any((folder / name).is_dir() for name in ("train", "val", "test")):
            raise ValueError(f"{item!r} is a split root (train/ val/ test/); add --split test")
        if folder.is_dir() and not any(folder.iterdir()):
            raise ValueError(f"data folder {str(folder)!r} is empty")
    try:
        return scan_folders(data, split, all_classes=False)
    except OSError as err:  # missing folder, or a file given as one
        raise ValueError(str(err)) from None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="folders of class folders, or split roots with --split; several are merged, each "
        "folder's manifest.csv naming the sources (else the folder is one source)",
    )
    parser.add_argument("--split", default=None, help="e.g. test, when --data are split roots")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="skip the shortcut audit (border-only / centre-only / equalised images)",
    )
    args = parser.parse_args(argv)
    try:
        records = check_folders(args.data, args.split)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.load(args.model, args.device)
    try:
        result, labels, probabilities = evaluate(predictor, records, audit=not args.no_audit)
    except NothingToScore as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    result["data"] = [str(resolve_folder(d, args.split)) for d in args.data]
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    names = predictor.config.label_names
    if len(labels):
        save_plots(labels, probabilities, names, out)
    if "audit" in result:
        save_audit_plots(result["audit"], names, out)
        print(format_audit(result["audit"], names))
    if "lung_share" in result:
        save_lung_share_plot(result["lung_share"], out)
        print(format_lung_share(result["lung_share"]))
    if "conformal_curve" in result:
        save_coverage_plot(result["conformal_curve"], result.get("conformal"), out)
    if "label_sets" in result:
        print(format_label_sets(result["label_sets"]))
    if result["calibrated"] is None:
        log.info("no single-label images: only label_sets; wrote %s", out / "metrics.json")
        return
    print(format_report(result["conformal"]) if "conformal" in result else NO_SETS)
    log.info(
        "accuracy %.3f, macro-F1 %s, macro AUROC %s, ECE %.3f → %.3f; wrote %s",
        result["accuracy"],
        _fmt(result["macro_f1"]),
        _fmt(result["macro_auroc"]),
        result["uncalibrated"]["ece"],
        result["calibrated"]["ece"],
        out / "metrics.json",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
