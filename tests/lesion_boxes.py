"""Writes lesion-box folders' ``boxes.csv`` for the tests (``training.lesions`` reads them)."""

from __future__ import annotations

import csv
from pathlib import Path

from training.lesions import BOXES_FILE, COLUMNS


def box_row(image: str, split: str, label: str, box: tuple, finding: str = "lesion") -> dict:
    x0, y0, x1, y1 = box
    return {
        "image": f"images/{image}",
        "split": split,
        "label": label,
        "finding": finding,
        **{"x0": x0, "y0": y0, "x1": x1, "y1": y1},
        "patient_id": image,
        "source": "tiny",
        "license": "test",
    }


def write_boxes(folder: Path, rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> Path:
    with (folder / BOXES_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder
