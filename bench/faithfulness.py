"""Benchmark: mean ROAD score of each CAM method next to a random-heatmap baseline.

For the first ``--per-class`` images of every class of the lung5 test split, each method
explains the model's predicted class; ``explain.faithfulness.road_batch`` scores the map.
Score-CAM (1920 masked forwards per image at denseblock4) runs on ``--score-cam-images``
only. ``--contrastive N`` instead compares the two "why A rather than B" maps of
``explain.contrastive`` on N images per confusable class, scored on P(A) − P(B).

    python -m bench.faithfulness [--model PATH] [--per-class 10] [--score-cam-images 3]
    python -m bench.faithfulness --contrastive 8

Prints a Markdown table (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from explain.choices import CONFUSABLE, METHODS
from explain.contrastive import CONTRASTIVE_METHODS, ProbabilityMargin, contrast
from explain.faithfulness import ROAD_PERCENTILES, road_batch
from explain.methods import cam_batch
from imaging.load import load_image
from model.config import CLASS_FOLDERS
from model.predictor import Predictor
from training.data import LUNG5

RANDOM = "Random heatmap (uniform noise)"


def test_images(data: Path, per_class: int, folders: Sequence[str] = CLASS_FOLDERS) -> list[Path]:
    """The first ``per_class`` files (sorted) of each class folder of the test split."""
    return [p for f in folders for p in sorted((data / "test" / f).iterdir())[:per_class]]


def random_maps(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, height, width), dtype=np.float32)


def score_rows(
    predictor: Predictor,
    batch: torch.Tensor,
    maps_of: dict[str, Callable[[torch.Tensor], np.ndarray]],
    targets: list,
    chunk: int,
) -> dict[str, list[float]]:
    """ROAD score of every image for every map maker, ``chunk`` images at a time."""
    scores: dict[str, list[float]] = {name: [] for name in maps_of}
    for name, make in maps_of.items():
        start = time.perf_counter()
        for i in range(0, len(batch), chunk):
            part = batch[i : i + chunk]
            road = road_batch(predictor.model, part, make(part, i), targets[i : i + chunk])
            scores[name].extend(road.tolist())
        seconds = time.perf_counter() - start
        mean = np.mean(scores[name])
        print(f"{name}: mean ROAD {mean:+.4f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return scores


def table(scores: dict[str, list[float]], header: str) -> str:
    lines = [
        f"| {header} | images | mean ROAD | std | share > 0 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in scores.items():
        v = np.asarray(values)
        lines.append(
            f"| {name} | {len(v)} | {v.mean():+.4f} | {v.std():.4f} | {(v > 0).mean():.0%} |"
        )
    return "\n".join(lines)


def method_table(predictor: Predictor, paths: list[Path], score_cam_images: int) -> str:
    images = [load_image(p) for p in paths]
    predictions = predictor.predict_many(images)
    classes = [p.top_index for p in predictions]
    batch = predictor.batch(images)
    layer = predictor.config.target_layer
    height, width = predictor.config.image_size
    targets = [ClassifierOutputSoftmaxTarget(k) for k in classes]
    noise = random_maps(len(images), height, width)

    def library(method: str) -> Callable[[torch.Tensor, int], np.ndarray]:
        return lambda part, i: cam_batch(
            predictor.model, part, method, classes[i : i + len(part)], layer
        )

    makers = {name: library(name) for name in METHODS if name != "Score-CAM"}
    makers[RANDOM] = lambda part, i: noise[i : i + len(part)]
    scores = score_rows(predictor, batch, makers, targets, chunk=10)
    if score_cam_images:
        # Spread over classes: every (n // k)-th image.
        step = max(1, len(images) // score_cam_images)
        picked = list(range(0, len(images), step))[:score_cam_images]
        few = score_rows(
            predictor,
            batch[picked],
            {
                "Score-CAM": lambda part, i: cam_batch(
                    predictor.model, part, "Score-CAM", [classes[picked[i]]], layer
                )
            },
            [targets[j] for j in picked],
            chunk=1,
        )
        scores.update(few)
        scores[f"{RANDOM}, same {len(picked)} images"] = [scores[RANDOM][j] for j in picked]
    return table(scores, "method (predicted class, " + layer + ")")


def contrastive_table(predictor: Predictor, paths: list[Path]) -> str:
    """Score both contrastive maps on P(A) − P(B): A = true class, B = likeliest other one."""
    labels = predictor.config.label_names
    folder_to_label = dict(zip(CLASS_FOLDERS, labels, strict=True))
    confusable = [predictor.config.class_index(c) for c in CONFUSABLE]
    images, pairs = [], []
    for path, prediction in zip(
        paths, predictor.predict_many([load_image(p) for p in paths]), strict=True
    ):
        a = predictor.config.class_index(folder_to_label[path.parent.name])
        b = max((k for k in confusable if k != a), key=lambda k: prediction.probabilities[k])
        images.append(prediction)
        pairs.append((a, b))
    batch = predictor.batch([p.image for p in images], [p.box for p in images])
    height, width = predictor.config.image_size
    targets = [ProbabilityMargin(a, b) for a, b in pairs]

    def maker(method: str) -> Callable[[torch.Tensor, int], np.ndarray]:
        def make(part: torch.Tensor, i: int) -> np.ndarray:
            maps = []
            for prediction, (a, b) in zip(
                images[i : i + len(part)], pairs[i : i + len(part)], strict=True
            ):
                heat = contrast(predictor, prediction, labels[a], labels[b], method)
                maps.append(_to_network(heat, width, height))
            return np.stack(maps)

        return make

    noise = random_maps(len(images), height, width, seed=1)
    makers = {f"contrast: {m}": maker(m) for m in CONTRASTIVE_METHODS}
    makers[RANDOM] = lambda part, i: noise[i : i + len(part)]
    scores = score_rows(predictor, batch.to(predictor.device), makers, targets, chunk=8)
    return table(scores, "why A (true class) rather than B (likeliest other confusable class)")


def _to_network(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(np.float32(heat), (width, height), interpolation=cv2.INTER_AREA)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=LUNG5)
    parser.add_argument("--per-class", type=int, default=10, help="test images per class")
    parser.add_argument("--score-cam-images", type=int, default=3)
    parser.add_argument("--contrastive", type=int, metavar="N", help="images per class")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    predictor = Predictor.load(args.model, "cpu")
    start = time.perf_counter()
    if args.contrastive:
        folders = [
            f
            for f, n in zip(CLASS_FOLDERS, predictor.config.label_names, strict=True)
            if n in CONFUSABLE
        ]
        body = contrastive_table(predictor, test_images(args.data, args.contrastive, folders))
    else:
        paths = test_images(args.data, args.per_class)
        body = method_table(predictor, paths, args.score_cam_images)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"{body}\n\nModel `{predictor.description}` · ROAD percentiles {list(ROAD_PERCENTILES)} "
        "(pytorch-grad-cam ROADCombined; target P(class), contrastive P(A) − P(B)) · "
        f"{platform.machine()} "
        f"{torch.get_num_threads()} threads · {time.perf_counter() - start:.0f} s · {when}\n"
        f"Command: `python -m bench.faithfulness {' '.join(argv or sys.argv[1:])}`\n"
    )
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
