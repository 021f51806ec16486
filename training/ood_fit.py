"""Fit and measure the not-a-chest-X-ray guard (``model.ood``) offline, on a data folder.

``fit`` puts PCA + tied-covariance class Gaussians on the train split's pooled features (the
classifier's, and the lung segmenter's of the whole image) and sets the thresholds on the
validation split; ``measure`` reports the warn rates on a split's
chest X-rays (per data folder) and on images that are not chest X-rays, as the app computes
them, and how each candidate ``NO_LUNGS_SCORE`` would change them::

    python -m training.ood_fit fit --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --max-per-class 300
    python -m training.ood_fit measure --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --details guard.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import platform
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from imaging.image import ImageInputError, LoadedImage
from imaging.load import decoded_batches, load_image
from model.config import CONFIG_FILE, ModelConfig
from model.ood import (
    DEFAULT_COMPONENTS,
    DEFAULT_QUANTILE,
    NO_LUNGS_CANDIDATES,
    NO_LUNGS_SCORE,
    FeatureStats,
    check_image,
    no_lungs_warns,
)
from model.predictor import Predictor
from training.data import subsample
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


# ---------------------------------------------------------------------------------------------
# Measuring: chest X-rays of a split vs images that are not chest X-rays


def non_chest_images(seed: int = 0, per_kind: int = 8) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image) pairs that are not chest X-rays: package sample images and generated ones.

    Samples come from scikit-image's ``skimage.data`` (only files shipped in the wheel) and
    scikit-learn's ``load_sample_images``; generated kinds are documents, colour noise,
    CT-like slices and hand- and knee-like radiograph shapes.
    """
    import skimage.data
    from sklearn.datasets import load_sample_images

    shipped = [
        "astronaut",
        "camera",
        "coins",
        "coffee",
        "chelsea",
        "rocket",
        "horse",
        "moon",
        "page",
        "text",
        "checkerboard",
        "clock",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "brick",
        "grass",
        "gravel",
        "cell",
        "colorwheel",
        "logo",
        "microaneurysms",
        "shepp_logan_phantom",
    ]
    for name in shipped:
        yield f"skimage.{name}", _to_uint8(getattr(skimage.data, name)())
    for image in load_sample_images().images:
        yield "sklearn.sample", image
    rng = np.random.default_rng(seed)
    makers = {
        "document": _document,
        "colour-noise": lambda r: r.integers(0, 256, (r.integers(200, 400), 300, 3), np.uint8),
        "ct-slice": _ct_slice,
        "hand-xray": _hand,
        "knee-xray": _knee,
    }
    for kind, make in makers.items():
        for _ in range(per_kind):
            yield f"generated.{kind}", make(rng)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    return np.round(255 * (values - values.min()) / max(np.ptp(values), 1e-12)).astype(np.uint8)


def _document(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    page = Image.new("L", (420, 594), 245)
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(20, 60))
    while y < 560:
        words = " ".join("x" * int(n) for n in rng.integers(2, 10, 8))
        draw.text((int(rng.integers(20, 50)), y), words.replace("x", "lorem")[:70], fill=20)
        y += int(rng.integers(14, 30))
    return np.asarray(page)


def _canvas(rng: np.random.Generator, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / size
    background = rng.normal(12, 4, (size, size))
    return background, np.stack([yy, xx])


def _ellipse(grid: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0):
    y, x = grid[0] - cy, grid[1] - cx
    c, s = np.cos(angle), np.sin(angle)
    return ((c * x + s * y) / rx) ** 2 + ((-s * x + c * y) / ry) ** 2 <= 1


def _ct_slice(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.5, 0.5, 0.36, 0.46)] = 110  # body
    image[_ellipse(grid, 0.5, 0.32, 0.2, 0.12)] = 25  # lungs, dark
    image[_ellipse(grid, 0.5, 0.68, 0.2, 0.12)] = 25
    image[_ellipse(grid, 0.72, 0.5, 0.06, 0.06)] = 230  # vertebra
    image[_ellipse(grid, 0.45, 0.55, 0.1, 0.09)] = 140  # heart
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _hand(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.78, 0.5, 0.2, 0.22)] = 90  # palm soft tissue
    image[_ellipse(grid, 0.75, 0.5, 0.14, 0.16)] = 170  # carpals and metacarpals
    for k, angle in enumerate(np.linspace(-0.6, 0.6, 5) + rng.normal(0, 0.05, 5)):
        cy, cx = 0.42 - 0.05 * abs(k - 2), 0.5 + np.sin(angle) * 0.3
        image[_ellipse(grid, cy, cx, 0.2, 0.045, angle)] = 80  # finger
        image[_ellipse(grid, cy, cx, 0.17, 0.022, angle)] = 200  # phalanges
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _knee(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.5, 0.5, 0.6, 0.3)] = 85  # leg soft tissue
    gap = rng.uniform(0.02, 0.05)
    image[_ellipse(grid, 0.2 - gap, 0.5, 0.32, 0.13)] = 200  # femur
    image[_ellipse(grid, 0.48 - gap, 0.5, 0.06, 0.2)] = 210  # condyles
    image[_ellipse(grid, 0.82 + gap, 0.5, 0.3, 0.12)] = 195  # tibia
    image[_ellipse(grid, 0.55 + gap, 0.5, 0.04, 0.18)] = 205  # plateau
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def as_upload(pixels: np.ndarray) -> LoadedImage:
    """An array as if uploaded: PNG-encoded, then decoded by ``load_image`` (saturation too)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return load_image(buffer.getvalue())


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predictions(predictor: Predictor, paths: Sequence[Path], batch_size: int) -> Iterator:
    """Every path's ``Prediction`` in order, decoded by ``decoded_batches`` like the batch CLI
    and evaluation; a file that cannot be read stops the run, naming it (labels must align)."""
    failed: list[tuple[Path, str]] = []
    for batch in decoded_batches(list(paths), batch_size, failed):
        if failed:
            break
        yield from predictor.predict_many([image for _, image in batch])
    if failed:
        path, reason = failed[0]
        raise ImageInputError(f"cannot fit or measure the guard on unreadable {path}: {reason}")


def extract_features(
    predictor: Predictor, paths: Sequence[Path], batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled classifier features (N, D) of ``paths`` through the predictor's own path, and
    the segmenter's whole-image features (N, E) (None without a segmenter)."""
    classifier, whole = [], []
    for prediction in _predictions(predictor, paths, batch_size):  # keep features, not images
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


