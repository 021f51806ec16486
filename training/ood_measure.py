"""Measuring the not-a-chest-X-ray guard (``python -m training.ood_fit measure``): its warn
rates on a split's chest X-rays, per source, and on images that are not chest X-rays
(``training.non_chest``), each verdict the app's own, and what "no lung fields found" adds at
each candidate ``NO_LUNGS_SCORE``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imaging.image import ImageInputError
from imaging.load import decoded_batches
from model.ood import NO_LUNGS_CANDIDATES, NO_LUNGS_SCORE, check_image, no_lungs_warns
from model.prediction import Prediction
from model.predictor import Predictor
from training.data import subsample
from training.non_chest import as_upload, non_chest_images
from training.sources import load_folders

Row = dict[str, Any]  # one image's verdict (``verdicts``)


def predict_paths(
    predictor: Predictor, paths: Sequence[Path], batch_size: int
) -> Iterator[Prediction]:
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


def verdicts(predictions: Iterable[Prediction], groups: Sequence[str]) -> list[Row]:
    """Per image: its group, the app's verdict and what the no-lungs rule needs."""
    return [
        {
            "group": group,
            "warn": p.ood.warn,
            "cheap": bool(check_image(p.image)),
            "score": p.ood.score,
            "whole_image_score": p.ood.whole_image_score,
            "lungs_found": None if p.lungs is None else p.lungs.found,
        }
        for group, p in zip(groups, predictions, strict=True)
    ]


def non_chest_verdicts(predictor: Predictor, batch_size: int) -> tuple[list[str], list[Row]]:
    """(kinds, verdicts) of every ``non_chest_images`` image, uploaded as a user would; each
    grouped by its generated kind or its package."""
    kinds, images = zip(*non_chest_images(), strict=True)
    predictions: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        predictions += predictor.predict_many([as_upload(a) for a in chunk])
    groups = [k if k.startswith("generated.") else k.split(".")[0] for k in kinds]
    return list(kinds), verdicts(predictions, groups)


def warns_at(row: Row, no_lungs_score: float) -> bool:
    """The guard's verdict on ``row`` had ``NO_LUNGS_SCORE`` been ``no_lungs_score``."""
    feature = any(row[k] is not None and row[k] > 1 for k in ("score", "whole_image_score"))
    return (
        row["cheap"] or feature or no_lungs_warns(row["lungs_found"], row["score"], no_lungs_score)
    )


def _rate(rows: Sequence[Row], key: Callable[[Row], bool]) -> float | None:
    return round(float(np.mean([key(r) for r in rows])), 4) if rows else None


def _by_group(rows: Sequence[Row], key: Callable[[Row], bool]) -> dict[str, float | None]:
    groups = dict.fromkeys(r["group"] for r in rows)
    return {g: _rate([r for r in rows if r["group"] == g], key) for g in groups}


def _app(row: Row) -> bool:
    return row["warn"]


def _no_lungs(row: Row) -> bool:
    return row["lungs_found"] is False


def _whole_image(row: Row) -> bool:
    return row["whole_image_score"] is not None and row["whole_image_score"] > 1


def rates(chest: Sequence[Row], kinds: Sequence[str], foreign: Sequence[Row]) -> dict[str, Any]:
    """The warn rates of ``measure``'s report, chest X-rays per source, and at each candidate
    ``NO_LUNGS_SCORE``."""
    return {
        "chest_images": len(chest),
        "chest_warn_rate": _rate(chest, _app),
        "chest_images_by_source": dict(Counter(r["group"] for r in chest)),
        "chest_warn_rate_by_source": _by_group(chest, _app),
        "chest_no_lungs_rate_by_source": _by_group(chest, _no_lungs),
        "chest_whole_image_rate_by_source": _by_group(chest, _whole_image),
        "non_chest_images": len(foreign),
        "non_chest_warn_rate": _rate(foreign, _app),
        "non_chest_warn_rate_by_source": _by_group(foreign, _app),
        "non_chest_no_lungs_rate": _rate(foreign, _no_lungs),
        "non_chest_whole_image_rate": _rate(foreign, _whole_image),
        "non_chest_missed": [k for k, r in zip(kinds, foreign, strict=True) if not r["warn"]],
        "no_lungs_score": NO_LUNGS_SCORE,
        "no_lungs_candidates": {
            str(t): {
                "chest_warn_rate_by_source": _by_group(chest, lambda r, t=t: warns_at(r, t)),
                "non_chest_warn_rate": _rate(foreign, lambda r, t=t: warns_at(r, t)),
            }
            for t in NO_LUNGS_CANDIDATES
        },
    }


def measure(args: argparse.Namespace) -> None:
    """Warn rates on test chest X-rays (per source) and on non-chest images, as the app
    computes them, and what "no lung fields found" adds at each candidate ``NO_LUNGS_SCORE``."""
    predictor = Predictor.load(str(args.model), args.device)
    if predictor.config.ood is None:
        print("note: the checkpoint has no fitted 'ood' section; only colour and shape count")
    records = load_folders(args.data)[args.split]
    if args.max_per_class:
        records = subsample(records, args.max_per_class, seed=1)
    predictions = predict_paths(predictor, [r.path for r in records], args.batch_size)
    chest = verdicts(predictions, [r.source for r in records])
    kinds, foreign = non_chest_verdicts(predictor, args.batch_size)
    result = {
        "chest_split": args.split,
        **rates(chest, kinds, foreign),
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
