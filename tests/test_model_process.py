"""The model in its own process (serving/model_process.py): the same results as in this
process, errors that cross over as themselves, and a server that outlives the model's crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imaging.load import load_image
from model.predictor import Predictor
from serving.model_process import VIEWS, LocalModel, ModelProcess, ModelUnavailable
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


def test_the_app_process_never_imports_torch():
    code = "import sys, app; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


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
        np.testing.assert_array_equal(b.image.pixels, a.image.pixels)
    assert remote.config.weights_sha256 == local.config.weights_sha256
    assert "device: `cpu`" in remote.describe() and remote.config.version in remote.describe()


def test_explain_views_run_there_by_name(local, remote, tmp_path):
    prediction = remote.predict(load_image(EXAMPLES[0]))
    args = ("COVID-19", "Viral Pneumonia", 0.5, "jet", False)
    here = local.call("contrast_overlay", prediction, *args)
    there = remote.call("contrast_overlay", prediction, *args)
    np.testing.assert_array_equal(there, here)
    hint = remote.call("method_hint", "Grad-CAM", LAYER)
    assert hint == local.call("method_hint", "Grad-CAM", LAYER)
    assert set(VIEWS) <= set(dir(__import__("explain.views").views))


def test_errors_cross_over_as_themselves(remote):
    prediction = remote.predict(load_image(EXAMPLES[0]))
    with pytest.raises(ValueError, match="unknown class 'Flu'"):
        remote.call("contrast_overlay", prediction, "Flu", "Normal", 0.5, "jet", False)
    with pytest.raises(ValueError, match="unknown model operation"):
        remote.call("os.system", "true")


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
    again = remote.predict(image)  # waits for the new process to load the same weights
    assert remote._process.pid != before
    np.testing.assert_allclose(again.probabilities, prediction.probabilities, atol=1e-6)
