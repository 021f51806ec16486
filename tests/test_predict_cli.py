"""The batch CLI: files, folders and globs → CSV of calibrated probabilities + overlays."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from batch.inputs import expand_inputs
from batch.predict import CSV_NAME, main
from imaging.load import load_image
from model.predictor import Predictor
from tests.conftest import REPO, lung5_images


def write_dicom(target: Path, pixels: np.ndarray) -> Path:
    """A minimal uncompressed MONOCHROME2 DX file (no patient data)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of two PNGs, a folder of JPEGs for a glob, one DICOM and one broken file."""
    root = tmp_path_factory.mktemp("inputs")
    images = lung5_images("test", per_class=1)
    pngs = root / "pngs"
    pngs.mkdir()
    for i, source in enumerate(images[:2]):
        Image.open(source).convert("L").save(pngs / f"scan{i}.png")
    jpegs = root / "jpegs"
    jpegs.mkdir()
    for source in images[2:4]:
        shutil.copy(source, jpegs / source.name)
    rng = np.random.default_rng(0)
    dicom = write_dicom(root / "study.dcm", rng.integers(0, 4096, (96, 80)))
    broken = root / "broken.png"
    broken.write_bytes(b"not an image at all")
    return {"root": root, "pngs": pngs, "jpegs": jpegs, "dicom": dicom, "broken": broken}


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / CSV_NAME).open() as handle:
        return list(csv.DictReader(handle))


def test_expand_inputs_takes_files_folders_and_globs_once_each(inputs):
    found = expand_inputs(
        [
            str(inputs["pngs"]),
            str(inputs["jpegs"] / "*.jpg"),
            str(inputs["dicom"]),
            str(inputs["pngs"] / "scan0.png"),  # already listed through its folder
        ]
    )
    assert found == [
        inputs["pngs"] / "scan0.png",
        inputs["pngs"] / "scan1.png",
        *sorted(inputs["jpegs"].glob("*.jpg")),
        inputs["dicom"],
    ]


@pytest.mark.parametrize("spec", ["missing.png", "nowhere/*.png"])
def test_expand_inputs_names_an_input_that_matches_nothing(tmp_path, spec):
    with pytest.raises(FileNotFoundError, match=r"missing\.png|nowhere"):
        expand_inputs([str(tmp_path / spec)])


def test_cli_writes_probabilities_overlays_and_reports_bad_files(
    inputs, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    args = [str(inputs["pngs"]), str(inputs["broken"]), str(inputs["jpegs"] / "*.jpg")]
    args += [str(inputs["dicom"]), "--out", str(out), "--model", str(tiny_checkpoint)]
    status = main([*args, "--batch-size", "2", "--device", "cpu", "--no-progress"])

    assert status == 1  # one input failed, the others still ran
    rows = read_rows(out)
    assert [Path(row["path"]).name for row in rows][:3] == ["scan0.png", "scan1.png", "broken.png"]
    assert [row["status"] for row in rows] == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert "not a readable image" in rows[2]["error"]
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    labels = predictor.config.label_names
    for row in (r for r in rows if r["status"] == "ok"):
        image = load_image(row["path"])
        expected = predictor.predict(image).probabilities
        got = np.array([float(row[label]) for label in labels])
        # 6 decimals: half a step of rounding, plus batches of 2 against 1 (test_batching.py)
        np.testing.assert_allclose(got, expected, atol=0.5e-6 + 1e-5)
        assert row["top_label"] == labels[int(np.argmax(got))]
        drawn = np.asarray(Image.open(row["overlay"]))
        assert drawn.shape == (*image.pixels.shape, 3)
    summary = capsys.readouterr()
    assert "5 of 6 images predicted" in summary.out
    assert "broken.png" in summary.err


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4])
def test_results_do_not_depend_on_batch_size(inputs, tiny_checkpoint, tmp_path, batch_size):
    out = tmp_path / f"b{batch_size}"
    args = [str(inputs["root"]), "--out", str(out), "--model", str(tiny_checkpoint)]
    assert main([*args, "--batch-size", str(batch_size), "--no-progress"]) == 1
    reference = tmp_path / "b2"
    main([*args[:2], str(reference), *args[3:], "--batch-size", "2", "--no-progress"])
    assert read_rows(out) == [
        {**row, "overlay": row["overlay"].replace(str(reference), str(out))}
        for row in read_rows(reference)
    ]


@pytest.mark.slow
def test_runs_as_a_module_and_exits_zero_when_all_succeed(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "module"
    command = [sys.executable, "-m", "batch.predict", str(inputs["pngs"]), "--out", str(out)]
    result = subprocess.run(
        [*command, "--model", str(tiny_checkpoint)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 of 2 images predicted" in result.stdout
    assert "img" in result.stderr  # tqdm's progress bar
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["scan0.png", "scan1.png"]


def test_csv_has_lung_columns_on_good_bad_and_lungless_files(inputs, tiny_checkpoint, tmp_path):
    """lungs_found + lung_share_<class>: the real film gets shares, a flat image (no lungs) and
    the broken file get empty shares; the header lists every class."""
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((200, 180), 128, np.uint8)).save(flat)
    film = inputs["pngs"] / "scan0.png"
    out = tmp_path / "out"
    argv = [str(film), str(flat), str(inputs["broken"]), "--out", str(out)]
    status = main([*argv, "--model", str(tiny_checkpoint), "--device", "cpu", "--no-progress"])
    assert status == 1
    labels = Predictor.load(str(tiny_checkpoint), "cpu").config.label_names
    with (out / CSV_NAME).open() as handle:
        header = next(csv.reader(handle))
    assert header[-6:] == ["lungs_found", *(f"lung_share_{name}" for name in labels)]
    good, lungless, bad = read_rows(out)
    assert good["lungs_found"] == "yes"
    shares = [float(good[f"lung_share_{name}"]) for name in labels]
    assert all(0.0 <= s <= 1.0 for s in shares)
    prediction = Predictor.load(str(tiny_checkpoint), "cpu").predict(load_image(film))
    assert shares == pytest.approx([prediction.lung_share(k) for k in range(5)], abs=1e-4)
    assert lungless["status"] == "ok" and lungless["lungs_found"] == "no"
    assert bad["status"] == "error" and bad["lungs_found"] == ""
    for row in (lungless, bad):
        assert all(row[f"lung_share_{name}"] == "" for name in labels)


def test_csv_warns_for_a_colour_photo_and_a_lateral_dicom_but_not_a_film(tiny_checkpoint, tmp_path):
    from tests.bad_inputs import make_dicom, ramp

    folder = tmp_path / "in"
    folder.mkdir()
    film = folder / "film.png"
    Image.open(lung5_images("test")[0]).convert("L").save(film)
    photo = np.zeros((96, 96, 3), np.uint8)
    photo[..., 0] = 250  # saturated red: the guard's colour check warns
    Image.fromarray(photo).save(folder / "photo.png")
    (folder / "side.dcm").write_bytes(make_dicom(ramp(256, 200), ViewPosition="LL"))
    out = tmp_path / "out"
    main([str(folder), "--out", str(out), "--model", str(tiny_checkpoint), "--no-progress"])
    rows = {Path(row["path"]).name: row for row in read_rows(out)}
    assert rows["film.png"]["warning"] == ""
    assert rows["photo.png"]["warning"].startswith("Not a chest X-ray?")
    assert "colour" in rows["photo.png"]["warning"]
    assert rows["side.dcm"]["warning"].startswith("Not a frontal chest X-ray?")
    assert "lateral" in rows["side.dcm"]["warning"]


def test_no_overlays_writes_the_csv_only(inputs, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = [str(inputs["pngs"]), "--out", str(out), "--model", str(tiny_checkpoint)]
    assert main([*argv, "--no-overlays", "--no-progress"]) == 0
    assert [row["overlay"] for row in read_rows(out)] == ["", ""]
    assert not any((out / "overlays").iterdir())


@pytest.mark.parametrize("flag", [["--num-gpus", "1"], ["--address", "auto"], ["--actors", "2"]])
def test_ray_flags_without_the_ray_engine_are_refused(inputs, tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_:
        main([str(inputs["pngs"]), "--out", str(tmp_path), *flag])
    assert exit_.value.code == 2
    assert "are for --engine ray" in capsys.readouterr().err


def test_heatmaps_writes_every_class_map_at_the_films_own_size(inputs, tiny_checkpoint, tmp_path):
    """``--heatmaps``: one .npz per predicted input, a float32 map per class name equal to the
    Prediction's heatmap (what the overlay shows), and ``crop_box``; none for a failed input."""
    out = tmp_path / "out"
    argv = [str(inputs["pngs"]), str(inputs["broken"]), "--out", str(out), "--device", "cpu"]
    status = main([*argv, "--model", str(tiny_checkpoint), "--heatmaps", "--no-progress"])
    assert status == 1
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["scan0.npz", "scan1.npz"]
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    labels = predictor.config.label_names
    for name in ("scan0", "scan1"):
        prediction = predictor.predict(load_image(inputs["pngs"] / f"{name}.png"))
        box = prediction.box
        with np.load(out / "heatmaps" / f"{name}.npz") as saved:
            assert sorted(saved) == sorted([*labels, "crop_box"])
            assert saved["crop_box"].tolist() == [box.x0, box.y0, box.x1, box.y1]
            for k, label in enumerate(labels):
                assert saved[label].dtype == np.float32
                assert saved[label].shape == prediction.image.pixels.shape
                np.testing.assert_allclose(saved[label], prediction.heatmap(k), atol=1e-4)
