"""One batch input's outcome and how it is written: the CSV line, the overlay PNG and the maps.

Shared by both engines of ``python -m batch.predict``: the local loop (``batch.predict``) and
Ray Data (``batch.predict_ray``), so that the two write the same file byte for byte.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from explain.verdict import headline, input_warnings
from imaging.overlay import overlay
from model import lung_share
from model.crop import CropBox
from model.prediction import Prediction

CSV_NAME = "predictions.csv"
OVERLAY_DIR = "overlays"
HEATMAP_DIR = "heatmaps"
CROP_BOX_KEY = "crop_box"


@dataclass
class Row:
    """One input's outcome: a prediction and its overlay, or the reason it failed."""

    path: Path
    prediction: Prediction | None = None
    overlay: Path | None = None
    error: str = ""


def csv_header(labels: Sequence[str]) -> list[str]:
    """The CSV's columns: path, status, warning, top label, conformal set, one probability per
    class, overlay, error, then ``lungs_found`` and one ``lung_share_<class>`` per class."""
    head = ["path", "status", "warning", "top_label", "prediction_set", *labels]
    return [*head, "overlay", "error", *lung_share.csv_header(list(labels))]


def csv_cells(row: Row, classes: int) -> list[str]:
    """``row`` as the CSV's cells (``csv_header``'s order); probabilities to 6 decimals."""
    lungs = lung_share.csv_cells(row.prediction, classes)
    if row.prediction is None:
        return [str(row.path), "error", "", "", "", *[""] * classes, "", row.error, *lungs]
    prediction = row.prediction
    probabilities = [f"{p:.6f}" for p in prediction.probabilities]
    shown = "|".join(prediction.prediction_set or [])
    drawn = "" if row.overlay is None else str(row.overlay)
    head = [str(row.path), "ok", warning_cell(prediction), prediction.top_label, shown]
    return [*head, *probabilities, drawn, "", *lungs]


def write_lines(lines: Iterable[Sequence[str]], labels: Sequence[str], target: Path) -> None:
    """The header, then one line of ``csv_cells`` per input, in the order given."""
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header(labels))
        writer.writerows(lines)


def write_csv(rows: Sequence[Row], labels: Sequence[str], target: Path) -> None:
    """One line per input (see ``csv_header``)."""
    write_lines((csv_cells(row, len(labels)) for row in rows), labels, target)


def failures(lines: Iterable[Sequence[str]], labels: Sequence[str]) -> list[tuple[str, str]]:
    """(path, reason) of every line whose status is ``error``."""
    header = csv_header(labels)
    status, error = header.index("status"), header.index("error")
    return [(line[0], line[error]) for line in lines if line[status] == "error"]


def warning_cell(prediction: Prediction) -> str:
    """The CSV's ``warning``: "" when the image looks like a frontal chest X-ray, else the
    headline the screen shows instead of the class ("Not a chest X-ray?", "Not a frontal
    chest X-ray?") and the reasons, so nobody reads ``top_label`` as a diagnosis."""
    title = headline(prediction.image, prediction.ood)
    reasons = input_warnings(prediction.image, prediction.ood)
    if title is None and not reasons:
        return ""
    return " ".join([title or "Warning:", *reasons])


def draw_overlay(prediction: Prediction, target: Path, opacity: float, colormap: str) -> None:
    """Save the top class's heatmap over the image, at the image's own resolution."""
    heat = prediction.heatmap(prediction.top_index)
    Image.fromarray(overlay(prediction.image.pixels, heat, opacity, colormap)).save(target)


def heatmap_name(overlay_name: str) -> str:
    """The ``.npz`` of maps beside an input's overlay: the overlay's name, ``.npz`` suffix."""
    return str(Path(overlay_name).with_suffix(".npz"))


def save_heatmaps(prediction: Prediction, target: Path) -> None:
    """Every class's heatmap at the image's own size, as the overlay shows it (float32 in
    [0, 1], 0 outside the crop; one array per class name) and ``crop_box``, the part of the
    image the network saw (x0, y0, x1, y1 in pixels; the whole image when it saw all), in one
    compressed ``.npz`` for scoring with other tools."""
    box = prediction.box or CropBox.whole(prediction.image.pixels)
    maps = {name: prediction.heatmap(k) for k, name in enumerate(prediction.label_names)}
    corners = np.array([box.x0, box.y0, box.x1, box.y1], dtype=np.int64)
    np.savez_compressed(target, **maps, **{CROP_BOX_KEY: corners})
