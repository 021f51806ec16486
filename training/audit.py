"""Shortcut audit: does the model read the lungs, or the source (borders, text marks, contrast)?

Every test image is scored four times through the same ``Predictor`` as clean images (its
decoding, transform, calibration and any later preprocessing apply):

- ``clean``: unedited;
- ``border_only``: the central box (70 % of width and of height) replaced by the image's mean,
  so only borders, corners and burnt-in text remain;
- ``centre_only``: everything outside that box replaced by the image's mean;
- ``equalised``: histogram-equalised (``cv2.equalizeHist``), removing a source's typical
  exposure and contrast.

A model that keeps its accuracy on ``border_only`` has learned where an image comes from,
not what it shows (DeGrave et al., "AI for radiographic COVID-19 detection selects shortcuts
over signal", Nature Machine Intelligence 2021). Results are per source and class, with, for
every source, the share of its images called each class ("adult normals → COVID-19").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from imaging.load import decoded_batches
from model.predictor import Predictor
from training.calibrate import softmax
from training.data import ImageRecord

CENTRE_FRACTION = 0.7


def central_box(shape: tuple[int, ...], fraction: float = CENTRE_FRACTION) -> tuple[slice, slice]:
    """(rows, columns) of the centred box covering ``fraction`` of the height and the width.

    A 10 × 10 image with 0.7 → rows 1:8, columns 1:8 (7 px each; the odd pixel goes below/right).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    height, width = shape[:2]
    box_h, box_w = int(height * fraction + 0.5), int(width * fraction + 0.5)
    top, left = (height - box_h) // 2, (width - box_w) // 2
    return slice(top, top + box_h), slice(left, left + box_w)


def _check_gray(pixels: np.ndarray) -> None:
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected a (H, W) uint8 grayscale array; got shape {pixels.shape}, {pixels.dtype}"
        )


def _image_mean(pixels: np.ndarray) -> np.uint8:
    return np.uint8(np.clip(np.rint(pixels.mean()), 0, 255))


