"""Fit and measure the not-a-chest-X-ray guard (``model.ood``) offline, on a data folder.

``fit`` puts PCA + tied-covariance class Gaussians on the train split's pooled features (the
classifier's, and the lung segmenter's of the whole image) and sets the thresholds on the
validation split; ``measure`` (``training.ood_measure``) reports the warn rates on a split's
chest X-rays (per data folder) and on images that are not chest X-rays, as the app computes
them, and how each candidate ``NO_LUNGS_SCORE`` would change them::

    python -m training.ood_fit fit --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --max-per-class 300
    python -m training.ood_fit measure --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --details guard.csv
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.config import CONFIG_FILE, ModelConfig
from model.ood import DEFAULT_COMPONENTS, DEFAULT_QUANTILE, FeatureStats
from model.predictor import Predictor
from training.data import subsample
from training.ood_measure import measure, predict_paths
from training.sources import load_folders

MIN_SOURCE_IMAGES = 50  # calibration images a source needs to set its own threshold


def fit_feature_stats(
    train: np.ndarray,
    labels: np.ndarray,
    calibration: np.ndarray,
    components: int = DEFAULT_COMPONENTS,
    quantile: float = DEFAULT_QUANTILE,
    groups: Sequence[str] | None = None,
) -> FeatureStats:
    """Fit PCA + tied-covariance class Gaussians on ``train`` (N, D) features with ``labels``;
    set both thresholds at ``quantile`` of the held-out ``calibration`` features' scores.

    With ``groups`` (the source of each calibration image) each threshold is the highest of
    the pooled quantile and the quantiles of the sources with at least ``MIN_SOURCE_IMAGES``
    images, so no such source's chest X-rays are warned about more often than
    ``1 - quantile`` (in calibration) just because it is rarer than the others.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1); got {quantile}")
    train = train.astype(np.float64)
    components = min(components, train.shape[0] - 1, train.shape[1])
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:components]
    projected = (train - mean) @ basis.T
    classes = np.unique(labels)
    class_means = np.stack([projected[labels == c].mean(axis=0) for c in classes])
    within = projected - class_means[np.searchsorted(classes, labels)]
    covariance = within.T @ within / len(within)
    covariance += np.eye(components) * 1e-6 * np.trace(covariance) / components
    stats = FeatureStats(mean, basis, class_means, np.linalg.inv(covariance), 0.0, 0.0)
    distance, residual = stats.scores(calibration)
    members = np.asarray(groups) if groups is not None else np.zeros(len(calibration))
    # A source with few calibration images cannot estimate its own high quantile (the 99th
    # percentile of 8 images is their maximum): it counts in the pooled quantile only.
    names, counts = np.unique(members, return_counts=True)
    masks = [np.ones(len(members), bool)] + [
        members == g for g, n in zip(names, counts, strict=True) if n >= MIN_SOURCE_IMAGES
    ]
    stats.distance_threshold = max(float(np.quantile(distance[m], quantile)) for m in masks)
    stats.residual_threshold = max(float(np.quantile(residual[m], quantile)) for m in masks)
    return stats


def extract_features(
    predictor: Predictor, paths: Sequence[Path], batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled classifier features (N, D) of ``paths`` through the predictor's own path, and
    the segmenter's whole-image features (N, E) (None without a segmenter)."""
    classifier, whole = [], []
    for prediction in predict_paths(predictor, paths, batch_size):  # keep features, not images
        classifier.append(prediction.features)
        if prediction.lungs is not None:
            whole.append(prediction.lungs.features)
    return np.stack(classifier), np.stack(whole) if whole else None


def fit(args: argparse.Namespace) -> None:
    """Fit on the train split, calibrate on val, and write ``lungcam.ood`` into config.json."""
    predictor = Predictor.load(str(args.model), args.device)
    splits = load_folders(args.data)
    train, val = splits["train"], splits["val"]
    if args.max_per_class:
        train = subsample(train, args.max_per_class, seed=0)
        val = subsample(val, args.max_per_class, seed=0)
    print(f"features of {len(train)} train and {len(val)} val images ...", flush=True)
    train_features, train_whole = extract_features(
        predictor, [r.path for r in train], args.batch_size
    )
    val_features, val_whole = extract_features(predictor, [r.path for r in val], args.batch_size)
    labels = np.array([r.label for r in train])
    sources = [r.source for r in val]
    stats = fit_feature_stats(
        train_features, labels, val_features, args.components, args.quantile, sources
    )
    section = stats.to_dict()
    if predictor.segmenter is not None:
        whole = fit_feature_stats(
            train_whole, labels, val_whole, args.components, args.quantile, sources
        )
        section["whole_image"] = whole.to_dict() | {
            "segmenter_sha256": predictor.segmenter.weights_sha256
        }
    section |= {
        "components": int(stats.basis.shape[0]),
        "quantile": args.quantile,
        "fitted_on": {
            "data": [Path(d).name for d in args.data],
            "thresholds": "highest of the pooled and per-source val quantiles "
            f"(sources of >= {MIN_SOURCE_IMAGES} images)",
            "train_images": len(train),
            "val_images": len(val),
            "max_per_class": args.max_per_class,
            "date": datetime.date.today().isoformat(),
        },
    }
    config_path = Path(args.model) / CONFIG_FILE
    config = ModelConfig.load(config_path)
    config.ood = section
    config.save(config_path)
    print(
        f"wrote lungcam.ood to {config_path}: {stats.basis.shape[0]} components, thresholds "
        f"distance {stats.distance_threshold:.2f}, residual {stats.residual_threshold:.2f}"
        + ("; with whole-image statistics" if "whole_image" in section else "")
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m training.ood_fit fit|measure``."""
    parser = argparse.ArgumentParser(description="Fit or measure the not-a-chest-X-ray guard.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in (("fit", fit), ("measure", measure)):
        sub = commands.add_parser(name, help=run.__doc__.splitlines()[0])
        sub.add_argument("--model", type=Path, required=True, help="checkpoint folder")
        sub.add_argument(
            "--data",
            type=Path,
            nargs="+",
            required=True,
            help="lung5-style split roots (several are merged; manifests name the sources)",
        )
        sub.add_argument("--max-per-class", type=int, default=0, help="subsample (0: all)")
        sub.add_argument("--batch-size", type=int, default=16)
        sub.add_argument("--device", default=None)
        sub.set_defaults(run=run)
    commands.choices["fit"].add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    commands.choices["fit"].add_argument("--quantile", type=float, default=DEFAULT_QUANTILE)
    commands.choices["measure"].add_argument("--split", default="test")
    commands.choices["measure"].add_argument("--json", type=Path, help="also write results here")
    commands.choices["measure"].add_argument(
        "--details", type=Path, help="also write one CSV row per image (score, lungs found)"
    )
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
