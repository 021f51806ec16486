"""``python -m training.localize``'s results: each film's scores, localization.json's groups, the
summary it prints and its figures (bars per class, the best and worst films)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from explain import localization as loc
from model.crop import CropBox
from training.lesions import Film

PRIOR = "baseline: location prior"
TITLES = {
    "hit": "pointing game (hit)",
    "energy": "energy in the boxes",
    "iou_otsu": "IoU, Otsu threshold",
    "iou_top20": "IoU, top 20 % area",
}


@dataclass
class Scored:
    """One film's result: its classes, crop, every map's scores and a thumbnail for the grid."""

    film: Film
    annotated: str
    top: str
    crop: CropBox
    scores: dict[str, dict[str, float]]  # map name → measures against all the film's boxes
    findings: dict[str, dict[str, dict[str, float]]]  # finding → map → measures, its boxes only
    film_size: tuple[int, int]  # (W, H)
    thumb: np.ndarray  # the film at ≤ THUMB_SIDE a side
    thumb_heat: np.ndarray  # the first map at the thumbnail's size
    peak: tuple[float, float]  # the first map's maximum, 0–1 of the film's (x, y)


def film_record(scored: Scored) -> dict[str, Any]:
    """One film in localization.json: who it is, its classes, its scores and lifts."""
    prior = scored.scores[PRIOR]
    return {
        "image": str(scored.film.path),
        "label": scored.film.label,
        "annotated_class": scored.annotated,
        "top_class": scored.top,
        "source": scored.film.source,
        "findings": list(scored.findings),
        "size": list(scored.film_size),
        "crop_box": [scored.crop.x0, scored.crop.y0, scored.crop.x1, scored.crop.y1],
        "first_map_peak": [round(v, 4) for v in scored.peak],
        "scores": scored.scores,
        "lift_over_prior": {
            name: {m: s[m] - prior[m] for m in loc.MEASURES}
            for name, s in scored.scores.items()
            if name != PRIOR
        },
    }


def build_report(scored: Sequence[Scored], resamples: int) -> dict[str, Any]:
    """Overall, per class, per source and per finding: ``explain.localization.group_report``."""

    def grouped(key: str) -> dict[str, Any]:
        names = sorted({getattr(s.film, key) for s in scored})
        return {
            name: loc.group_report(
                [s.scores for s in scored if getattr(s.film, key) == name], PRIOR, resamples
            )
            for name in names
        }

    findings = sorted({f for s in scored for f in s.findings})
    return {
        "overall": loc.group_report([s.scores for s in scored], PRIOR, resamples),
        "per_class": grouped("label"),
        "per_source": grouped("source"),
        "per_finding": {
            f: loc.group_report(
                [s.findings[f] for s in scored if f in s.findings], PRIOR, resamples
            )
            for f in findings
        },
        "per_film": [film_record(s) for s in scored],
    }


def format_summary(report: dict[str, Any]) -> str:
    """Per class: each map's hit and energy, mean [95 % interval], n films."""
    lines = []
    for label, maps in report["per_class"].items():
        n = next(iter(maps.values()))["scores"]["hit"]["n"]
        lines.append(f"{label} (n={n})   hit [95 % CI]          energy [95 % CI]")
        for name, block in maps.items():
            cells = [block["scores"][m] for m in ("hit", "energy")]
            text = "  ".join(
                f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]" for c in cells
            )
            lines.append(f"  {name[:44]:<44} {text}")
    return "\n".join(lines)


def save_bar_plot(report: Mapping[str, Any], target: Path) -> Path:
    """One row per class, one panel per measure: each map's mean with its 95 % interval, the
    baselines in grey and the location prior's mean as a dashed line."""
    classes = report["per_class"]
    names, prior = list(report["maps"]), report["prior"]["map"]
    height = 0.8 + 0.22 * len(names)
    fig, axes = plt.subplots(
        len(classes), len(loc.MEASURES), figsize=(18, height * len(classes)), squeeze=False
    )
    for row, (label, maps) in zip(axes, classes.items(), strict=True):
        for ax, measure in zip(row, loc.MEASURES, strict=True):
            cells = [maps[name]["scores"][measure] for name in names]
            means = [c["mean"] for c in cells]
            errors = [
                [c["mean"] - c["ci95"][0] for c in cells],
                [c["ci95"][1] - c["mean"] for c in cells],
            ]
            colours = ["0.6" if name.startswith("baseline") else "C0" for name in names]
            ax.barh(range(len(names)), means, xerr=errors, color=colours, capsize=2)
            ax.axvline(maps[prior]["scores"][measure]["mean"], color="k", ls="--")
            ax.set_yticks(
                range(len(names)), names if measure == loc.MEASURES[0] else [], fontsize=7
            )
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_title(f"{label} (n={cells[0]['n']}): {TITLES[measure]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def save_grid(scored: Sequence[Scored], target: Path, count: int) -> Path:
    """Top row: the ``count`` films where the first map puts the most energy in the boxes;
    bottom row: the least. Each shows the map over the film, the boxes (green) and the map's
    maximum (cyan cross)."""
    first = next(iter(scored[0].scores))
    ranked = sorted(scored, key=lambda s: s.scores[first]["energy"], reverse=True)
    count = min(count, max(1, len(ranked) // 2))
    rows = [("best", ranked[:count]), ("worst", ranked[::-1][:count])]
    fig, axes = plt.subplots(2, count, figsize=(3.2 * count, 7), squeeze=False)
    for ax_row, (title, films) in zip(axes, rows, strict=True):
        for ax, item in zip(ax_row, films, strict=True):
            draw_film(ax, item, first, title)
    fig.suptitle(f"{first}: most and least energy in the expert boxes", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def draw_film(ax: plt.Axes, item: Scored, first: str, title: str) -> None:
    """One film's thumbnail with the first map, its boxes and the map's maximum."""
    height, width = item.thumb.shape
    scale_x = width / item.film_size[0]
    scale_y = height / item.film_size[1]
    ax.imshow(item.thumb, cmap="gray")
    ax.imshow(item.thumb_heat, cmap="inferno", alpha=0.45, vmin=0, vmax=1)
    for x0, y0, x1, y1 in item.film.corners:
        corner = (x0 * scale_x, y0 * scale_y)
        size = ((x1 - x0) * scale_x, (y1 - y0) * scale_y)
        ax.add_patch(Rectangle(corner, *size, fill=False, edgecolor="lime", linewidth=1.2))
    ax.plot(item.peak[0] * width, item.peak[1] * height, "x", color="cyan", ms=10, mew=2)
    score = item.scores[first]
    ax.set_title(
        f"{title}: {item.film.label}\n{item.film.path.stem[:26]}\n"
        f"hit {score['hit']:.2f} · energy {score['energy']:.2f}",
        fontsize=7,
    )
    ax.axis("off")