def _verdicts(predictions: Iterator, groups: Sequence[str]) -> list[dict]:
    """Per image: its group, the app's verdict and what the no-lungs rule needs."""
    rows = []
    for group, p in zip(groups, predictions, strict=True):
        rows.append(
            {
                "group": group,
                "warn": p.ood.warn,
                "cheap": bool(check_image(p.image)),
                "score": p.ood.score,
                "whole_image_score": p.ood.whole_image_score,
                "lungs_found": None if p.lungs is None else p.lungs.found,
            }
        )
    return rows


def _warns(row: dict, no_lungs_score: float) -> bool:
    """The guard's verdict on ``row`` had ``NO_LUNGS_SCORE`` been ``no_lungs_score``."""
    feature = any(row[k] is not None and row[k] > 1 for k in ("score", "whole_image_score"))
    return (
        row["cheap"] or feature or no_lungs_warns(row["lungs_found"], row["score"], no_lungs_score)
    )


def _rate(rows: Sequence[dict], key: Callable[[dict], bool]) -> float | None:
    return round(float(np.mean([key(r) for r in rows])), 4) if rows else None


def _by_group(rows: Sequence[dict], key: Callable[[dict], bool]) -> dict[str, float | None]:
    groups = dict.fromkeys(r["group"] for r in rows)
    return {g: _rate([r for r in rows if r["group"] == g], key) for g in groups}


def measure(args: argparse.Namespace) -> None:
    """Warn rates on test chest X-rays (per source) and on non-chest images, as the app
    computes them, and what "no lung fields found" adds at each candidate ``NO_LUNGS_SCORE``."""
    predictor = Predictor.load(str(args.model), args.device)
    if predictor.config.ood is None:
        print("note: the checkpoint has no fitted 'ood' section; only colour and shape count")
    records = load_folders(args.data)[args.split]
    if args.max_per_class:
        records = subsample(records, args.max_per_class, seed=1)
    predictions = _predictions(predictor, [r.path for r in records], args.batch_size)
    chest = _verdicts(predictions, [r.source for r in records])
    kinds, others = zip(*non_chest_images(), strict=True)
    foreign_predictions: list = []
    for chunk in _batched(others, args.batch_size):
        foreign_predictions += predictor.predict_many([as_upload(a) for a in chunk])
    groups = [k if k.startswith("generated.") else k.split(".")[0] for k in kinds]
    foreign = _verdicts(iter(foreign_predictions), groups)

    def app(row: dict) -> bool:
        return row["warn"]

    def no_lungs(row: dict) -> bool:
        return row["lungs_found"] is False

    def whole_image(row: dict) -> bool:
        return row["whole_image_score"] is not None and row["whole_image_score"] > 1

    result = {
        "chest_split": args.split,
        "chest_images": len(chest),
        "chest_warn_rate": _rate(chest, app),
        "chest_images_by_source": dict(Counter(r["group"] for r in chest)),
        "chest_warn_rate_by_source": _by_group(chest, app),
        "chest_no_lungs_rate_by_source": _by_group(chest, no_lungs),
        "chest_whole_image_rate_by_source": _by_group(chest, whole_image),
        "non_chest_images": len(foreign),
        "non_chest_warn_rate": _rate(foreign, app),
        "non_chest_warn_rate_by_source": _by_group(foreign, app),
        "non_chest_no_lungs_rate": _rate(foreign, no_lungs),
        "non_chest_whole_image_rate": _rate(foreign, whole_image),
        "non_chest_missed": [k for k, r in zip(kinds, foreign, strict=True) if not r["warn"]],
        "no_lungs_score": NO_LUNGS_SCORE,
        "no_lungs_candidates": {
            str(t): {
                "chest_warn_rate_by_source": _by_group(chest, lambda r, t=t: _warns(r, t)),
                "non_chest_warn_rate": _rate(foreign, lambda r, t=t: _warns(r, t)),
            }
            for t in NO_LUNGS_CANDIDATES
        },
        "model": predictor.description,
        "segmenter": predictor.segmenter.description if predictor.segmenter else None,
        "hardware": f"{platform.machine()} {predictor.device}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.details:
        with open(args.details, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["set", *chest[0]])
            writer.writeheader()
            writer.writerows({"set": "chest", **r} for r in chest)
            writer.writerows(
                {"set": "non_chest", **r, "group": k} for k, r in zip(kinds, foreign, strict=True)
            )


def main(argv: list[str] | None = None) -> None:
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
