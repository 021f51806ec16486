"""Where the server writes, how a request reaches the model (batcher, plain, ZeroGPU), precision."""

from __future__ import annotations

import importlib.machinery
import os
import platform
import sys
import types

import numpy as np
import pytest
import torch

from imaging.load import load_image
from model.checkpoint import HUB_PREFIX
from model.predictor import Predictor, pick_autocast
from serving import runtime
from serving.model_process import LocalModel
from serving.runtime import (
    DATA_ENV,
    OFFLINE_SWITCHES,
    configure_storage,
    data_dir,
    limit_malloc_arenas,
    make_predict,
    requested_model,
    stay_offline,
)
from tests.conftest import lung5_images


def test_data_dir_defaults_to_data_and_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert data_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"


def test_gradio_cache_goes_into_the_data_dir_unless_set(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", {DATA_ENV: str(tmp_path), "GRADIO_TEMP_DIR": ""})
    assert configure_storage() == tmp_path
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "gradio")
    assert os.environ["GRADIO_EXAMPLES_CACHE"].startswith(str(tmp_path))
    os.environ["GRADIO_TEMP_DIR"] = "/chosen/by/the/operator"
    configure_storage()
    assert os.environ["GRADIO_TEMP_DIR"] == "/chosen/by/the/operator"


@pytest.fixture
def predictor(tiny_checkpoint):
    return Predictor.load(str(tiny_checkpoint), "cpu")


@pytest.mark.parametrize(("max_batch_size", "kind"), [(1, "predict"), (8, "submit")])
def test_make_predict_batches_unless_told_not_to(predictor, monkeypatch, max_batch_size, kind):
    monkeypatch.setattr("serving.runtime.on_spaces_gpu", lambda: False)
    assert make_predict(LocalModel(predictor), max_batch_size).__name__ == kind


def test_make_predict_uses_spaces_gpu_when_the_package_is_there(predictor, monkeypatch):
    spaces = types.ModuleType("spaces")
    spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    spaces.GPU = lambda fn: ("on-gpu", fn)
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    model = LocalModel(predictor)
    assert make_predict(model) == ("on-gpu", model.predict)


@pytest.mark.parametrize(("amp", "expected"), [(None, None), (False, None), (True, torch.bfloat16)])
def test_autocast_is_off_unless_asked_for(amp, expected):
    assert pick_autocast(torch.device("cpu"), amp) is expected


@pytest.mark.slow
def test_bf16_trunk_stays_close_to_float32(tiny_checkpoint):
    images = [load_image(p) for p in lung5_images("test", per_class=1)]
    exact = Predictor.load(str(tiny_checkpoint), "cpu").predict_many(images)
    fast_predictor = Predictor.load(str(tiny_checkpoint), "cpu", amp=True)
    assert fast_predictor.cam.autocast_dtype is torch.bfloat16
    for a, b in zip(fast_predictor.predict_many(images), exact, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.03)
        correlation = np.corrcoef(a.raw_cams.ravel(), b.raw_cams.ravel())[0, 1]
        assert correlation > 0.95


def test_malloc_arenas_are_capped_on_glibc_unless_the_environment_says(monkeypatch):
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt(M_ARENA_MAX) is glibc's")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False


@pytest.mark.parametrize(
    ("argv", "environ", "hub"),
    [
        ([], {}, False),  # the bundled model
        (["--port", "7861", "--model", "assets/model"], {}, False),
        (["--model=hf-hub:org/name", "--help"], {}, True),
        ([], {"LUNGCAM_MODEL": "hf-hub:org/name"}, True),
        (["--model", "weights.pt"], {"LUNGCAM_MODEL": "hf-hub:org/name"}, False),
    ],
)
def test_stay_offline_switches_every_check_off_and_the_hub_unless_asked_for(
    monkeypatch, argv, environ, hub
):
    said = {"GRADIO_ANALYTICS_ENABLED": "True", "NO_ALBUMENTATIONS_UPDATE": "0"}
    monkeypatch.setattr(os, "environ", {**said, **environ})
    stay_offline(argv)
    assert {name: os.environ[name] for name in OFFLINE_SWITCHES} == OFFLINE_SWITCHES
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert ("HF_HUB_OFFLINE" not in os.environ) == hub
    assert hub or os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_hub_prefix_is_the_checkpoint_loaders(monkeypatch):
    monkeypatch.delenv("LUNGCAM_MODEL", raising=False)
    assert runtime.HUB_PREFIX == HUB_PREFIX
    assert requested_model(["--model", f"{HUB_PREFIX}org/name"]) == "hf-hub:org/name"
