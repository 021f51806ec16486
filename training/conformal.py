"""Fitting and measuring split conformal prediction sets (offline; serving is ``model.conformal``).

    conformal = fit_conformal(val_probabilities, val_labels, alpha=0.1, split="val")
    report = coverage_report(test_probabilities, test_labels, conformal, names, sources)

Fitting is a sort and one order statistic (``model.conformal.conformal_threshold``), so it is
implemented here rather than taken from a library: MAPIE wants an estimator to wrap, and both
MAPIE and crepes keep every calibration score inside a fitted object, whereas a checkpoint
needs one number in its ``config.json`` and the served app no extra dependency.
``tests/test_conformal.py`` checks our sets against crepes' ``ConformalClassifier``
(Boström, "crepes: a Python package for generating conformal regressors and predictive
systems", COPA 2022) on the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from model.conformal import (
    DEFAULT_ALPHA,
    DEFAULT_METHOD,
    ConformalConfig,
    check_alpha,
    conformal_threshold,
    prediction_sets,
    true_class_scores,
)

CURVE_ALPHAS = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
CURVE_REPEATS = 50


def fit_conformal(
    probabilities: np.ndarray,
    labels: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    method: str = DEFAULT_METHOD,
    split: str = "val",
) -> ConformalConfig:
    """The conformal section for calibrated (N, K) ``probabilities`` with (N,) true ``labels``
    of the calibration ``split`` (never the split coverage is measured on)."""
    alpha = check_alpha(alpha)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no calibration images to fit the conformal threshold on")
    scores = true_class_scores(probabilities, labels, method)
    threshold = conformal_threshold(scores, alpha)
    return ConformalConfig(method, alpha, threshold, split, len(labels))


def _block(labels: np.ndarray, member: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    if n == 0:
        return {"n": 0, "coverage": None, "mean_size": None, "uncertain_share": None}
    sizes = member[mask].sum(axis=1)
    covered = member[mask][np.arange(n), labels[mask]]
    return {
        "n": n,
        "coverage": float(covered.mean()),
        "mean_size": float(sizes.mean()),
        "uncertain_share": float((sizes > 1).mean()),
    }


def coverage_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    conformal: ConformalConfig,
    label_names: Sequence[str],
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Empirical coverage and set size of ``conformal``'s sets: overall, per true class and
    per source (a class or source without images has ``n = 0`` and nulls)."""
    labels = np.asarray(labels, dtype=np.int64)
    member = conformal.sets(probabilities)
    everything = np.ones(len(labels), dtype=bool)
    sizes = member.sum(axis=1)
    report: dict[str, Any] = {
        **conformal.to_dict(),
        "nominal": 1 - conformal.alpha,
        "overall": _block(labels, member, everything),
        "set_sizes": {str(k): int((sizes == k).sum()) for k in range(1, len(label_names) + 1)},
        "per_class": {
            name: _block(labels, member, labels == k) for k, name in enumerate(label_names)
        },
    }
    if sources is not None:
        tags = np.asarray(sources)
        report["per_source"] = {
            source: _block(labels, member, tags == source) for source in sorted(set(sources))
        }
    return report


def coverage_curve(
    probabilities: np.ndarray,
    labels: np.ndarray,
    method: str = DEFAULT_METHOD,
    alphas: Sequence[float] = CURVE_ALPHAS,
    repeats: int = CURVE_REPEATS,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Coverage and mean set size against α, each the mean over ``repeats`` random halves:
    fit on one half, measure on the other (exchangeable halves of the same split)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < 4:
        raise ValueError(f"need at least 4 images for a coverage curve; got {len(labels)}")
    rng = np.random.default_rng(seed)
    scores = true_class_scores(probabilities, labels, method)
    coverage = np.zeros((repeats, len(alphas)))
    size = np.zeros_like(coverage)
    for r in range(repeats):
        order = rng.permutation(len(labels))
        fit, test = order[: len(order) // 2], order[len(order) // 2 :]
        for j, alpha in enumerate(alphas):
            threshold = conformal_threshold(scores[fit], alpha)
            member = prediction_sets(probabilities[test], threshold, method)
            coverage[r, j] = member[np.arange(len(test)), labels[test]].mean()
            size[r, j] = member.sum(axis=1).mean()
    return {
        "alpha": [float(a) for a in alphas],
        "coverage": coverage.mean(axis=0).tolist(),
        "mean_size": size.mean(axis=0).tolist(),
        "repeats": repeats,
    }


def save_coverage_plot(
    curve: dict[str, Any], report: dict[str, Any] | None, out: Path, title: str = ""
) -> Path:
    """coverage_vs_alpha.png: empirical against nominal coverage (left) and mean set size
    (right), with the checkpoint's own threshold as a marked point when it has one."""
    alphas = np.asarray(curve["alpha"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(alphas, 1 - alphas, "k--", lw=0.8, label="nominal 1 − α")
    left.plot(alphas, curve["coverage"], "o-", label=f"random halves (×{curve['repeats']})")
    right.plot(alphas, curve["mean_size"], "o-")
    if report is not None:
        left.plot(
            report["alpha"],
            report["overall"]["coverage"],
            "r*",
            ms=12,
            label=f"checkpoint threshold (fit on {report['split']})",
        )
        right.plot(report["alpha"], report["overall"]["mean_size"], "r*", ms=12)
    left.set_xlabel("α")
    left.set_ylabel("empirical coverage")
    left.legend()
    right.set_xlabel("α")
    right.set_ylabel("mean set size")
    fig.suptitle(title or "Conformal prediction sets: coverage and size against α")
    fig.tight_layout()
    target = out / "coverage_vs_alpha.png"
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the log: overall, then per class and per source."""
    lines = [
        f"Conformal {report['method']} sets, α = {report['alpha']:g} "
        f"(fit on {report['split']}, n = {report['n']}, threshold {report['threshold']:.4f})"
    ]
    for title, blocks in (
        ("overall", {"all": report["overall"]}),
        ("per class", report["per_class"]),
        ("per source", report.get("per_source", {})),
    ):
        lines.append(f"  {title}:")
        for name, block in blocks.items():
            if block["n"]:
                lines.append(
                    f"    {name}: n {block['n']}, coverage {block['coverage']:.3f}, "
                    f"mean size {block['mean_size']:.2f}, uncertain {block['uncertain_share']:.1%}"
                )
            else:
                lines.append(f"    {name}: no images")
    return "\n".join(lines)
