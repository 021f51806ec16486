"""The lesion boxes file (``training.lesions``): rows that are refused and named, files that
cannot be used, and the class a film's boxes are scored for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.config import ModelConfig
from tests.lesion_boxes import box_row, write_boxes
from training.lesions import COLUMNS, BoxesFileError, Film, annotated_class, read_folder


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.1, 0.2, 0.1, 0.2, 0.4], "Viral Pneumonia"),
        ([0.3, 0.4, 0.1, 0.0, 0.2], "Bacterial Pneumonia"),
    ],
)
def test_a_pneumonia_of_unknown_cause_takes_the_likelier_of_bacterial_and_viral(
    probabilities, expected
):
    labels = ModelConfig().label_names
    film = Film(Path("x.jpg"), "test", "Pneumonia", "s")
    assert labels[annotated_class(film, labels, np.array(probabilities))] == expected
    covid = Film(Path("x.jpg"), "test", "COVID-19", "s")
    assert labels[annotated_class(covid, labels, np.array(probabilities))] == "COVID-19"


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (None, COLUMNS, "no boxes.csv"),
        ([], COLUMNS, r"no boxes \(only the header\)"),
        ([], COLUMNS[:6] + COLUMNS[8:], "line 1: missing columns x1, y1"),
    ],
)
def test_an_unusable_boxes_file_names_itself(tmp_path, rows, columns, message):
    if rows is not None:
        write_boxes(tmp_path, rows, columns)
    with pytest.raises(BoxesFileError, match=message) as caught:
        read_folder(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_rows_that_disagree_or_lack_corners_are_named(tmp_path):
    rows = [
        box_row("a.jpg", "test", "Tuberculosis", (1, 1, 20, 20)),
        box_row("a.jpg", "val", "Tuberculosis", (30, 1, 50, 20)),  # another split
        box_row("b.jpg", "test", "Tuberculosis", (20, 1, 10, 20)),  # x1 < x0
        box_row("c.jpg", "holdout", "Tuberculosis", (1, 1, 20, 20)),
        box_row("d.jpg", "test", "Corona Virus Disease", (1, 1, 20, 20)),
    ]
    films_read, bad = read_folder(write_boxes(tmp_path, rows))
    assert [f.path.name for f in films_read] == ["d.jpg"] and films_read[0].label == "COVID-19"
    assert [message.split(": ")[0][-6:] for message in bad] == ["line 3", "line 4", "line 5"]
    assert "disagree with" in bad[0] and "under one pixel" in bad[1] and "'holdout'" in bad[2]