def border_only(pixels: np.ndarray, fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """A copy with the central box replaced by the whole image's mean (rounded)."""
    _check_gray(pixels)
    out = pixels.copy()
    out[central_box(pixels.shape, fraction)] = _image_mean(pixels)
    return out


def centre_only(pixels: np.ndarray, fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """A copy with everything outside the central box replaced by the whole image's mean."""
    _check_gray(pixels)
    out = np.full_like(pixels, _image_mean(pixels))
    box = central_box(pixels.shape, fraction)
    out[box] = pixels[box]
    return out


def equalised(pixels: np.ndarray) -> np.ndarray:
    """Histogram equalisation (``cv2.equalizeHist``)."""
    _check_gray(pixels)
    return cv2.equalizeHist(pixels)


def clean(pixels: np.ndarray) -> np.ndarray:
    """The image unchanged (the reference variant)."""
    return pixels


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": clean,
    "border_only": border_only,
    "centre_only": centre_only,
    "equalised": equalised,
}


def predict_variants(
    predictor: Predictor,
    records: Sequence[ImageRecord],
    variants: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    batch_size: int = 16,
    lungs: list[tuple[bool | None, float | None]] | None = None,
) -> tuple[dict[str, np.ndarray], list[ImageRecord], list[str]]:
    """Logits of every readable record under every edit, all through ``predict_many``.

    Each file is decoded once; each edit of its pixels is a ``LoadedImage`` like the upload,
    so the predictor's own preprocessing applies. Unreadable files are listed, not fatal.
    ``lungs``, when given, gets each kept record's (lung fields found — None without a
    segmenter —, on-lung share of the predicted class's heatmap) from the first variant.
    """
    by_path = {record.path: record for record in records}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    kept: list[ImageRecord] = []
    failed: list[tuple[Path, str]] = []
    batches = decoded_batches(list(by_path), batch_size, failed)
    total = -(-len(by_path) // batch_size)
    for batch in tqdm(batches, total=total, desc="evaluate", disable=None):
        images = [image for _, image in batch]
        for i, (name, edit) in enumerate(variants.items()):
            edited = [dataclasses.replace(im, pixels=edit(im.pixels)) for im in images]
            predictions = predictor.predict_many(edited)
            logits[name].extend(p.logits for p in predictions)
            if lungs is not None and i == 0:
                lungs.extend(
                    (None if p.lungs is None else p.lungs.found, p.lung_share(p.top_index))
                    for p in predictions
                )
        kept.extend(by_path[path] for path, _ in batch)
    classes = len(predictor.config.label_names)
    arrays = {k: np.array(v).reshape(len(kept), classes) for k, v in logits.items()}
    return arrays, kept, [f"{path}: {reason}" for path, reason in failed]


def _auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest AUROC, or ``None`` without both positives and negatives."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def breakdown(
    labels: np.ndarray, probabilities: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro AUROC, per-class accuracy/AUROC and call shares for one group.

    Per class present: ``accuracy`` is the share of its images called that class, ``auroc``
    one-vs-rest within the group (``None`` when the group has no images of other classes).
    ``macro_auroc`` averages the defined AUROCs (``None`` if none is). ``called`` is the share
    of the group's images the model calls each class.
    """
    predicted = probabilities.argmax(axis=1)
    classes: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(label_names):
        is_k = labels == k
        if is_k.any():
            classes[name] = {
                "n": int(is_k.sum()),
                "accuracy": float((predicted[is_k] == k).mean()),
                "auroc": _auroc(is_k, probabilities[:, k]),
            }
    aurocs = [c["auroc"] for c in classes.values() if c["auroc"] is not None]
    called = np.bincount(predicted, minlength=len(label_names)) / max(len(labels), 1)
    return {
        "n": len(labels),
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "classes": classes,
        "called": {name: float(share) for name, share in zip(label_names, called, strict=True)},
    }


def shortcut_audit(
    logits: Mapping[str, np.ndarray],
    records: Sequence[ImageRecord],
    label_names: Sequence[str],
    temperature: float = 1.0,
    fraction: float = CENTRE_FRACTION,
) -> dict[str, Any]:
    """The ``audit`` section of metrics.json from per-variant logits of ``records``.

    ``overall[variant]`` and ``per_source[source][variant]`` are ``breakdown``s of the
    calibrated probabilities (softmax(logits / temperature)).
    """
    labels = np.array([r.label for r in records], dtype=np.int64)
    sources = np.array([r.source or "unknown" for r in records])
    probabilities = {name: softmax(z, temperature) for name, z in logits.items()}
    return {
        "centre_fraction": fraction,
        "variants": {name: _describe(name, fraction) for name in logits},
        "overall": {name: breakdown(labels, p, label_names) for name, p in probabilities.items()},
        "per_source": {
            source: {
                name: breakdown(labels[sources == source], p[sources == source], label_names)
                for name, p in probabilities.items()
            }
            for source in sorted(set(sources.tolist()))
        },
    }


def _describe(variant: str, fraction: float) -> str:
    box = f"the central box ({fraction:.0%} of width and height)"
    return {
        "clean": "unedited",
        "border_only": f"{box} replaced by the image's mean",
        "centre_only": f"everything outside {box} replaced by the image's mean",
        "equalised": "histogram-equalised (cv2.equalizeHist)",
    }.get(variant, variant)


def _cell(block: Mapping[str, Any]) -> str:
    accuracy, auroc = block.get("accuracy"), block.get("auroc", block.get("macro_auroc"))
    acc = "  -  " if accuracy is None else f"{accuracy:.3f}"
    return f"{acc} ({'  -  ' if auroc is None else f'{auroc:.3f}'})"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_audit(audit: Mapping[str, Any], label_names: Sequence[str], width: int = 34) -> str:
    """A compact table: accuracy (AUROC) per source and class under each edit, then for each
    source the share of its clean images called each class."""
    variants = list(audit["overall"])
    head = f"{'':<{width}} {'n':>5}  " + "  ".join(f"{v:<13}" for v in variants)
    lines = [
        "Shortcut audit: accuracy (AUROC); central box "
        f"{audit['centre_fraction']:.0%} of width and height",
        head,
    ]

    def row(name: str, blocks: Sequence[Mapping[str, Any]], n: int) -> str:
        return f"{_short(name, width):<{width}} {n:>5}  " + "  ".join(
            f"{_cell(b):<13}" for b in blocks
        )

    lines.append(
        row(
            "all sources",
            [audit["overall"][v] for v in variants],
            audit["overall"][variants[0]]["n"],
        )
    )
    for source, per_variant in audit["per_source"].items():
        first = per_variant[variants[0]]
        lines.append(row(source, [per_variant[v] for v in variants], first["n"]))
        for name, cls in first["classes"].items():
            blocks = [per_variant[v]["classes"][name] for v in variants]
            lines.append(row("  " + name, blocks, cls["n"]))
    reference = "clean" if "clean" in variants else variants[0]
    short = [_short(n, 9) for n in label_names]
    lines += [
        "",
        f"Called ({reference}): share of each source's images per predicted class",
        f"{'':<{width}} {'n':>5}  " + " ".join(f"{n:>9}" for n in short),
    ]
    for source, per_variant in audit["per_source"].items():
        block = per_variant[reference]
        truth = "/".join(block["classes"])
        shares = " ".join(f"{block['called'][n]:>9.2f}" for n in label_names)
        lines.append(f"{_short(f'{source} [{truth}]', width):<{width}} {block['n']:>5}  {shares}")
    return "\n".join(lines)


def save_audit_plots(audit: Mapping[str, Any], label_names: Sequence[str], out: Path) -> None:
    """``audit_accuracy.png`` (accuracy per source under each edit) and ``audit_calls.png``
    (share of each source's clean images called each class)."""
    variants = list(audit["overall"])
    groups = {"all sources": audit["overall"], **audit["per_source"]}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [g[variant]["accuracy"] or 0 for g in groups.values()]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=variant)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([_short(g, 24) for g in groups], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Shortcut audit (central box {audit['centre_fraction']:.0%})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "audit_accuracy.png", dpi=120)
    plt.close(fig)

    reference = "clean" if "clean" in variants else variants[0]
    sources = list(audit["per_source"])
    shares = np.array(
        [[audit["per_source"][s][reference]["called"][n] for n in label_names] for s in sources]
    ).reshape(len(sources), len(label_names))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.5 * max(len(sources), 1)))
    ax.imshow(shares, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for (i, j), value in np.ndenumerate(shares):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="white" if value > 0.5 else "black",
            fontsize=8,
        )
    ax.set_xticks(range(len(label_names)), label_names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(sources)), [_short(s, 40) for s in sources], fontsize=8)
    ax.set_title(f"Share of each source's images called each class ({reference})")
    fig.tight_layout()
    fig.savefig(out / "audit_calls.png", dpi=120)
    plt.close(fig)
