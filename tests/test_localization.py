"""Heatmaps against lesion boxes: the measures on synthetic maps, the boxes file's checks, and
``python -m training.localize`` end to end on a tiny lesion folder with a random-weight model."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.filters import threshold_otsu

from explain import localization as loc
from imaging.load import load_image
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.crop import CropBox
from model.network import create_network
from model.predictor import Predictor
from tests.conftest import lung5_images
from training.lesions import (
    BOXES_FILE,
    COLUMNS,
    BoxesFileError,
    Film,
    annotated_class,
    read_folder,
)
from training.localize import PRIOR, main, parse_method

SHAPE = (100, 100)
BOX = (20.0, 30.0, 50.0, 60.0)  # pixel centres 20.5 … 49.5: 30 × 30 = 900 pixels


def test_box_mask_counts_a_pixel_when_its_centre_is_inside():
    mask = loc.box_mask([(0.4, 0.4, 1.6, 1.6)], (3, 3))
    assert mask.tolist() == [[True, True, False], [True, True, False], [False] * 3]
    assert loc.box_mask([BOX], SHAPE).sum() == 900


def test_a_map_peaked_inside_the_box_hits_with_the_known_energy_and_iou():
    mask = loc.box_mask([BOX], SHAPE)
    heat = np.full(SHAPE, 0.1, np.float32)
    heat[mask] = 1.0
    heat[45, 35] = 1.5  # the single maximum, inside
    inside = 899 * 1.0 + 1.5
    scores = loc.score_map(heat, mask)
    assert scores["hit"] == 1.0
    assert scores["energy"] == pytest.approx(inside / (inside + 0.1 * 9100), rel=1e-6)
    assert scores["iou_otsu"] == 1.0  # Otsu separates the box from the floor
    assert scores["iou_top20"] == pytest.approx(0.09)  # the floor ties at the 80th percentile
    heat[5, 5] = 2.0  # now the maximum lies outside
    assert loc.score_map(heat, mask)["hit"] == 0.0


def test_a_gaussian_peaked_in_the_box_beats_every_flat_measure():
    mask = loc.box_mask([BOX], SHAPE)
    ys, xs = np.mgrid[0:100, 0:100] + 0.5
    heat = np.exp(-((xs - 35) ** 2 + (ys - 45) ** 2) / (2 * 8.0**2)).astype(np.float32)
    scores = loc.score_map(heat, mask)
    flat = loc.score_map(loc.flat_map(SHAPE), mask)
    assert scores["hit"] == 1.0
    assert all(scores[m] > flat[m] for m in loc.MEASURES)


def test_a_flat_map_scores_the_boxs_area_share_everywhere():
    mask = loc.box_mask([BOX], SHAPE)
    scores = loc.score_map(loc.flat_map(SHAPE), mask)
    assert scores == pytest.approx({m: 0.09 for m in loc.MEASURES})


def test_tied_maxima_count_fractionally():
    mask = loc.box_mask([BOX], SHAPE)
    heat = np.zeros(SHAPE, np.float32)
    for row, col in ((40, 30), (5, 5), (90, 90), (5, 90)):  # one of four maxima inside
        heat[row, col] = 1.0
    assert loc.pointing_hit(heat, mask) == 0.25


def test_a_flat_crop_map_scores_the_boxs_share_of_the_crop():
    crop = CropBox(10, 20, 70, 80)  # 60 × 60; the box lies inside it
    heat = loc.flat_crop_map(SHAPE, crop)
    mask = loc.box_mask([BOX], SHAPE)
    assert heat.sum() == 3600
    assert loc.pointing_hit(heat, mask) == pytest.approx(900 / 3600)
    assert loc.energy_share(heat, mask) == pytest.approx(900 / 3600)


@pytest.mark.parametrize("kind", ["uniform", "peaked", "plateau", "float64", "two-valued"])
def test_otsu_threshold_equals_scikit_images(kind):
    rng = np.random.default_rng(len(kind))
    values = {
        "uniform": rng.random((64, 80), dtype=np.float32),
        "peaked": rng.random((50, 50)).astype(np.float32) ** 4,
        "plateau": np.where(rng.random((40, 40)) < 0.7, 0.0, rng.random((40, 40))),
        "float64": rng.normal(0.3, 0.1, (30, 70)),
        "two-valued": np.repeat([0.2, 0.9], 50).reshape(10, 10),
    }[kind]
    assert loc.numpy_otsu(values) == float(threshold_otsu(values))
    assert loc.otsu_threshold(values) == float(threshold_otsu(values))


def test_without_scikit_image_the_numpy_otsu_stands_in(monkeypatch):
    values = np.random.default_rng(1).random((40, 40)) ** 2
    monkeypatch.setitem(sys.modules, "skimage.filters", None)  # as if not installed
    assert loc.otsu_threshold(values) == float(threshold_otsu(values))


def test_otsu_of_a_constant_map_is_its_value_and_its_mask_keeps_everything():
    assert loc.numpy_otsu(np.full((4, 4), 0.3)) == pytest.approx(0.3)
    assert loc.otsu_mask(np.full((4, 4), 0.3)).all()


def test_bad_maps_and_empty_masks_are_refused():
    mask = loc.box_mask([BOX], SHAPE)
    with pytest.raises(ValueError, match="same 2-D shape"):
        loc.score_map(np.ones((10, 10)), mask)
    with pytest.raises(ValueError, match="NaN"):
        loc.score_map(np.full(SHAPE, np.nan), mask)
    with pytest.raises(ValueError, match="empty"):
        loc.score_map(np.ones(SHAPE), np.zeros(SHAPE, bool))


def test_the_location_prior_averages_films_in_their_crop_frames():
    crops = [CropBox(0, 0, 100, 100), CropBox(50, 50, 150, 150)]
    films = [[(0, 0, 50, 50)], [(50, 50, 100, 100)]]  # the same upper-left quarter of each crop
    framed = [
        [loc.to_crop_frame(b, c) for b in boxes] for boxes, c in zip(films, crops, strict=True)
    ]
    prior = loc.location_prior(framed, grid=8)
    assert prior[:4, :4].tolist() == [[1.0] * 4] * 4 and prior[4:, :].sum() == 0
    half = loc.location_prior([framed[0], [(0.5, 0.5, 1.0, 1.0)]], grid=8)
    assert half[0, 0] == half[7, 7] == 0.5
    placed = loc.place_prior(prior, (200, 200), CropBox(100, 100, 200, 200))
    assert placed[:100].sum() == 0 and placed[100:140, 100:140].min() == 1.0  # bilinear at the edge


def test_bootstrap_interval_holds_the_mean_and_a_constant_is_exact():
    values = np.random.default_rng(0).random(40)
    low, high = loc.bootstrap_interval(values, resamples=500)
    assert low < values.mean() < high
    assert loc.summarise([0.25] * 5)["ci95"] == [0.25, 0.25]
    assert loc.summarise([]) == {"n": 0, "mean": None, "ci95": None}


def test_lift_over_the_prior_is_paired_per_film():
    films = [
        {"map": dict.fromkeys(loc.MEASURES, v), PRIOR: dict.fromkeys(loc.MEASURES, p)}
        for v, p in ((0.9, 0.5), (0.3, 0.2), (0.6, 0.6))
    ]
    report = loc.group_report(films, PRIOR, resamples=200)
    assert report["map"]["scores"]["hit"]["mean"] == pytest.approx(0.6)
    assert report["map"]["lift_over_prior"]["energy"]["mean"] == pytest.approx(0.5 / 3)
    assert report[PRIOR]["lift_over_prior"] is None


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


# --- the boxes file and the CLI on a tiny folder -------------------------------------------


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
