"""``python -m training.localize`` end to end on a tiny lesion folder with a random-weight model
that crops to the lung fields: the report, the map it scores, the prior, bad rows and bad
arguments."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explain import localization as loc
from imaging.load import load_image
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.network import create_network
from model.predictor import Predictor
from tests.conftest import lung5_images
from tests.lesion_boxes import box_row, write_boxes
from training.lesions import BOXES_FILE, COLUMNS
from training.localize import PRIOR, main, parse_method


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gradcam", ("Grad-CAM", None)),
        ("Grad-CAM++", ("Grad-CAM++", None)),
        ("layercam@denseblock3", ("LayerCAM", "features.denseblock3")),
        ("HiResCAM@features.denseblock2", ("HiResCAM", "features.denseblock2")),
        ("scorecam@4", ("Score-CAM", "features.denseblock4")),
    ],
)
def test_method_specs(spec, expected):
    assert parse_method(spec) == expected


# (split, label, boxes as shares of the film's width and height, finding of each box)
PLAN = [
    ("train", "Tuberculosis", [(0.2, 0.1, 0.45, 0.35)]),
    ("train", "Tuberculosis", [(0.55, 0.15, 0.8, 0.4)]),
    ("train", "Tuberculosis", [(0.2, 0.2, 0.4, 0.4), (0.6, 0.2, 0.8, 0.4)]),
    ("train", "Corona Virus Disease", [(0.1, 0.3, 0.45, 0.9)]),
    ("train", "Viral Pneumonia", [(0.55, 0.3, 0.9, 0.9)]),
    ("test", "Tuberculosis", [(0.2, 0.1, 0.45, 0.35), (0.6, 0.5, 0.8, 0.7)]),
    ("test", "Tuberculosis", [(0.55, 0.15, 0.8, 0.4)]),
    ("test", "Corona Virus Disease", [(0.1, 0.3, 0.45, 0.9), (0.55, 0.3, 0.9, 0.9)]),
    ("test", "Pneumonia", [(0.15, 0.4, 0.45, 0.85)]),
    ("test", "Viral Pneumonia", [(0.55, 0.3, 0.9, 0.9)]),
]
FINDINGS = ("Active", "Obsolete")


def plan_rows(images: list[Path], plan: list = PLAN) -> list[dict]:
    rows = []
    for path, (split, label, boxes) in zip(images, plan, strict=True):
        width, height = Image.open(path).size
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            box = (x0 * width, y0 * height, x1 * width, y1 * height)
            finding = FINDINGS[k % 2] if label == "Tuberculosis" else "GGO"
            rows.append(box_row(path.name, split, label, box, finding))
    return rows


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Ten real lung5 films (two per class) in a folder's ``images/``."""
    folder = tmp_path_factory.mktemp("films") / "images"
    folder.mkdir()
    return [Path(shutil.copy(path, folder / path.name)) for path in lung5_images("test", 2)]


def lesion_folder(root: Path, films: list[Path], rows: list[dict]) -> Path:
    (root / "images").mkdir(parents=True)
    for film in films:
        shutil.copy(film, root / "images" / film.name)
    return write_boxes(root, rows)


@pytest.fixture(scope="module")
def crop_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights that crop to the lung fields (as the bundled model does), 64 px input."""
    config = ModelConfig(input_size=(3, 64, 64), lung_crop_margin=0.08, version="random-crop")
    return save_checkpoint(create_network(config), config, tmp_path_factory.mktemp("crop") / "m")


def localize(folder: Path, model: Path, out: Path, *extra: str) -> int:
    argv = ["--model", str(model), "--data", str(folder), "--out", str(out), "--device", "cpu"]
    return main([*argv, "--resamples", "200", "--no-progress", *extra])


@pytest.fixture(scope="module")
def run(films, crop_checkpoint, tmp_path_factory) -> tuple[int, Path, Path]:
    root = tmp_path_factory.mktemp("run")
    folder = lesion_folder(root / "lesions", films, plan_rows(films))
    out = root / "out"
    methods = ["--methods", "gradcam", "layercam@3"]
    status = localize(folder, crop_checkpoint, out, *methods, "--batch-size", "1")
    return status, folder, out


def test_cli_writes_localization_json_plots_and_priors(run):
    status, _, out = run
    assert status == 0
    report = json.loads((out / "localization.json").read_text())
    for key in ("model", "split", "films", "boxes", "maps", "prior", "overall", "per_class"):
        assert key in report
    assert {"per_source", "per_finding", "per_film", "skipped", "bootstrap"} <= set(report)
    assert report["split"] == "test" and report["films"] == 5 and report["boxes"] == 7
    assert report["skipped"] == []
    assert report["maps"] == [
        "Grad-CAM @ denseblock4 · annotated class",
        "Grad-CAM @ denseblock4 · top class",
        "LayerCAM @ denseblock3 · annotated class",
        "LayerCAM @ denseblock3 · top class",
        "baseline: flat image",
        "baseline: flat crop",
        "baseline: centre Gaussian",
        PRIOR,
    ]
    assert set(report["per_class"]) == {"COVID-19", "Pneumonia", "Tuberculosis", "Viral Pneumonia"}
    assert set(report["per_finding"]) == {"Active", "Obsolete", "GGO"}
    assert report["prior"]["classes"]["Tuberculosis"] == {"films": 3, "boxes": 4}
    assert report["prior"]["pooled_for"] == ["Pneumonia"]
    block = report["overall"]["Grad-CAM @ denseblock4 · annotated class"]
    for measure in loc.MEASURES:
        cell = block["scores"][measure]
        assert cell["n"] == 5 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
        assert 0.0 <= cell["mean"] <= 1.0
    assert report["overall"][PRIOR]["lift_over_prior"] is None
    for name in ("localization.png", "best_worst.png", "location_prior.npz"):
        assert (out / name).stat().st_size > 0


def test_cli_scores_the_map_the_app_shows(run, crop_checkpoint):
    """The annotated class's Grad-CAM scored by the CLI is the Prediction's own heatmap (the
    app's placement in the film's frame) scored against the film's boxes."""
    _, _, out = run
    report = json.loads((out / "localization.json").read_text())
    film = next(f for f in report["per_film"] if f["label"] == "Tuberculosis")
    prediction = Predictor.load(str(crop_checkpoint), "cpu").predict(load_image(film["image"]))
    assert prediction.cropped and film["crop_box"] == [
        prediction.box.x0,
        prediction.box.y0,
        prediction.box.x1,
        prediction.box.y1,
    ]
    rows = [r for r in csv.DictReader((Path(film["image"]).parents[1] / BOXES_FILE).open())]
    boxes = [
        tuple(float(r[c]) for c in ("x0", "y0", "x1", "y1"))
        for r in rows
        if r["image"].endswith(Path(film["image"]).name)
    ]
    mask = loc.box_mask(boxes, prediction.image.pixels.shape)
    k = prediction.class_index("Tuberculosis")
    expected = loc.score_map(prediction.heatmap(k), mask)
    got = film["scores"]["Grad-CAM @ denseblock4 · annotated class"]
    assert got == pytest.approx(expected, abs=1e-6)
    lift = film["lift_over_prior"]["Grad-CAM @ denseblock4 · annotated class"]["energy"]
    assert lift == pytest.approx(expected["energy"] - film["scores"][PRIOR]["energy"])
    assert film["findings"] == ["Active", "Obsolete"]


