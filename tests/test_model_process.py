"""The model in its own process (serving/model_process.py, serving/model_calls.py): the same
results as in this process, every Explain view a call with no table to extend, errors on one
line, Score-CAM's progress across, and a web process that outlives the model's crash."""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import pickle
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
from tqdm import tqdm

import app
from explain import views
from imaging.load import load_image
from model.predictor import Predictor
from serving.model_calls import ModelUnavailable, plain_errors
from serving.model_process import LocalModel, ModelProcess
from serving.runtime import free_port
from tests.conftest import BUNDLED_MODEL, REPO

EXAMPLES = sorted((REPO / "assets" / "examples").glob("*.jpg"))[:3]
LAYER = "features.denseblock4"
VIEWS = sorted(
    name
    for name, function in inspect.getmembers(views, inspect.isfunction)
    if function.__module__ == "explain.views" and not name.startswith("_")
)


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
for bad in (("Flu", "Normal", 0.5, "jet", False), ("COVID-19", "Normal", None, "jet", False)):
    try:
        model.call("contrast_overlay", prediction, *bad)
    except Exception as err:
        print(type(err).__name__)
model.close()
print(prediction.top_label, sorted(m for m in ("torch", "timm") if m in sys.modules))
"""


@pytest.mark.slow
def test_the_server_side_never_imports_torch():
    """Importing the app, predicting, an Explain view, a bad choice and a fault there: no torch
    and no timm here."""
    out = subprocess.run(
        [sys.executable, "-c", SERVER_SIDE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[:2] == ["ValueError", "ModelUnavailable"]
    assert lines[-1].endswith("[]")


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
        assert prediction.image is image  # not sent back: this process's own, re-attached
    assert remote.config.weights_sha256 == local.config.weights_sha256
    assert "device: `cpu`" in remote.describe() and remote.config.version in remote.describe()
    assert f"pid {remote.pid}" in remote.describe() and remote.pid != os.getpid()


@pytest.mark.slow
def test_explain_views_give_the_same_answers_there(local, remote):
    prediction = remote.predict(load_image(EXAMPLES[0]))
    args = ("COVID-19", "Viral Pneumonia", 0.5, "jet", False)
    there = remote.call("contrast_overlay", prediction, *args)
    np.testing.assert_array_equal(there, local.call("contrast_overlay", prediction, *args))
    hint = remote.call("method_hint", "Grad-CAM", LAYER)
    assert hint == local.call("method_hint", "Grad-CAM", LAYER)


@pytest.mark.slow
def test_every_view_of_explain_views_is_a_call_there_and_nothing_else_is(remote):
    """The model's process offers exactly its own calls and every public function of
    ``explain.views``: no list of views to keep in step."""
    assert len(VIEWS) >= 5 and "method_overlay" in VIEWS
    assert sorted(remote.calls()._exposed_) == sorted(["load", "predict_many", "progress", *VIEWS])
    with pytest.raises(ValueError, match="the model has no call 'system'"):
        remote.call("system", "true")


def test_a_new_function_in_explain_views_is_a_call_as_it_stands(local, monkeypatch):
    def echo(predictor, text):
        return f"{predictor.config.version}: {text}"

    echo.__module__ = "explain.views"
    monkeypatch.setattr(views, "echo", echo, raising=False)
    assert local.call("echo", "hello") == f"{local.config.version}: hello"
    monkeypatch.delattr(views, "echo")
    with pytest.raises(ValueError, match="the model has no call 'echo'"):
        local.call("echo", "hello")


def test_progress_bars_where_the_model_is_reach_the_caller(local, monkeypatch):
    def counted(predictor, steps):
        for _ in tqdm(range(steps), mininterval=0):
            time.sleep(0.3)
        return steps

    counted.__module__ = "explain.views"
    monkeypatch.setattr(views, "counted", counted, raising=False)
    seen: list[tuple[int, int]] = []
    assert local.call("counted", 6, progress=seen.append) == 6
    assert seen and all(total == 6 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # forward only
    assert 1 <= seen[-1][0] <= 6


@pytest.mark.slow
def test_concurrent_requests_each_get_their_own_answer(local, remote):
    images = [load_image(path) for path in EXAMPLES]
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(remote.predict, images))
    for image, answer in zip(images, answers, strict=True):
        expected = local.predict(image).probabilities
        np.testing.assert_allclose(answer.probabilities, expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "remote"])
def test_errors_are_one_line_a_bad_choice_a_value_error(where, request):
    model = request.getfixturevalue(where)
    prediction = model.predict(load_image(EXAMPLES[0]))
    with pytest.raises(ValueError, match="unknown class 'Flu'") as bad_class:
        model.call("contrast_overlay", prediction, "Flu", "Normal", 0.5, "jet", False)
    with pytest.raises(ModelUnavailable, match="the model failed: TypeError") as fault:
        model.call("contrast_overlay", prediction, "COVID-19", "Normal", None, "jet", False)
    for error in (bad_class.value, fault.value):
        assert "\n" not in str(error) and "Traceback" not in str(error)


def test_a_library_error_becomes_one_line_that_unpickles_without_it():
    @plain_errors
    def fails(error: Exception) -> None:
        raise error

    with pytest.raises(ModelUnavailable) as out_of_memory:
        fails(torch.OutOfMemoryError("CUDA out of memory.\nTried to allocate 2.00 GiB"))
    message = "the model failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert str(out_of_memory.value) == message
    assert type(pickle.loads(pickle.dumps(out_of_memory.value))) is ModelUnavailable
    with pytest.raises(ValueError, match=r"^bad class, see above$"):
        fails(UnicodeError("bad class,\n  see above"))


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
    """Score-CAM (minutes on a CPU) reports its progress from the model's process; the process
    is killed meanwhile: that request gets one line, the next ones the same weights again."""
    image = load_image(EXAMPLES[0])
    prediction = remote.predict(image)
    before = remote.pid
    moving = threading.Event()
    seen: list[tuple[int, int]] = []
    outcome: list[BaseException] = []

    def report(state: tuple[int, int]) -> None:
        seen.append(state)
        moving.set()

    def score_cam() -> None:
        look = (0.5, "jet", False, Path("/tmp"))
        try:
            remote.call("method_overlay", prediction, "Score-CAM", "Normal", LAYER, *look,
                        progress=report)  # fmt: skip
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=score_cam)
    thread.start()
    assert moving.wait(timeout=120), "no progress came from the model's process"
    os.kill(before, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert seen[0][1] == 1920 // 32 + (1920 % 32 > 0)  # batches of denseblock4's channels
    assert len(outcome) == 1 and isinstance(outcome[0], ModelUnavailable), outcome
    assert "stopped while working on this request" in str(outcome[0])
    assert "\n" not in str(outcome[0])
    again = remote.predict(image)  # waits for the new process and the same weights
    assert remote.pid != before
    np.testing.assert_allclose(again.probabilities, prediction.probabilities, atol=1e-6)


def test_on_a_zerogpu_space_the_model_stays_in_this_process(monkeypatch, tiny_checkpoint, tmp_path):
    """``spaces.GPU`` attaches a GPU to calls made in the main process: no child there."""
    spaces = types.ModuleType("spaces")
    spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    spaces.GPU = lambda fn: fn
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    for name in ("LUNGCAM_DATA_DIR", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / "data"))
    monkeypatch.setattr(ModelProcess, "__init__", lambda self: pytest.fail("a child on ZeroGPU"))
    served: list = []
    build = app.build_demo
    monkeypatch.setattr(app, "build_demo", lambda m, *a: served.append(m) or build(m, *a))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    app.main(["--model", str(tiny_checkpoint), "--device", "cpu"])
    assert len(served) == 1 and isinstance(served[0], LocalModel)
