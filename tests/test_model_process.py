"""The model in its own process (serving/model_process.py): the same results as in this
process, errors that cross over as themselves, and a server that outlives the model's crash."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

import app
from imaging.load import load_image
from model.predictor import Predictor
from serving.model_process import VIEWS, LocalModel, ModelProcess, ModelUnavailable, _sendable
from serving.runtime import free_port
from tests.conftest import BUNDLED_MODEL, REPO

EXAMPLES = sorted((REPO / "assets" / "examples").glob("*.jpg"))[:3]
LAYER = "features.denseblock4"


@pytest.fixture(scope="module")
def local() -> LocalModel:
    return LocalModel(Predictor.load(str(BUNDLED_MODEL), "cpu"))


@pytest.fixture(scope="module")
def remote() -> ModelProcess:
    model = ModelProcess()
    model.load(str(BUNDLED_MODEL), "cpu")
    model.wait_loaded(timeout=300)
    yield model
    model.close()


SERVER_SIDE = f"""
import sys
import app
from imaging.load import load_image
from serving.model_process import ModelProcess
model = ModelProcess()
model.load({str(BUNDLED_MODEL)!r}, "cpu")
prediction = model.predict(load_image({str(EXAMPLES[0])!r}))
model.call("contrast_overlay", prediction, "COVID-19", "Normal", 0.5, "jet", False)
try:
    model.call("contrast_overlay", prediction, "Flu", "Normal", 0.5, "jet", False)
except ValueError:
    pass
model.close()
print(prediction.top_label, sorted(m for m in ("torch", "timm") if m in sys.modules))
"""


@pytest.mark.slow
def test_the_server_side_never_imports_torch():
    """Importing the app, predicting, an Explain view and an error: no torch, no timm here."""
    out = subprocess.run(
        [sys.executable, "-c", SERVER_SIDE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]")


def test_config_is_read_from_the_folder_before_the_weights_load():
    model = ModelProcess()
    try:
        model.load(str(BUNDLED_MODEL), "cpu")
        start = time.perf_counter()
        labels = model.config.label_names
        assert time.perf_counter() - start < 1.0  # no wait for torch and the weights
        assert len(labels) == 5 and "Normal" in labels
    finally:
        model.close()


@pytest.mark.slow
def test_predictions_equal_those_made_in_this_process(local, remote):
    images = [load_image(path) for path in EXAMPLES]
    here, there = local.predict_many(images), remote.predict_many(images)
    assert len(there) == len(images)
    for a, b in zip(here, there, strict=True):
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-6)
        np.testing.assert_allclose(b.raw_cams, a.raw_cams, rtol=1e-5, atol=1e-6)
        assert b.box == a.box and b.prediction_set == a.prediction_set
        assert np.array_equal(b.lungs.mask, a.lungs.mask)
        assert b.ood.reasons == a.ood.reasons
    for image, prediction in zip(images, there, strict=True):
        assert prediction.image is image  # not sent back: the server's own, re-attached
    assert remote.config.weights_sha256 == local.config.weights_sha256
    assert "device: `cpu`" in remote.describe() and remote.config.version in remote.describe()


@pytest.mark.slow
def test_explain_views_run_there_by_name(local, remote, tmp_path):
    prediction = remote.predict(load_image(EXAMPLES[0]))
    args = ("COVID-19", "Viral Pneumonia", 0.5, "jet", False)
    here = local.call("contrast_overlay", prediction, *args)
    there = remote.call("contrast_overlay", prediction, *args)
    np.testing.assert_array_equal(there, here)
    hint = remote.call("method_hint", "Grad-CAM", LAYER)
    assert hint == local.call("method_hint", "Grad-CAM", LAYER)
    assert set(VIEWS) <= set(dir(__import__("explain.views").views))


@pytest.mark.slow
def test_concurrent_requests_each_get_their_own_answer(local, remote):
    images = [load_image(path) for path in EXAMPLES]
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(remote.predict, images))
    for image, answer in zip(images, answers, strict=True):
        expected = local.predict(image).probabilities
        np.testing.assert_allclose(answer.probabilities, expected, atol=1e-6)


@pytest.mark.slow
def test_errors_cross_over_as_themselves(remote):
    prediction = remote.predict(load_image(EXAMPLES[0]))
    with pytest.raises(ValueError, match="unknown class 'Flu'"):
        remote.call("contrast_overlay", prediction, "Flu", "Normal", 0.5, "jet", False)
    with pytest.raises(ValueError, match="unknown model operation"):
        remote.call("os.system", "true")


def test_a_library_error_crosses_as_its_builtin_kind():
    sent = _sendable(torch.OutOfMemoryError("CUDA out of memory"))
    assert type(sent) is RuntimeError and "OutOfMemoryError: CUDA out of memory" in str(sent)
    assert type(_sendable(ValueError("bad class"))) is ValueError


def test_a_child_that_exits_before_starting_is_reported(monkeypatch):
    monkeypatch.setattr(sys, "executable", shutil.which("false"))
    model = ModelProcess()
    model.load(str(BUNDLED_MODEL), "cpu")
    with pytest.raises(ModelUnavailable, match=r"exited \(code 1\) before it started"):
        model.wait_loaded(timeout=60)
    model.close()


def test_the_app_exits_2_with_one_line_when_the_weights_cannot_load(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        app.main(["--model", str(tmp_path / "no-such-model"), "--port", str(free_port())])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "no-such-model" in error
    assert len(error.splitlines()) == 1


def test_weights_that_cannot_load_are_named(tmp_path):
    model = ModelProcess()
    try:
        model.load(str(tmp_path / "no-such-model"), "cpu")
        with pytest.raises(ModelUnavailable, match="no-such-model"):
            model.wait_loaded(timeout=300)
        with pytest.raises(ModelUnavailable, match="no-such-model"):
            model.predict(load_image(EXAMPLES[0]))
    finally:
        model.close()


@pytest.mark.slow
def test_a_crash_fails_only_the_request_in_flight_then_the_model_comes_back(remote):
    image = load_image(EXAMPLES[0])
    prediction = remote.predict(image)
    before = remote._process.pid
    outcome: list[BaseException] = []

    def slow_request() -> None:  # Score-CAM: minutes on a CPU, so it is running when killed
        try:
            remote.call("method_overlay", prediction, "Score-CAM", "Normal", LAYER, 0.5, "jet",
                        False, Path("/tmp"))  # fmt: skip
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(2.0)
    os.kill(before, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ModelUnavailable)
    assert "stopped while working on this request" in str(outcome[0])
    remote.wait_loaded(timeout=300)  # the new process loads the same weights
    again = remote.predict(image)
    assert remote._process.pid != before
    np.testing.assert_allclose(again.probabilities, prediction.probabilities, atol=1e-6)


def test_on_a_zerogpu_space_the_model_stays_in_this_process(monkeypatch, tiny_checkpoint, tmp_path):
    """``spaces.GPU`` attaches a GPU to calls made in the main process: no child there."""
    spaces = types.ModuleType("spaces")
    spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    spaces.GPU = lambda fn: fn
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    for name in ("LUNGCAM_DATA_DIR", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / "data"))
    monkeypatch.setattr(app, "ModelProcess", lambda: pytest.fail("a model process on ZeroGPU"))
    served: list = []
    build = app.build_demo
    monkeypatch.setattr(app, "build_demo", lambda m, *a: served.append(m) or build(m, *a))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    app.main(["--model", str(tiny_checkpoint), "--device", "cpu"])
    assert len(served) == 1 and isinstance(served[0], LocalModel)
