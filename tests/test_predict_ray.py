"""``--engine ray``: the local engine's CSV and overlays from Ray Data on a local instance."""

from __future__ import annotations

import csv
import importlib
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

import batch
from batch.predict import RAY_MISSING, main
from batch.prediction_rows import CSV_NAME, csv_header
from tests.bad_inputs import write_bad_inputs
from tests.conftest import lung5_images

BAD = ("empty.png", "notes.png", "cut.png", "tiny.png", "ct.dcm")
NOISE = 1e-5  # between batch sizes, as tests/test_batching.py allows


@pytest.fixture(scope="module")
def ray_module() -> ModuleType:
    """Ray, from requirements-scale.txt (in the dev requirements): without it these tests
    skip, or fail under ``LUNGCAM_REQUIRE_ALL`` (CI)."""
    try:
        return importlib.import_module("ray")
    except ModuleNotFoundError:
        if os.environ.get("LUNGCAM_REQUIRE_ALL"):
            raise
        pytest.skip("Ray is not installed: pip install -r requirements-scale.txt")


@pytest.fixture(scope="module")
def local_ray(ray_module: ModuleType) -> Iterator[None]:
    """A small local Ray instance: 2 CPUs, no dashboard, a 200 MB object store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_DEDUP_LOGS", "0")
        ray_module.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
        )
        yield
        ray_module.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """20 real lung5 films (4 per class) with 5 bad files among them."""
    films = lung5_images("test", per_class=4)
    bad = dict(write_bad_inputs(tmp_path_factory.mktemp("bad")))
    bad_paths = [path for path in bad if path.name in BAD]
    return [str(p) for p in [*films[:7], *bad_paths[:3], *films[7:], *bad_paths[3:]]]


def read(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (out / CSV_NAME).open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def same_at_csv_precision(got: str, want: str) -> bool:
    """Two number cells equal at the CSV's own precision. The engines compute in batches of
    other sizes on other thread counts, so a value differs in float noise (up to ``NOISE``), and
    two such values may round to neighbouring steps of the last decimal (0.5121 and 0.5122)."""
    if not got or not want:
        return got == want
    step = 10.0 ** -min(len(cell.partition(".")[2]) for cell in (got, want))
    return abs(float(got) - float(want)) <= step + NOISE


@pytest.mark.parametrize(
    ("got", "want", "same"),
    [
        ("0.5121", "0.5122", True),  # one step apart after rounding
        ("0.5121", "0.5123", False),
        ("0.123456", "0.123466", True),
        ("0.123456", "0.123486", False),
        ("", "", True),
        ("", "0.5", False),
    ],
)
def test_cells_compare_at_their_own_precision(got, want, same):
    assert same_at_csv_precision(got, want) == same


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_csv_and_overlays(
    local_ray, inputs, tiny_checkpoint, tmp_path
):
    common = ["--model", str(tiny_checkpoint), "--batch-size", "4", "--no-progress"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main([*inputs, "--out", str(local), "--device", "cpu", *common]) == 1
    assert main([*inputs, "--out", str(remote), "--engine", "ray", *common]) == 1

    header, expected = read(local)
    ray_header, got = read(remote)
    assert ray_header == header
    assert [row["path"] for row in got] == inputs  # input order, bad files included
    assert [row["status"] for row in got].count("error") == len(BAD)
    numbers = [c for c in header if c.startswith("lung_share_")] + header[
        5 : header.index("overlay")
    ]
    for want, row in zip(expected, got, strict=True):
        for column in set(header) - {*numbers, "overlay"}:
            assert row[column] == want[column], (row["path"], column)
        assert row["overlay"] == want["overlay"].replace(str(local), str(remote))
        for column in numbers:
            assert same_at_csv_precision(row[column], want[column]), (row["path"], column)
    for row in (r for r in got if r["status"] == "ok"):
        drawn = np.asarray(Image.open(row["overlay"]))
        assert drawn.shape[2] == 3 and drawn.shape[:2] == Image.open(row["path"]).size[::-1]


def test_decode_and_actor_without_overlays_in_process(
    ray_module, inputs, tiny_checkpoint, tmp_path
):
    """The two stages as plain calls (no cluster): a bad file's reason passes through, and
    without overlay names no overlay is drawn."""
    from batch.predict_ray import Job, PredictActor, decode

    paths = [inputs[0], inputs[7]]  # a film, then empty.png
    batch = {"index": np.arange(2), "path": np.array(paths), "source": np.array(paths)}
    decoded = decode({**batch, "overlay": np.array(["", ""]), "heatmap": np.array(["", ""])})
    assert decoded["error"][0] == "" and "empty" in decoded["error"][1]
    actor = PredictActor(Job(str(tiny_checkpoint), tmp_path), tmp_path / "overlays", "cpu")
    film, bad = actor(decoded)["cells"]
    assert film[:2] == [paths[0], "ok"] and bad[:2] == [paths[1], "error"]
    overlay = csv_header(actor.predictor.config.label_names).index("overlay")
    assert film[overlay] == "" and not any(tmp_path.iterdir())


def test_missing_ray_is_one_line_naming_the_install_command(
    monkeypatch, inputs, tiny_checkpoint, tmp_path, capsys
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    monkeypatch.delitem(sys.modules, "batch.predict_ray", raising=False)
    monkeypatch.delattr(batch, "predict_ray", raising=False)  # so it is imported again
    argv = [inputs[0], "--out", str(tmp_path), "--model", str(tiny_checkpoint), "--engine", "ray"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == RAY_MISSING + "\n"
    assert "pip install -r requirements-scale.txt" in err
    assert not (tmp_path / CSV_NAME).exists()


def test_actor_saves_the_same_heatmaps_as_the_local_engine(
    ray_module, inputs, tiny_checkpoint, tmp_path
):
    from batch.predict_ray import Job, PredictActor, decode
    from batch.prediction_rows import save_heatmaps

    batch = {"index": np.arange(1), "path": np.array(inputs[:1]), "source": np.array(inputs[:1])}
    decoded = decode({**batch, "overlay": np.array([""]), "heatmap": np.array(["film.npz"])})
    (tmp_path / "heatmaps").mkdir()
    actor = PredictActor(Job(str(tiny_checkpoint), tmp_path), tmp_path / "overlays", "cpu")
    actor(decoded)
    image = pickle.loads(decoded["image"][0])
    save_heatmaps(actor.predictor.predict(image), tmp_path / "local.npz")
    with (
        np.load(tmp_path / "heatmaps" / "film.npz") as got,
        np.load(tmp_path / "local.npz") as want,
    ):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
