"""Does the heatmap point at the lesion? Score every map against expert lesion boxes.

    python -m training.localize --model assets/model --data ../shared/data/lesions \
        --split test --out runs/localize [--methods gradcam hirescam@denseblock3 ...]

For every film of ``--split`` with boxes (``training.lesions``), ``Predictor.predict`` gives the
prediction; each method of ``--methods`` (the Explain tab's, ``explain.methods``; a layer after
``@``, default the checkpoint's) then gives the map of the annotated class (a pneumonia of
unknown cause: the likelier of Bacterial and Viral) and of the top class, placed over the film
exactly as the app places it. Each is scored (``explain.localization``: pointing game, energy
in the boxes, IoU after Otsu and at the top 20 % of the area; CheXlocalize, Saporta et al.
2022; Zhang et al. 2018) beside four baselines on the same films: a flat map over the image, a
flat map over the crop the network saw, a centre Gaussian, and the location prior — the
training split's boxes of the film's class, each mapped into its own film's crop frame
(``Predictor.frame``), averaged and pasted into this film's crop.

Writes ``OUT/localization.json`` (overall, per class, per source, per finding: each map's
mean and bootstrap 95 % interval, and its lift over the prior, paired per film; every film's
scores), ``OUT/localization.png`` (bars per class), ``OUT/best_worst.png`` (the films where
the first map puts the most and the least energy in the boxes) and ``OUT/location_prior.npz``
(each class's prior in the crop frame, ``PRIOR_GRID`` a side, and the pooled one). Score-CAM
is slow (a forward per channel) and runs only when named.

Exit status: 0 when every row was scored, 1 when some rows were skipped (each listed: bad
corners, a box outside its image, an unreadable image, a class the model does not know; the
rest is still scored), 2 for bad arguments (a folder without a usable ``boxes.csv``, no films
in the split or none in ``train`` for the prior, an unknown method or layer, a bad model).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from explain import localization as loc
from explain.choices import METHODS, TARGET_LAYERS
from explain.methods import explain
from imaging.image import LoadedImage, fit_within
from imaging.load import load_or_reason
from model.checkpoint import CheckpointError
from model.crop import CropBox
from model.prediction import Prediction
from model.predictor import Predictor
from training.lesions import (
    SPLITS,
    BoxesFileError,
    Film,
    annotated_class,
    check_class,
    read_folders,
)
from training.localize_report import (
    PRIOR,
    Scored,
    build_report,
    format_summary,
    save_bar_plot,
    save_grid,
)

METHOD_KEYS = {re.sub(r"[^a-z+]", "", name.lower()): name for name in METHODS}
DEFAULT_METHODS = (
    *("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"),
    *("gradcam@denseblock3", "hirescam@denseblock3", "layercam@denseblock3"),
)
THUMB_SIDE = 256  # side of the films kept for the best/worst grid
POOLED = "all classes"  # the prior of every training film, for a class without any


def parse_method(spec: str) -> tuple[str, str | None]:
    """``gradcam``, ``Grad-CAM++``, ``layercam@denseblock3``, ``layercam@3`` … → (method, layer
    or None: the checkpoint's)."""
    name, _, layer = spec.partition("@")
    key = re.sub(r"[^a-z+]", "", name.lower())
    if key not in METHOD_KEYS:
        raise ValueError(f"unknown method {spec!r}; choose from {', '.join(METHOD_KEYS)}")
    if layer.isdigit():
        layer = f"denseblock{layer}"
    if layer and not layer.startswith("features."):
        layer = f"features.{layer}"
    if layer and layer not in TARGET_LAYERS:
        raise ValueError(f"unknown layer in {spec!r}; choose from {', '.join(TARGET_LAYERS)}")
    return METHOD_KEYS[key], layer or None


def loaded(
    films: Sequence[Film], batch_size: int, skipped: list[str], progress: bool, what: str
) -> Iterator[list[tuple[Film, LoadedImage]]]:
    """Films decoded in batches; an unreadable image or a box outside it goes to ``skipped``."""
    batch: list[tuple[Film, LoadedImage]] = []
    for film in tqdm(films, desc=what, unit="film", disable=not progress):
        image = load_or_reason(film.path)
        problems = [f"{film.where}: {image}; film skipped"] if isinstance(image, str) else []
        problems = problems or film.outside(image.size)
        skipped += problems
        batch += [] if problems else [(film, image)]
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_priors(
    predictor: Predictor,
    films: Sequence[Film],
    batch_size: int,
    skipped: list[str],
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each class's location prior from training films, plus the pooled one (``POOLED``) for a
    class without any, and how many films and boxes each was made from."""
    framed: dict[str, list[list[loc.Box]]] = {}
    for batch in loaded(films, batch_size, skipped, progress, "prior (train)"):
        _, crops = predictor.frame([image for _, image in batch])
        for (film, _), crop in zip(batch, crops, strict=True):
            boxes = [loc.to_crop_frame(box, crop) for box in film.corners]
            framed.setdefault(film.label, []).append(boxes)
    if not framed:
        raise ValueError("no readable training film: the location prior needs the train split")
    priors = {label: loc.location_prior(boxes) for label, boxes in framed.items()}
    priors[POOLED] = loc.location_prior([boxes for group in framed.values() for boxes in group])
    info = {
        label: {"films": len(group), "boxes": sum(len(b) for b in group)}
        for label, group in sorted(framed.items())
    }
    return priors, info


def model_maps(
    predictor: Predictor,
    prediction: Prediction,
    methods: Sequence[tuple[str, str | None]],
    annotated: int,
) -> dict[str, np.ndarray]:
    """Every method's map of the annotated and of the top class, over the whole film."""
    maps: dict[str, np.ndarray] = {}
    done: dict[tuple[str, str, int], np.ndarray] = {}
    for method, requested in methods:
        layer = requested or predictor.config.target_layer
        for which, k in (("annotated class", annotated), ("top class", prediction.top_index)):
            if (method, layer, k) not in done:
                done[method, layer, k] = explain(predictor, prediction, method, k, layer)
            maps[f"{method} @ {layer.split('.')[-1]} · {which}"] = done[method, layer, k]
    return maps


def baseline_maps(
    shape: tuple[int, int], crop: CropBox, prior: np.ndarray
) -> dict[str, np.ndarray]:
    """The four baselines over a film of ``shape`` (H, W) whose network crop is ``crop``."""
    return {
        "baseline: flat image": loc.flat_map(shape),
        "baseline: flat crop": loc.flat_crop_map(shape, crop),
        "baseline: centre Gaussian": loc.centre_gaussian(shape),
        PRIOR: loc.place_prior(prior, shape, crop),
    }


def score_film(
    predictor: Predictor,
    film: Film,
    prediction: Prediction,
    methods: Sequence[tuple[str, str | None]],
    priors: dict[str, np.ndarray],
) -> Scored:
    """Every map of one film scored against all its boxes and against each finding's."""
    labels = predictor.config.label_names
    annotated = annotated_class(film, labels, prediction.probabilities)
    shape = prediction.image.pixels.shape
    crop = prediction.box or CropBox.whole(prediction.image.pixels)
    maps = model_maps(predictor, prediction, methods, annotated)
    maps |= baseline_maps(shape, crop, priors.get(film.label, priors[POOLED]))
    findings = film.findings()
    masks = {name: loc.box_mask(boxes, shape) for name, boxes in findings.items()}
    every = loc.box_mask(film.corners, shape)
    scores = {name: loc.score_map(heat, every) for name, heat in maps.items()}
    by_finding = {
        finding: scores
        if len(findings) == 1
        else {name: loc.score_map(heat, mask) for name, heat in maps.items()}
        for finding, mask in masks.items()
    }
    first = next(iter(maps.values()))
    size = fit_within(prediction.image.size, THUMB_SIDE)
    row, col = np.unravel_index(int(np.argmax(first)), shape)
    return Scored(
        film,
        labels[annotated],
        prediction.top_label,
        crop,
        scores,
        by_finding,
        prediction.image.size,
        cv2.resize(prediction.image.pixels, size, interpolation=cv2.INTER_AREA),
        cv2.resize(first, size, interpolation=cv2.INTER_AREA),
        ((col + 0.5) / shape[1], (row + 0.5) / shape[0]),
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: $LUNGCAM_MODEL, else bundled)")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="lesion folders")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="method[@denseblockN] each (e.g. gradcam layercam@denseblock3 scorecam)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=loc.RESAMPLES, help="bootstrap")
    parser.add_argument("--grid", type=int, default=4, help="best and worst films shown")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring); returns the exit status."""
    parser, args = parse_args(argv)
    if min(args.batch_size, args.resamples, args.grid) < 1:
        parser.error("--batch-size, --resamples and --grid must be at least 1")
    try:
        methods = list(dict.fromkeys(parse_method(spec) for spec in args.methods))
        films, skipped = read_folders(args.data)
        predictor = Predictor.load(args.model, args.device)
    except (BoxesFileError, CheckpointError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    unknown = {film.where: check_class(film, predictor.config.label_names) for film in films}
    skipped += [reason for reason in unknown.values() if reason]
    films = [film for film in films if not unknown[film.where]]
    scored_films = [film for film in films if film.split == args.split]
    if not scored_films:
        parser.error(f"no films with boxes in the {args.split} split of {args.data}")
    progress = not args.no_progress
    try:
        train = [film for film in films if film.split == "train"]
        priors, prior_info = build_priors(predictor, train, args.batch_size, skipped, progress)
    except ValueError as err:
        parser.error(str(err))
    scored: list[Scored] = []
    for batch in loaded(scored_films, args.batch_size, skipped, progress, args.split):
        predictions = predictor.predict_many([image for _, image in batch])
        for (film, _), prediction in zip(batch, predictions, strict=True):
            scored.append(score_film(predictor, film, prediction, methods, priors))
    if not scored:
        parser.error(f"no film of the {args.split} split could be scored:\n" + "\n".join(skipped))
    report = {
        "model": predictor.description,
        "data": [str(folder) for folder in args.data],
        "split": args.split,
        "films": len(scored),
        "boxes": sum(len(s.film.boxes) for s in scored),
        "measures": list(loc.MEASURES),
        "maps": list(scored[0].scores),
        "first_map": next(iter(scored[0].scores)),
        "prior": {
            "map": PRIOR,
            "from": "train",
            "in_sample": args.split == "train",
            "grid": loc.PRIOR_GRID,
            "classes": prior_info,
            "pooled_for": sorted({s.film.label for s in scored} - set(prior_info)),
        },
        "bootstrap": {"resamples": args.resamples, "level": loc.LEVEL, "seed": 0},
        "skipped": skipped,
        **build_report(scored, args.resamples),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "localization.json").write_text(json.dumps(report, indent=1))
    np.savez_compressed(args.out / "location_prior.npz", **priors)
    save_bar_plot(report, args.out / "localization.png")
    save_grid(scored, args.out / "best_worst.png", args.grid)
    print(format_summary(report))
    print(f"{len(scored)} films scored with {predictor.description}; results in {args.out}")
    for line in skipped:
        print(f"  skipped: {line}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
