"""Datasets from Kaggle-style class folders, with patient-aware splits and the shared decoder."""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from imaging.image import SUPPORTED_SUFFIXES, ImageInputError
from imaging.load import load_image
from model.config import CLASS_FOLDERS, CLASS_NAMES
from model.crop import CropBox
from model.transforms import to_tensor

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = SUPPORTED_SUFFIXES
LUNG5_ENV = "LUNGCAM_DATA"
# The lung5 data folder the tests and benchmarks read: $LUNGCAM_DATA, else ../shared/data/lung5.
LUNG5 = Path(
    os.environ.get(LUNG5_ENV, Path(__file__).resolve().parent.parent.parent / "shared/data/lung5")
)
MANIFEST = "manifest.csv"

# Folder-name spellings seen in public chest X-ray sets, keyed by a normalised form.
_ALIASES = {
    "bacterialpneumonia": 0,
    "bacterial": 0,
    "pneumoniabacterial": 0,
    "coronavirusdisease": 1,
    "covid19": 1,
    "covid": 1,
    "normal": 2,
    "tuberculosis": 3,
    "tb": 3,
    "viralpneumonia": 4,
    "viral": 4,
    "pneumoniaviral": 4,
}
# A label "Pneumonia" (cause unknown, e.g. adult-extra's folder) admits either pneumonia
# class: a label set, never a sixth class.
PNEUMONIA_CLASSES = (CLASS_NAMES.index("Bacterial Pneumonia"), CLASS_NAMES.index("Viral Pneumonia"))
_LABEL_SETS = {"pneumonia": PNEUMONIA_CLASSES}


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image. ``allowed`` holds the classes its label admits: ``(label,)`` for an
    ordinary label (the default), several for a label set such as "Pneumonia" of unknown cause.
    For a set, ``label`` is its first admitted class (Bacterial Pneumonia for "Pneumonia") and
    serves balancing and subsampling only; losses and metrics read ``allowed``."""

    path: Path
    label: int
    patient_id: str
    source: str
    allowed: tuple[int, ...] = ()
    view: str = ""  # the manifest's ``view`` (AP, PA, ...), "" when not given

    def __post_init__(self) -> None:
        if not self.allowed:
            object.__setattr__(self, "allowed", (self.label,))
        elif self.label != self.allowed[0]:
            raise ValueError(f"label {self.label} must be the first of allowed {self.allowed}")

    @property
    def is_set(self) -> bool:
        """Whether the label admits several classes (scored apart from single labels)."""
        return len(self.allowed) > 1


def class_index_of(folder_name: str) -> int | None:
    """Map a class-folder name (any case/spacing, e.g. ``NORMAL``, ``covid-19``) to its index."""
    return _ALIASES.get(_normalised(folder_name))


def allowed_classes(label: str) -> tuple[int, ...]:
    """The class indices a folder name or manifest label admits: one class, or a label set
    (``Pneumonia`` in any case → both pneumonia classes); ``ValueError`` for anything else."""
    found = _LABEL_SETS.get(_normalised(label))
    if found is None:
        index = class_index_of(label)
        if index is None:
            raise ValueError(
                f"unknown label {label!r}; expected one of {', '.join(CLASS_FOLDERS)} "
                "(case and spacing may vary) or 'Pneumonia' (either pneumonia class)"
            )
        found = (index,)
    return found


def allowed_mask(records: list[ImageRecord], num_classes: int) -> np.ndarray:
    """(N, K) bool: which classes each record's label admits."""
    mask = np.zeros((len(records), num_classes), dtype=bool)
    for row, record in enumerate(records):
        mask[row, list(record.allowed)] = True
    return mask


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def scan_class_folders(root: Path, *, all_classes: bool = True) -> list[ImageRecord]:
    """Records for ``root/<class folder>/*``; errors name what is missing or empty.

    A ``Pneumonia`` folder (any case) is the label set {Bacterial, Viral Pneumonia}: its
    records admit both (``allowed``) and count for neither class folder. Training needs all
    five classes (``all_classes``); evaluation may score a folder holding only some of them
    (``all_classes=False``: empty class folders are skipped, and only a folder with no images
    in any class folder is an error).
    """
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is a file; expected a folder of class folders")
    manifest = _read_manifest(root)
    found: dict[tuple[int, ...], Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            found[allowed_classes(folder.name)] = folder
        except ValueError:
            raise ValueError(
                f"unknown class folder {folder.name!r} in {str(root)!r}; expected "
                f"{', '.join(CLASS_FOLDERS)} (case and spacing may vary) or Pneumonia "
                "(either pneumonia class)"
            ) from None
    if not found:
        raise ValueError(
            f"{str(root)!r} holds no class folders; expected some of {', '.join(CLASS_FOLDERS)}"
        )
    missing = [CLASS_FOLDERS[i] for i in range(len(CLASS_FOLDERS)) if (i,) not in found]
    if missing and all_classes:
        raise ValueError(f"{str(root)!r} lacks class folders: {', '.join(missing)}")
    records = []
    for allowed, folder in sorted(found.items()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files and all_classes:
            raise ValueError(f"class folder {str(folder)!r} holds no images")
        for path in files:
            row = manifest.get(path.resolve(), {})
            records.append(
                ImageRecord(
                    path,
                    allowed[0],
                    row.get("patient_id", path.stem),
                    row.get("source", ""),
                    allowed,
                    row.get("view", ""),
                )
            )
    if not records:
        raise ValueError(f"the class folders of {str(root)!r} hold no images")
    return records


def load_splits(
    data_dir: str | Path,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    *,
    all_classes: bool = True,
) -> dict[str, list[ImageRecord]]:
    """``train``/``val`` (and ``test``) records: from split folders if present, else a seeded
    split of one folder of class folders, grouped by patient where a manifest names them.
    ``all_classes=False`` lets a folder hold only some classes (one of several --data)."""
    root = Path(data_dir)
    if (root / "train").is_dir():
        splits = {
            name: scan_class_folders(root / name, all_classes=all_classes)
            for name in ("train", "val", "test")
            if (root / name).is_dir()
        }
        if "val" not in splits:
            splits["train"], splits["val"] = _split_by_patient(splits["train"], val_fraction, seed)
        return splits
    records = scan_class_folders(root, all_classes=all_classes)
    rest, test = _split_by_patient(records, test_fraction, seed)
    train, val = _split_by_patient(rest, val_fraction / (1 - test_fraction), seed + 1)
    return {"train": train, "val": val, "test": test}


def subsample(records: list[ImageRecord], max_per_class: int, seed: int = 0) -> list[ImageRecord]:
    """At most ``max_per_class`` records of each class, chosen with ``seed``."""
    by_class: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_class[record.label].append(record)
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_class):
        group = by_class[label]
        kept.extend(rng.sample(group, min(max_per_class, len(group))))
    return kept


def class_counts(records: list[ImageRecord], num_classes: int) -> np.ndarray:
    counts = Counter(r.label for r in records)
    return np.array([counts.get(i, 0) for i in range(num_classes)], dtype=np.int64)


class XrayDataset(Dataset):
    """Decodes every image once (in threads) through ``load_image`` and keeps the pixels.

    Unreadable files are skipped and counted in ``skipped`` instead of failing mid-epoch.
    ``framing`` gives each image's ``CropBox`` once (the lung fields, as serving crops them;
    default: the whole image); ``jitter`` moves the box's edges at random for training.
    An item is (image tensor, (K,) bool mask of the classes its label admits): one class for
    an ordinary label, both pneumonia classes for "Pneumonia" of unknown cause.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        transform: A.Compose,
        workers: int = 8,
        framing: Callable[[list[np.ndarray]], list[CropBox]] | None = None,
        jitter: float = 0.0,
        num_classes: int = len(CLASS_NAMES),
    ):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(_decode_or_none, records))
        self.records = [r for r, px in zip(records, decoded, strict=True) if px is not None]
        self.pixels = [px for px in decoded if px is not None]
        self.skipped = [str(r.path) for r, px in zip(records, decoded, strict=True) if px is None]
        if self.skipped:
            log.warning("skipped %d unreadable images, e.g. %s", len(self.skipped), self.skipped[0])
        self.transform = transform
        self.boxes = framing(self.pixels) if framing else [CropBox.whole(p) for p in self.pixels]
        self.jitter = jitter
        self.allowed = torch.from_numpy(allowed_mask(self.records, num_classes))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, box = self.pixels[index], self.boxes[index]
        if self.jitter:
            box = box.jittered(pixels.shape, np.random.default_rng(), self.jitter)
        return to_tensor(box.apply(pixels), self.transform), self.allowed[index]


def _decode_or_none(record: ImageRecord) -> np.ndarray | None:
    try:
        return load_image(record.path).pixels
    except ImageInputError:
        return None


def _read_manifest(root: Path) -> dict[Path, dict[str, str]]:
    """Rows of the nearest ``manifest.csv`` (in ``root`` or its parent), keyed by file path."""
    for folder in (root, root.parent):
        path = folder / MANIFEST
        if path.is_file():
            with open(path, newline="") as fh:
                return {(folder / row["file"]).resolve(): row for row in csv.DictReader(fh)}
    return {}


def _split_by_patient(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    patients = sorted({r.patient_id for r in records})
    random.Random(seed).shuffle(patients)
    held = set(patients[: max(1, round(len(patients) * fraction))])
    return [r for r in records if r.patient_id not in held], [
        r for r in records if r.patient_id in held
    ]
