"""Several data folders as one dataset, each image tagged with its source, and sampling that
balances class × source.

lung5 ties class to source (pediatric Guangzhou normals, TBX11K tuberculosis, COVID-19 from
paper figures); lung5-extra adds adult normals and hospital COVID-19 to weaken that link. Both
only help if the rarer sources are seen often enough, hence ``--balance class-source``.

    splits = load_folders(["../shared/data/lung5", "../shared/data/lung5-extra"])
    sampler = make_sampler(splits["train"], "class-source", num_samples=len(splits["train"]))

Under ``torchrun`` each process samples its share of that stream (``RankShareSampler``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from model.config import CLASS_FOLDERS
from training.data import ImageRecord, load_splits, scan_class_folders

# class-source: every (class, source) cell of a class gets the same share of the class, and
# every class the same share of an epoch. class: classes equal, images of a class equal.
# loss: uniform shuffle with a class-weighted loss. none: neither.
BALANCE_MODES = ("class-source", "class", "loss", "none")
SPLITS = ("train", "val", "test")


class Labelled(Protocol):
    label: int
    source: str


def with_source(records: list[ImageRecord], default: str) -> list[ImageRecord]:
    """``records`` with an empty ``source`` (no manifest, or a file the manifest lacks) set to
    ``default``, the data folder's name."""
    return [r if r.source else dataclasses.replace(r, source=default) for r in records]


def load_folders(data_dirs: Sequence[str | Path], seed: int = 0) -> dict[str, list[ImageRecord]]:
    """``load_splits`` of every folder, merged split by split.

    Class folders merge by name (``NORMAL`` in one folder and ``Normal`` in another are the
    same class); a ``Pneumonia`` folder is the label set of both pneumonia classes
    (``ImageRecord.allowed``), balanced as a source of Bacterial Pneumonia. Each record's
    source comes from its folder's ``manifest.csv``; a folder without one is a single source
    named after the folder. A folder without ``val/`` gets a seeded, patient-grouped val split
    of its own train images, as with one folder.
    """
    if not data_dirs:
        raise ValueError("no data folders given; pass at least one --data DIR")
    merged: dict[str, list[ImageRecord]] = {}
    for data_dir in data_dirs:
        root = Path(data_dir)
        # Each folder may hold only some classes (lung5-extra: Normal and COVID-19); together
        # their train splits must hold all, checked below.
        splits = load_splits(root, seed=seed, all_classes=False)
        for split, records in splits.items():
            merged.setdefault(split, []).extend(with_source(records, root.resolve().name))
    # A label set ("Pneumonia", cause unknown) is no example of either of its classes.
    present = {r.label for r in merged.get("train", []) if not r.is_set}
    missing = [name for i, name in enumerate(CLASS_FOLDERS) if i not in present]
    if missing:
        folders = ", ".join(str(d) for d in data_dirs)
        raise ValueError(f"the train splits of {folders} hold no images of: {', '.join(missing)}")
    return merged


def scan_folders(
    data_dirs: Sequence[str | Path], split: str | None = None, *, all_classes: bool = False
) -> list[ImageRecord]:
    """Records of ``DIR/split`` (or ``DIR``) for every folder, sources attributed as in
    ``load_folders``; with ``all_classes=False`` a folder may hold only some class folders."""
    records: list[ImageRecord] = []
    for data_dir in data_dirs:
        root = Path(data_dir)
        folder = root / split if split else root
        found = scan_class_folders(folder, all_classes=all_classes)
        records.extend(with_source(found, root.resolve().name))
    return records


def cell_counts(records: Sequence[Labelled]) -> Counter[tuple[int, str]]:
    """Number of records per (class index, source) cell."""
    return Counter((r.label, r.source) for r in records)


