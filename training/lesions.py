"""Lesion-box folders (``boxes.csv`` + images): read, checked row by row, grouped into films.

A folder holds ``boxes.csv``, one row per expert box (columns ``COLUMNS``; corners in pixels of
the saved image, x right, y down), and the images it names, relative to the folder
(``../shared/data/lesions/README.md``). A file that cannot be used at all (missing, without the
columns, without rows) raises ``BoxesFileError``; a bad row is reported as one line naming the
file and line, and its film is left out, since a film missing one of its boxes would be scored
against the wrong truth.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain.localization import BOXES_FILE, COLUMNS, SPLITS, Box
from model.config import CLASS_NAMES
from training.data import PNEUMONIA_CLASSES as PNEUMONIA_INDICES

LABEL_ALIASES = {"Corona Virus Disease": "COVID-19"}
UNKNOWN_CAUSE = "Pneumonia"  # a pneumonia of unknown cause: the likelier of these two classes
PNEUMONIA_CLASSES = tuple(CLASS_NAMES[k] for k in PNEUMONIA_INDICES)  # training.data's set, named


class BoxesFileError(ValueError):
    """A boxes file that cannot be used at all; the message names the file and what is wrong."""


@dataclass(frozen=True)
class LesionBox:
    """One expert box and where it was read (for messages)."""

    corners: Box
    finding: str
    where: str  # "<folder>/boxes.csv line N"


@dataclass
class Film:
    """One image with every box drawn on it."""

    path: Path
    split: str
    label: str  # the boxes file's label, aliases resolved (e.g. COVID-19)
    source: str
    boxes: list[LesionBox] = field(default_factory=list)
    where: str = ""  # "<folder>/boxes.csv line N" of its first row

    @property
    def corners(self) -> list[Box]:
        return [box.corners for box in self.boxes]

    def findings(self) -> dict[str, list[Box]]:
        """The boxes of each finding (the source's own name), in file order."""
        grouped: dict[str, list[Box]] = {}
        for box in self.boxes:
            grouped.setdefault(box.finding, []).append(box.corners)
        return grouped

    def outside(self, size: tuple[int, int]) -> list[str]:
        """A line for each box that does not lie within an image of ``size`` (W, H)."""
        width, height = size
        return [
            f"{box.where}: box {box.corners} lies outside the {width}×{height} image "
            f"{self.path.name}; film skipped"
            for box in self.boxes
            if min(box.corners[:2]) < 0 or box.corners[2] > width or box.corners[3] > height
        ]


def read_folder(folder: Path) -> tuple[list[Film], list[str]]:
    """The films of ``folder``'s boxes file and a line per bad row (its film left out).

    Raises ``BoxesFileError`` when the file is missing, lacks columns or has no rows.
    """
    source = folder / BOXES_FILE
    if not source.is_file():
        raise BoxesFileError(f"{folder}: no {BOXES_FILE} (a folder of lesion boxes needs one)")
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BoxesFileError(
                f"{source} line 1: missing columns {', '.join(missing)}; "
                f"expected {', '.join(COLUMNS)}"
            )
        rows = list(enumerate(reader, start=2))
    if not rows:
        raise BoxesFileError(f"{source}: no boxes (only the header)")
    films: dict[str, Film] = {}
    bad: dict[str, list[str]] = {}
    for line, row in rows:
        where = f"{source} line {line}"
        try:
            box = parse_box(row, where)
            film = films.setdefault(row["image"], new_film(folder, row, where))
            check_same_film(film, row)
        except ValueError as err:
            bad.setdefault(row["image"], []).append(f"{where}: {err}; film skipped")
            continue
        film.boxes.append(box)
    kept = [film for image, film in films.items() if image not in bad]
    return kept, [message for messages in bad.values() for message in messages]


def parse_box(row: dict[str, str], where: str) -> LesionBox:
    """One row's box; a ``ValueError`` saying what is wrong with it."""
    try:
        x0, y0, x1, y1 = (float(row[c]) for c in ("x0", "y0", "x1", "y1"))
    except (TypeError, ValueError):
        corners = [row.get(c) for c in ("x0", "y0", "x1", "y1")]
        raise ValueError(f"box corners {corners} are not numbers") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError(f"box corners {(x0, y0, x1, y1)} are not finite")
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"box {(x0, y0, x1, y1)} is under one pixel wide or high (x1 ≤ x0?)")
    return LesionBox((x0, y0, x1, y1), row["finding"] or "unnamed finding", where)


def new_film(folder: Path, row: dict[str, str], where: str) -> Film:
    """The film a row opens; a ``ValueError`` for an empty image name or an unknown split."""
    if not row["image"]:
        raise ValueError("no image named")
    if row["split"] not in SPLITS:
        raise ValueError(f"split {row['split']!r} is not one of {list(SPLITS)}")
    label = LABEL_ALIASES.get(row["label"], row["label"])
    return Film(folder / row["image"], row["split"], label, row["source"] or "unknown", where=where)


def check_same_film(film: Film, row: dict[str, str]) -> None:
    """Every row of one image must give it the same split and label."""
    label = LABEL_ALIASES.get(row["label"], row["label"])
    if (row["split"], label) != (film.split, film.label):
        raise ValueError(
            f"split/label {row['split']}/{label} disagree with {film.where}: "
            f"{film.split}/{film.label}"
        )


def read_folders(folders: Sequence[Path]) -> tuple[list[Film], list[str]]:
    """Every folder's films and bad-row lines, in the order given."""
    films: list[Film] = []
    bad: list[str] = []
    for folder in folders:
        found, skipped = read_folder(folder)
        films += found
        bad += skipped
    return films, bad


def check_class(film: Film, label_names: Sequence[str]) -> str | None:
    """Why the model cannot score ``film``'s label (None: it can)."""
    wanted = PNEUMONIA_CLASSES if film.label == UNKNOWN_CAUSE else (film.label,)
    unknown = [name for name in wanted if name not in label_names]
    if not unknown:
        return None
    return (
        f"{film.where}: class {film.label!r} is not one the model knows "
        f"({', '.join(label_names)}); film skipped"
    )


def annotated_class(film: Film, label_names: Sequence[str], probabilities: np.ndarray) -> int:
    """The output index of ``film``'s class: for a pneumonia of unknown cause, the likelier of
    Bacterial and Viral Pneumonia on this film."""
    if film.label != UNKNOWN_CAUSE:
        return list(label_names).index(film.label)
    indices = [list(label_names).index(name) for name in PNEUMONIA_CLASSES]
    return max(indices, key=lambda k: probabilities[k])
