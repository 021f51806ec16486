"""``python -m batch.predict --engine ray``: the local engine's CSV and overlays, on Ray Data.

Ray Data takes the list of files; CPU tasks decode them (``imaging.load.load_or_reason``: a bad
file becomes its reason, not a crash); a pool of actors, each loading the checkpoint once (on
its own GPU with ``--num-gpus``), runs ``Predictor.predict_many`` per batch and turns each
result into the CSV's cells and overlay (``batch.prediction_rows``, the local engine's code).
Only those short strings travel back; the driver writes them in input order. Inputs, ``--out``
and ``--model`` must be readable at the same path on every node (docs/SCALE.md).

Needs Ray (``pip install -r requirements-scale.txt``); ``batch.predict`` imports this module
only for ``--engine ray``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray
import ray.data

from batch.prediction_rows import (
    HEATMAP_DIR,
    OVERLAY_DIR,
    Row,
    csv_cells,
    draw_overlay,
    save_heatmaps,
)
from imaging.load import load_or_reason
from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.prediction import Prediction
from model.predictor import Predictor

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Job:
    """What to predict with and what to write, as ``batch.predict``'s flags say."""

    model: str | None  # checkpoint; None: $LUNGCAM_MODEL or the bundled one, on each node
    out: Path
    batch_size: int = 8
    opacity: float = DEFAULT_OPACITY
    colormap: str = DEFAULT_COLORMAP


@dataclass(frozen=True)
class Pool:
    """Where it runs: GPUs in all (0: CPU actors), actors (default: one per GPU, else one) and
    the cluster to join (None: ``$RAY_ADDRESS``, else a new local instance)."""

    num_gpus: int = 0
    actors: int | None = None
    address: str | None = None

    @property
    def size(self) -> int:
        return self.actors or max(1, self.num_gpus)

    @property
    def gpus_per_actor(self) -> float:
        return min(1.0, self.num_gpus / self.size)


def decode(batch: Batch) -> Batch:
    """Ray Data task: each ``source`` file → ``image``, the pickled ``LoadedImage`` (plain bytes
    travel through Arrow as they are; empty when unreadable), and ``error``, the reason."""
    loaded = [load_or_reason(Path(source)) for source in batch["source"]]
    images = [b"" if isinstance(item, str) else pickle.dumps(item) for item in loaded]
    errors = [item if isinstance(item, str) else "" for item in loaded]
    return {
        **batch,
        "image": np.array(images, dtype=object),
        "error": np.array(errors, dtype=object),
    }


class PredictActor:
    """Ray Data actor: the checkpoint loaded once, then decoded batches → CSV cells + overlays."""

    def __init__(self, job: Job, written: Path, device: str) -> None:
        self.job = job
        self.written = written  # the overlay folder as this node sees it (absolute)
        self.predictor = Predictor.load(job.model, device)

    def __call__(self, batch: Batch) -> Batch:
        ok = [i for i, image in enumerate(batch["image"]) if len(image)]
        images = [pickle.loads(batch["image"][i]) for i in ok]
        predicted = self.predictor.predict_many(images) if ok else []
        predictions = dict(zip(ok, predicted, strict=True))
        lines = [self.cells(batch, i, predictions.get(i)) for i in range(len(batch["index"]))]
        return {"index": batch["index"], "cells": lines}

    def cells(self, batch: Batch, i: int, prediction: Prediction | None) -> list[str]:
        """Row ``i``'s CSV cells, drawing its overlay (and saving its maps) when it was predicted
        and one is wanted."""
        path, name = Path(batch["path"][i]), batch["overlay"][i]
        classes = self.predictor.config.num_classes
        if prediction is not None and batch["heatmap"][i]:
            save_heatmaps(prediction, self.written.parent / HEATMAP_DIR / batch["heatmap"][i])
        if prediction is None or not name:
            return csv_cells(Row(path, prediction, error=batch["error"][i]), classes)
        draw_overlay(prediction, self.written / name, self.job.opacity, self.job.colormap)
        return csv_cells(Row(path, prediction, self.job.out / OVERLAY_DIR / name), classes)


def predict_paths(
    job: Job,
    paths: Sequence[Path],
    overlay_names: Sequence[str] | None,
    pool: Pool,
    progress: bool = True,
    heatmap_names: Sequence[str] | None = None,
) -> list[list[str]]:
    """Every path's CSV cells (``batch.prediction_rows.csv_cells``), in input order.

    ``overlay_names`` (one per path; None: no overlays) are written under ``job.out/overlays``,
    ``heatmap_names`` (likewise) under ``job.out/heatmaps``.
    Joins ``pool.address`` unless Ray is already initialised (a test's local instance, or the
    cluster of a ``ray job submit``).
    """
    if not ray.is_initialized():
        ray.init(address=pool.address)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    written = job.out.resolve() / OVERLAY_DIR
    written.mkdir(parents=True, exist_ok=True)
    if heatmap_names:
        (written.parent / HEATMAP_DIR).mkdir(exist_ok=True)
    local = job.model and Path(job.model).expanduser().exists()
    model = str(Path(job.model).expanduser().resolve()) if local else job.model
    items = [
        {
            "index": i,
            "path": str(path),
            "source": str(path.resolve()),
            "overlay": overlay_names[i] if overlay_names else "",
            "heatmap": heatmap_names[i] if heatmap_names else "",
        }
        for i, path in enumerate(paths)
    ]
    device = "cuda" if pool.num_gpus else "cpu"
    data = ray.data.from_items(items).map_batches(decode, batch_size=job.batch_size)
    data = data.map_batches(
        PredictActor,
        fn_constructor_args=(replace(job, model=model), written, device),
        batch_size=job.batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_gpus=pool.gpus_per_actor,
    )
    lines = {row["index"]: [str(cell) for cell in row["cells"]] for row in data.iter_rows()}
    return [lines[i] for i in range(len(paths))]
