"""What one ``training.train`` run reads: the merged splits, the lung-field framing, the
datasets, each rank's loaders, and the loss that fits ``--balance``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.config import ModelConfig
from model.crop import CropBox, lung_box
from model.segmenter import LungSegmenter
from model.transforms import build_transform
from training.data import ImageRecord, XrayDataset, class_counts, subsample
from training.distributed import Ranks
from training.recipe import SetCrossEntropy
from training.sources import (
    Labelled,
    RankShareSampler,
    describe_cells,
    load_folders,
    loss_class_weights,
    make_sampler,
)

log = logging.getLogger("lungcam.train")


@dataclass(frozen=True)
class TrainData:
    """This rank's training loader, the validation loader (read by rank 0) and the loss."""

    train_loader: DataLoader
    val_loader: DataLoader
    loss_fn: nn.Module


def read_splits(args: argparse.Namespace) -> dict[str, list[ImageRecord]]:
    """The ``--data`` folders merged split by split, each class cut to ``--max-per-class``."""
    splits = load_folders(args.data, seed=args.seed)
    if args.max_per_class:
        splits = {k: subsample(v, args.max_per_class, args.seed) for k, v in splits.items()}
    return splits


def lung_framing(
    segmenter_path: str | None, config: ModelConfig
) -> Callable[[list[np.ndarray]], list[CropBox]] | None:
    """The lung-field boxes serving will crop to, for ``config.lung_crop_margin`` (else None)."""
    if config.lung_crop_margin is None:
        return None
    segmenter = LungSegmenter.load(segmenter_path)
    margin = config.lung_crop_margin

    def framing(images: list[np.ndarray]) -> list[CropBox]:
        boxes: list[CropBox] = []
        for start in tqdm(range(0, len(images), 32), desc="lung fields", disable=None):
            chunk = images[start : start + 32]
            masks = segmenter.analyse_many(chunk)
            boxes.extend(
                lung_box(lungs.mask, margin) or CropBox.whole(pixels)
                for pixels, lungs in zip(chunk, masks, strict=True)
            )
        return boxes

    return framing


def make_train_loader(
    dataset: Dataset,
    records: Sequence[Labelled],
    args: argparse.Namespace,
    ranks: Ranks,
    **loader_kw: object,
) -> DataLoader:
    """This rank's training loader for ``--balance``, ``--samples-per-epoch`` and
    ``--batch-size``, the last two counted over all ranks: each rank takes 1/N of the global
    batch from its share of the one balanced stream (``RankShareSampler``)."""
    batch = ranks.split(args.batch_size)
    draws = args.samples_per_epoch or len(records)
    sampler = (
        RankShareSampler(records, args.balance, draws, ranks.rank, ranks.world_size, args.seed)
        if ranks.active
        else make_sampler(records, args.balance, draws, args.seed)
    )
    # drop_last: equal full batches on every rank, but no empty epoch on tiny sets
    return DataLoader(dataset, batch, sampler=sampler, drop_last=len(sampler) > batch, **loader_kw)


def load_data(
    splits: dict[str, list[ImageRecord]],
    config: ModelConfig,
    args: argparse.Namespace,
    ranks: Ranks,
) -> TrainData:
    """Datasets of the train and val splits (framed to the lungs when the config crops), their
    loaders, and the loss (class-weighted for ``--balance loss`` only); logs what was read."""
    framing = lung_framing(args.segmenter, config)
    threads = max(4, args.workers * 4)
    train_set = XrayDataset(
        splits["train"],
        build_transform(config, train=True),
        threads,
        framing,
        args.crop_jitter if framing else 0.0,
        config.num_classes,
    )
    val_set = XrayDataset(
        splits["val"], build_transform(config), threads, framing, num_classes=config.num_classes
    )
    device = ranks.device
    loader_kw = dict(
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    train_loader = make_train_loader(train_set, train_set.records, args, ranks, **loader_kw)
    val_loader = DataLoader(val_set, args.batch_size * 2, **loader_kw)
    counts = class_counts(train_set.records, config.num_classes)
    weights = loss_class_weights(train_set.records, config.num_classes, args.balance)
    log.info(
        "train cells (class / source: images): %s",
        describe_cells(train_set.records, config.label_names),
    )
    loss_fn = SetCrossEntropy(
        torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    )
    log.info(
        "train %s, val %d images, skipped %d unreadable; %d process(es)",
        counts.tolist(),
        len(val_set),
        len(train_set.skipped) + len(val_set.skipped),
        ranks.world_size,
    )
    return TrainData(train_loader, val_loader, loss_fn)
