"""The ``lung_share`` section of metrics.json: how much of the predicted class's heatmap lies on
the lung fields, overall, per true class, per predicted class and per source.

A model that reads the lungs puts most of its Grad-CAM energy on them; one that learned a
source's borders, side markers or devices puts it elsewhere (the shortcut audit,
``training.audit``, asks the same question by blanking parts of the image). The figure per
image is ``Prediction.lung_share(top_index)``; images where the segmenter found no lung fields
are counted, not scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from model.lung_share import LOW_LUNG_SHARE
from training.data import ImageRecord

BINS = 10  # histogram bins of width 0.1 over [0, 1]


def share_block(found: Sequence[bool], shares: Sequence[float | None]) -> dict[str, Any]:
    """n, how many had lung fields, mean, quartiles, the share below ``LOW_LUNG_SHARE`` and a
    10-bin histogram of the on-lung shares of one group (None where nothing was scored)."""
    values = np.array([s for s in shares if s is not None], dtype=np.float64)
    scored = len(values) > 0
    return {
        "n": len(found),
        "lungs_found": int(sum(bool(f) for f in found)),
        "mean": float(values.mean()) if scored else None,
        "quartiles": [float(q) for q in np.quantile(values, [0.25, 0.5, 0.75])] if scored else None,
        "below_low_share": float((values < LOW_LUNG_SHARE).mean()) if scored else None,
        "histogram": np.histogram(values, bins=BINS, range=(0.0, 1.0))[0].tolist(),
    }


def lung_share_section(
    lungs: Sequence[tuple[bool | None, float | None]],
    records: Sequence[ImageRecord],
    predicted: np.ndarray,
    label_names: Sequence[str],
    segmenter: str | None = None,
) -> dict[str, Any]:
    """metrics.json's ``lung_share``: ``share_block``s overall and per group.

    ``lungs`` holds (found, share of the predicted class's heatmap) per record, as
    ``training.audit.predict_variants(..., lungs=...)`` collects them; ``predicted`` the
    predicted class indices.
    """
    if not len(lungs) == len(records) == len(predicted):
        raise ValueError(
            f"{len(lungs)} lung results, {len(records)} records and {len(predicted)} "
            "predictions: one each per image expected"
        )
    found = [bool(f) for f, _ in lungs]
    shares = [s for _, s in lungs]

    def grouped(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {
            key: share_block(
                [f for f, k in zip(found, keys, strict=True) if k == key],
                [s for s, k in zip(shares, keys, strict=True) if k == key],
            )
            for key in dict.fromkeys(sorted(keys))
        }

    return {
        "description": "share of the predicted class's Grad-CAM energy on the lung fields",
        "segmenter": segmenter,
        "low_share": LOW_LUNG_SHARE,
        "histogram_bins": np.linspace(0.0, 1.0, BINS + 1).round(2).tolist(),
        "overall": share_block(found, shares),
        "per_class": grouped([label_names[r.label] for r in records]),
        "per_predicted_class": grouped([label_names[int(k)] for k in predicted]),
        "per_source": grouped([r.source or "unknown" for r in records]),
    }


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.2f}"


def format_lung_share(section: Mapping[str, Any], width: int = 34) -> str:
    """A compact table: n, lungs found, mean and quartiles of the share, share below the bar."""
    head = f"{'':<{width}} {'n':>5} {'found':>5}  {'mean':>5}  {'q25':>5} {'median':>6} {'q75':>5}"
    lines = [
        "Heatmap on the lungs (predicted class's Grad-CAM energy on the lung fields); "
        f"< {section['low_share']:.0%} = mostly outside",
        head + f"  {'< ' + format(section['low_share'], '.0%'):>6}",
    ]

    def row(name: str, block: Mapping[str, Any]) -> str:
        q = block["quartiles"] or [None] * 3
        name = name if len(name) <= width else name[: width - 1] + "…"
        return (
            f"{name:<{width}} {block['n']:>5} {block['lungs_found']:>5}  {_fmt(block['mean']):>5}"
            f"  {_fmt(q[0]):>5} {_fmt(q[1]):>6} {_fmt(q[2]):>5}"
            f"  {_fmt(block['below_low_share']):>6}"
        )

    lines.append(row("all images", section["overall"]))
    for title, key in (("by class", "per_class"), ("by source", "per_source")):
        lines.append(title)
        lines += [row("  " + name, block) for name, block in section[key].items()]
    return "\n".join(lines)


def save_lung_share_plot(section: Mapping[str, Any], out: Path) -> Path:
    """``lung_share.png``: the histogram of shares per class and per source (stacked rows)."""
    groups = [("class", section["per_class"]), ("source", section["per_source"])]
    edges = np.asarray(section["histogram_bins"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, (title, blocks) in zip(axes, groups, strict=True):
        for name, block in blocks.items():
            counts = np.asarray(block["histogram"], dtype=np.float64)
            if counts.sum():
                label = f"{name[:28]} (n={int(counts.sum())}, mean {_fmt(block['mean'])})"
                ax.plot(centres, counts / counts.sum(), "o-", label=label)
        ax.axvline(section["low_share"], color="k", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the predicted class's heatmap on the lungs")
        ax.set_ylabel("fraction of images")
        ax.set_title(f"Heatmap on the lungs, by {title}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    target = out / "lung_share.png"
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target