def test_the_prior_is_built_from_the_training_split_only(run, films, crop_checkpoint, tmp_path):
    _, _, out = run
    with np.load(out / "location_prior.npz") as saved:
        reference = dict(saved)
    moved = [
        (s, "Tuberculosis" if s == "test" else lab, [(0.0, 0.6, 0.3, 0.99)] if s == "test" else b)
        for s, lab, b in PLAN
    ]
    changed = lesion_folder(tmp_path / "test-moved", films, plan_rows(films, moved))
    assert localize(changed, crop_checkpoint, tmp_path / "a", "--methods", "gradcam") == 0
    with np.load(tmp_path / "a" / "location_prior.npz") as saved:
        assert set(saved) == set(reference)
        for name, prior in saved.items():
            np.testing.assert_array_equal(prior, reference[name])
    train_moved = [(s, lab, [(0.0, 0.6, 0.3, 0.99)] if s == "train" else b) for s, lab, b in PLAN]
    other = lesion_folder(tmp_path / "train-moved", films, plan_rows(films, train_moved))
    assert localize(other, crop_checkpoint, tmp_path / "b", "--methods", "gradcam") == 0
    with np.load(tmp_path / "b" / "location_prior.npz") as saved:
        assert not np.array_equal(saved["Tuberculosis"], reference["Tuberculosis"])


def test_bad_rows_are_listed_and_skipped(films, crop_checkpoint, tmp_path, capsys):
    rows = plan_rows(films)
    folder = lesion_folder(tmp_path / "lesions", films, rows)
    (folder / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    width, height = Image.open(films[6]).size
    bad = [
        box_row("broken.jpg", "test", "Tuberculosis", (1, 1, 20, 20)),  # line N+2
        box_row(films[6].name, "test", "Tuberculosis", (10, 10, width + 40, 50)),  # outside
        {**box_row(films[9].name, "test", "Sarcoidosis", (10, 10, 60, 60))},  # unknown class
        {**box_row(films[5].name, "test", "Tuberculosis", (10, 10, 60, 60)), "x1": "wide"},
    ]
    rows = [r for r in rows if r["image"] not in {bad[k]["image"] for k in (1, 2, 3)}]
    write_boxes(folder, rows + bad)
    assert localize(folder, crop_checkpoint, tmp_path / "out", "--methods", "gradcam") == 1
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "localization.json").read_text())
    first_bad = len(rows) + 2
    expected = [
        (first_bad + 3, "not numbers"),
        (first_bad + 2, "'Sarcoidosis' is not one the model knows"),
        (first_bad, "broken.jpg"),
        (first_bad + 1, f"lies outside the {width}×{height} image"),
    ]
    assert len(report["skipped"]) == 4
    for (line, words), reported in zip(expected, report["skipped"], strict=True):
        assert f"{BOXES_FILE} line {line}: " in reported and words in reported
        assert reported in err and "film skipped" in reported
    assert report["films"] == 2  # the test films with only good rows


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradkam"], "unknown method 'gradkam'"),
        (["--methods", "gradcam@denseblock9"], "unknown layer"),
        (["--split", "val"], "no films with boxes in the val split"),
        (["--batch-size", "0"], "at least 1"),
        (["--split", "holdout"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run, tiny_checkpoint, tmp_path, capsys, extra, message):
    _, folder, _ = run
    with pytest.raises(SystemExit) as stopped:
        localize(folder, tiny_checkpoint, tmp_path, *extra)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("columns", [COLUMNS, COLUMNS[1:]])
def test_a_folder_without_usable_boxes_exits_2(tiny_checkpoint, tmp_path, capsys, columns):
    if columns != COLUMNS:
        write_boxes(tmp_path, [], columns)
    with pytest.raises(SystemExit) as stopped:
        localize(tmp_path, tiny_checkpoint, tmp_path / "out")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and ("no boxes.csv" in err or "missing columns image" in err)
