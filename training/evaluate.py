"""Measure a checkpoint on labelled class folders: metrics.json plus plots.

    python -m training.evaluate --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --split test --out DIR

Everything goes through ``Predictor`` (the same decoding, transform and calibration as the
app). A folder may hold only some of the five class folders; what needs the absent classes is
null. Each folder's ``manifest.csv`` names the sources (a folder without one is one source
named after it); on lung5 each class comes mostly from one source, so the sections below are
also given per source:

- ``uncalibrated`` and ``calibrated``: the metrics before (T = 1) and after temperature
  scaling, per class (``confusion_matrix.png``, ``roc_curves.png``, ``reliability.png``);
- ``audit``, the shortcut audit (``training.audit``; ``--no-audit`` skips it): every image
  scored again with its centre or its border blanked and histogram-equalised;
- ``conformal``, with a conformal section in the checkpoint (``python -m training.calibrate``):
  the empirical coverage and mean set size, overall and per class; ``conformal_curve``
  (``coverage_vs_alpha.png``): coverage and set size against α, fitted on random halves of
  the evaluated images (docs/UNCERTAINTY.md);
- ``lung_share``, with the lung segmenter loaded (``training.lung_share``): how much of the
  predicted class's heatmap lies on the lung fields, per class (``lung_share.png``).

These score the images with one true class. Those of a label set (a ``Pneumonia`` folder, e.g.
``../shared/data/adult-extra``) are scored apart in ``label_sets`` (``training.label_sets``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explain.verdict import NO_SETS
from model.predictor import Predictor
from training.audit import (
    VARIANTS,
    format_audit,
    predict_variants,
    save_audit_plots,
    shortcut_audit,
)
from training.calibrate import softmax
from training.classification_plots import save_plots
from training.conformal import (
    coverage_curve,
    coverage_report,
    format_report,
    save_coverage_plot,
)
from training.data import ImageRecord
from training.label_sets import format_label_sets, label_set_section
from training.lung_share import format_lung_share, lung_share_section, save_lung_share_plot
from training.metrics import binary_auroc, classification_metrics
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
    if any(r.source for r in kept):
        result["per_source"] = per_source(kept, labels, calibrated, names)
    if audit:
        result["audit"] = shortcut_audit(all_logits, kept, names, temperature)
    result.update(conformal_results(predictor, calibrated, labels, [r.source for r in kept]))
    if predictor.segmenter is not None:
        segmenter = predictor.segmenter.description
        predicted = logits.argmax(axis=1)
        result["lung_share"] = lung_share_section(lungs, kept, predicted, names, segmenter)
    return result, labels, calibrated


def per_source(
    records: Sequence[ImageRecord],
    labels: np.ndarray,
    probabilities: np.ndarray,
    label_names: list[str],
) -> dict[str, dict[str, Any]]:
    """The ``per_source`` section: n, accuracy, macro AUROC and ECE of each source's images,
    and the sensitivity of each class it holds (a macro-F1 over absent classes would mislead)."""
    section = {}
    for source in sorted({r.source for r in records if r.source}):
        mask = np.array([r.source == source for r in records])
        part = classification_metrics(labels[mask], probabilities[mask], label_names)
        present = {n: c for n, c in part["per_class"].items() if c["support"]}
        section[source] = {key: part[key] for key in ("n", "accuracy", "macro_auroc", "ece")} | {
            "classes": {
                n: {"n": c["support"], "sensitivity": c["sensitivity"]} for n, c in present.items()
            }
        }
    return section


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
    """``python -m training.evaluate``: metrics.json, plots and a summary; a bad folder or one
    without a readable image ends in one line and exit status 2."""
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
