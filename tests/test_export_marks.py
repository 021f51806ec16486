"""``python -m review.export_marks``: reviews with marks and stored images → a lesion-box folder
that ``training.lesions`` reads and ``python -m training.localize`` scores, with the same
scores the app stored at each save; no patient identifier in it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imaging.load import load_image
from model.predictor import Predictor
from review.export_marks import main as export_main
from review.marks import marks_text
from review.store import ReviewStore, draft_from_prediction, pixels_sha256
from tests.conftest import lung5_images
from training.lesions import BOXES_FILE, read_folder
from training.localize import main as localize_main


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(str(tiny_checkpoint), "cpu")


# (film, agreement, correct class, marks, store the image?)
PLAN = [
    (0, "agree", None, [[40, 60, 200, 220], [300.5, 100, 420, 300]], True),
    (3, "disagree", "COVID-19", [[100, 120, 380, 400]], True),
    (1, "agree", None, [[10, 10, 60, 60]], False),  # marked, image not stored: left out
    (2, "agree", None, [], True),  # image stored, no marks: not a lesion film
]


@pytest.fixture(scope="module")
def reviewed(predictor, tmp_path_factory) -> tuple[Path, dict]:
    """A SQLite store with the plan's reviews, each shown class the class the reviewer sees."""
    data = tmp_path_factory.mktemp("marks-store")
    store = ReviewStore.open(data, f"sqlite:///{data / 'reviews.sqlite'}")
    saved = {}
    for film, agreement, correct, marks, keep in PLAN:
        path = lung5_images("test")[film]
        prediction = predictor.predict(load_image(path))
        draft = draft_from_prediction(
            prediction,
            predictor.config,
            shown_class=correct,  # None: the top class, whose map the agreeing reviewer saw
            agreement=agreement,
            correct_class=correct,
            heatmap_usefulness=None,
            heatmap_wrong_place=False,
            note="",
            reviewer=f"dr {film}",
            marks=json.dumps(marks),
        )
        review, _ = store.add(draft, prediction.image.pixels if keep else None)
        saved[review.review_id] = (review, path)
    store.close()
    return data, saved


def export(data: Path, out: Path, *extra: str) -> int:
    """The CLI on the store: its URL, and the data folder that holds its stored images."""
    url = f"sqlite:///{data / 'reviews.sqlite'}"
    return export_main(["--database", url, "--data-dir", str(data), "--out", str(out), *extra])


def test_the_export_is_a_lesion_folder_of_the_marked_stored_films(reviewed, tmp_path, capsys):
    data, saved = reviewed
    assert export(data, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "2 marked films written" in captured.out
    assert "1 marked reviews left out: their image was not stored" in captured.err
    films, bad = read_folder(tmp_path / "out")
    assert bad == [] and len(films) == 2
    expected = {
        review.reviewer: review
        for review, _ in saved.values()
        if review.marks and review.image_path is not None
    }
    for film in films:
        review = expected[film.source]
        assert film.split == "test" and [list(box) for box in film.corners] == review.marks
        assert film.label == (review.correct_class or review.predicted_class)
        assert film.findings().keys() == {"reviewer mark"}
        pixels = np.asarray(Image.open(film.path))
        assert pixels_sha256(pixels) == review.image_sha256  # the frame the marks are in
        assert film.outside((pixels.shape[1], pixels.shape[0])) == []


def test_no_file_name_or_review_id_leaves_the_store(reviewed, tmp_path):
    data, saved = reviewed
    export(data, tmp_path / "out")
    written = [p.name for p in (tmp_path / "out").rglob("*")]
    text = (tmp_path / "out" / BOXES_FILE).read_text()
    for review_id, (_, path) in saved.items():
        assert review_id not in text and all(review_id not in name for name in written)
        assert path.stem not in text and all(path.stem not in name for name in written)
    rows = text.splitlines()[1:]
    assert len(rows) == 3 and all(",,dr " in row for row in rows)  # patient_id left empty


def test_training_localize_scores_the_export_as_the_app_scored_each_save(
    reviewed, tiny_checkpoint, predictor, tmp_path
):
    """The export in the train split (for the location prior) and the test split, scored by
    the CLI: the annotated and the top class's Grad-CAM hit and energy, and the flat map's
    energy, are the scores stored with each review."""
    data, saved = reviewed
    export(data, tmp_path / "prior", "--split", "train")
    export(data, tmp_path / "test")
    out = tmp_path / "localize"
    argv = ["--model", str(tiny_checkpoint), "--data", str(tmp_path / "prior")]
    argv += [
        str(tmp_path / "test"),
        "--split",
        "test",
        "--out",
        str(out),
        "--methods",
        "gradcam",
        "--device",
        "cpu",
    ]
    assert localize_main([*argv, "--resamples", "50", "--no-progress"]) == 0
    report = json.loads((out / "localization.json").read_text())
    layer = predictor.config.target_layer.split(".")[-1]
    by_boxes = {
        marks_text(review.marks): review for review, _ in saved.values() if review.image_path
    }
    films, _ = read_folder(tmp_path / "test")
    boxes = {str(film.path): film.corners for film in films}
    assert report["films"] == 2
    for film in report["per_film"]:
        review = by_boxes[marks_text(boxes[film["image"]])]
        scores = film["scores"]
        annotated = scores[f"Grad-CAM @ {layer} · annotated class"]
        top = scores[f"Grad-CAM @ {layer} · top class"]
        assert (annotated["hit"], top["hit"]) == pytest.approx((review.hit_shown, review.hit_top))
        assert annotated["energy"] == pytest.approx(review.energy_shown, abs=1e-6)
        assert top["energy"] == pytest.approx(review.energy_top, abs=1e-6)
        assert scores["baseline: flat image"]["energy"] == pytest.approx(review.energy_flat)
