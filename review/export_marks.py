"""Reviewers' marks as a lesion-box folder, so ``training.localize`` scores any model against a
site's own reviewers:

    python -m review.export_marks --database postgresql://user@host/lungcam --data-dir data \
        --out marks
    python -m training.localize --data ../shared/data/lesions marks --split test --out runs/ours

Writes, for every review with marks whose image was stored, ``OUT/images/<hash>.png`` (the
stored pixels, the frame the marks are in) and one ``OUT/boxes.csv`` row per mark, in
``../shared/data/lesions``' layout (``training.lesions``): the label the reviewer gave (the
model's class when they agreed, else the correct class), the finding "reviewer mark", the
reviewer as source. No patient identifier is written: the store holds pixels, never file names
or DICOM headers, and each file is named after a hash of its review id. Every film goes into
one split (``--split``, default test); ``training.localize`` then takes its location prior from
another folder's training split, e.g. the public boxes above. ``--data-dir`` is the app's data
folder, where the stored images are (also when the reviews are in PostgreSQL).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import sys
from pathlib import Path

from explain.localization import BOXES_FILE, COLUMNS, SPLITS
from review.cli import add_store_arguments, open_store
from review.marks import compact
from review.store import Review, ReviewStore

FINDING = "reviewer mark"
LICENSE = "local review"


def film_name(review: Review) -> str:
    """The exported image's path in the folder: a hash of the review id, nothing else."""
    return f"images/{hashlib.sha256(review.review_id.encode()).hexdigest()[:16]}.png"


def reviewed_class(review: Review) -> str:
    """The class the reviewer sees: the model's when they agree, else the one they gave."""
    return review.predicted_class if review.agrees else review.correct_class or ""


def box_rows(review: Review, split: str) -> list[dict[str, object]]:
    """The ``boxes.csv`` rows of one review's marks."""
    fields = {
        "image": film_name(review),
        "split": split,
        "label": reviewed_class(review),
        "finding": FINDING,
        "patient_id": "",
        "source": review.reviewer,
        "license": LICENSE,
    }
    corners = ("x0", "y0", "x1", "y1")
    return [
        fields | {c: compact(v) for c, v in zip(corners, box, strict=True)}
        for box in review.marks or []
    ]


def export_marks(store: ReviewStore, out: str | Path, split: str = "test") -> tuple[int, int]:
    """Write the marked reviews whose image was stored into ``out``; returns (films written,
    marked reviews left out because their image was not stored)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    marked = [review for review in store.list() if review.marks]
    rows: list[dict[str, object]] = []
    films = 0
    for review in sorted(marked, key=lambda r: r.id):
        stored = store.image_file(review)
        if stored is None or not stored.is_file():
            continue
        shutil.copyfile(stored, folder / film_name(review))
        rows += box_rows(review, split)
        films += 1
    with (folder / BOXES_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return films, len(marked) - films


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export_marks", description="Reviewers' marks as a lesion-box folder."
    )
    add_store_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split of every film")
    args = parser.parse_args(argv)
    store = open_store(parser, args)
    try:
        films, left_out = export_marks(store, args.out, args.split)
    finally:
        store.close()
    print(f"{films} marked films written to {args.out} ({BOXES_FILE}, images/)")
    if left_out:
        print(f"{left_out} marked reviews left out: their image was not stored", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