def balance_weights(records: Sequence[Labelled], mode: str) -> np.ndarray:
    """One sampling weight per record, summing to 1.

    ``class-source``: with C classes present, a class with S sources, and n images in a
    (class, source) cell, each image weighs 1 / (C · S · n): every cell has the same total
    weight within its class, and every class 1 / C. ``class``: 1 / (C · n_class).
    ``loss`` and ``none``: uniform.

    Example: classes 0 (sources a ×3, b ×1) and 1 (a ×2) → 1/12, 1/12, 1/12, 1/4, 1/4, 1/4.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"unknown balance mode {mode!r}; expected one of {BALANCE_MODES}")
    if not records:
        raise ValueError("no records to weigh")
    if mode in ("loss", "none"):
        return np.full(len(records), 1 / len(records))
    per_class = Counter(r.label for r in records)
    classes = len(per_class)
    if mode == "class":
        return np.array([1 / (classes * per_class[r.label]) for r in records])
    cells = cell_counts(records)
    sources_per_class = Counter(label for label, _ in cells)
    return np.array(
        [1 / (classes * sources_per_class[r.label] * cells[(r.label, r.source)]) for r in records]
    )


def make_sampler(
    records: Sequence[Labelled], mode: str, num_samples: int, seed: int = 0
) -> Sampler[int]:
    """The training sampler for ``--balance mode``: ``num_samples`` draws per epoch.

    ``class-source`` and ``class`` draw with replacement by ``balance_weights`` (a rare cell
    repeats, a common one is under-sampled); ``loss`` and ``none`` shuffle without replacement
    (cycling through the set again when ``num_samples`` exceeds it).
    """
    if num_samples < 1:
        raise ValueError(f"samples per epoch must be at least 1; got {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    if mode in ("loss", "none"):
        return RandomSampler(range(len(records)), num_samples=num_samples, generator=generator)
    weights = torch.as_tensor(balance_weights(records, mode), dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)


class RankShareSampler(Sampler[int]):
    """One process's share of ``make_sampler``'s stream, for training on several processes.

    Every rank draws the same stream (same ``records``, ``mode`` and ``seed + epoch``) of
    ``num_samples`` rounded up to a multiple of ``world_size``, and keeps every
    ``world_size``-th index from its ``rank``: the shares partition the stream, so the
    class × source balance holds over all ranks and, as the stream is exchangeable, on each
    rank too; every rank gets the same number of draws, so no rank waits for a missing batch.
    Call ``set_epoch`` before each epoch for a fresh stream (the same on every rank).
    """

    def __init__(
        self,
        records: Sequence[Labelled],
        mode: str,
        num_samples: int,
        rank: int,
        world_size: int,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.records, self.mode, self.seed = records, mode, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = -(-num_samples // world_size)  # ceil
        self.epoch = 0
        make_sampler(records, mode, num_samples, seed)  # check the arguments up front

    def set_epoch(self, epoch: int) -> None:
        """Draw the stream of ``seed + epoch`` next (every rank must pass the same epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        total = self.per_rank * self.world_size
        stream = make_sampler(self.records, self.mode, total, self.seed + self.epoch)
        return itertools.islice(iter(stream), self.rank, None, self.world_size)

    def __len__(self) -> int:
        return self.per_rank


def loss_class_weights(
    records: Sequence[Labelled], num_classes: int, mode: str
) -> np.ndarray | None:
    """Cross-entropy class weights for ``--balance mode``, or ``None`` for an unweighted loss.

    Only ``loss`` weighs the loss (N / (K · n_k), as before). ``class`` and ``class-source``
    already give every class the same share of each epoch through the sampler; weighting the
    loss as well would correct the imbalance twice, i.e. over-weight rare classes by their
    rarity again, so their loss is unweighted. ``none`` is unweighted too.
    """
    if mode != "loss":
        return None
    counts = np.bincount([r.label for r in records], minlength=num_classes)
    return counts.sum() / (num_classes * np.maximum(counts, 1))


def describe_cells(records: Sequence[Labelled], label_names: Sequence[str]) -> str:
    """One line per (class, source) cell, for the training log."""
    return "; ".join(
        f"{label_names[label]} / {source}: {n}"
        for (label, source), n in sorted(cell_counts(records).items())
    )
