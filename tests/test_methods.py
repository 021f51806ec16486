"""Every CAM method in the registry is pytorch-grad-cam's own, at any input size and layer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_grad_cam
import torch
from PIL import Image
from pytorch_grad_cam.base_cam import BaseCAM

from explain.choices import DEFAULT_METHOD, METHODS, TARGET_LAYERS
from explain.methods import cam_batch, explain, score_cam_seconds, to_image
from explain.views import (
    contrast_overlay,
    faithfulness_line,
    method_hint,
    method_overlay,
    side_by_side,
)
from imaging.load import load_image
from model.config import ModelConfig
from model.crop import CropBox
from model.network import create_network
from model.predictor import Predictor
from tests.conftest import lung5_images, predict_api

# Score-CAM needs one forward per channel: 1920 on denseblock4, 256 on denseblock1.
FAST_LAYER_FOR = {"Score-CAM": "features.denseblock1"}


@pytest.fixture(scope="module", params=[(64, 64), (96, 64)], ids=["64x64", "96x64"])
def predictor(request) -> Predictor:
    """Random DenseNet201 at a small input; the non-square one catches width/height swaps."""
    torch.manual_seed(0)
    config = ModelConfig(input_size=(3, *request.param))
    return Predictor(create_network(config), config, torch.device("cpu"))


@pytest.fixture(scope="module")
def image():
    return load_image(lung5_images("test")[1])  # a COVID-19 figure, not square


@pytest.fixture
def library_calls(monkeypatch) -> list[tuple[type, np.ndarray]]:
    """Records (class, output) of every pytorch-grad-cam CAM call."""
    calls: list[tuple[type, np.ndarray]] = []
    original = BaseCAM.__call__

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((type(self), result))
        return result

    monkeypatch.setattr(BaseCAM, "__call__", spy)
    return calls


SLOW_METHODS = {"Score-CAM"}  # one forward per channel: tens of seconds here


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_METHODS else m for m in METHODS]
)
def test_each_method_is_the_library_map_at_image_size(method, predictor, image, library_calls):
    layer = FAST_LAYER_FOR.get(method, predictor.config.target_layer)
    heat = explain(predictor, image, method, class_index=1, target_layer=layer, batch_size=64)
    assert heat.shape == image.pixels.shape
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    assert heat.max() > 0.5  # normalised, not an empty map
    [(cls, raw)] = library_calls
    assert cls is getattr(pytorch_grad_cam, METHODS[method])
    height, width = predictor.config.image_size
    assert raw.shape == (1, height, width)
    whole = CropBox.whole(image.pixels)  # the tiny checkpoint does not crop
    np.testing.assert_array_equal(heat, to_image(raw[0], whole, image.size))


@pytest.mark.slow
@pytest.mark.parametrize("layer", TARGET_LAYERS)
def test_hooks_released_and_train_state_kept(layer, predictor, image):
    model = predictor.model
    hooked = model.get_submodule(layer)
    batch = predictor.preprocess(image.pixels)[None]
    for training in (True, False):
        model.train(training)
        cam_batch(model, batch, "LayerCAM", [0], layer)
        assert model.training is training
        assert not hooked._forward_hooks
    model.eval()
    # explain() hooks a private copy (made on the first call): the served model sees no forward.
    explain(predictor, image, "LayerCAM", class_index=0, target_layer=layer)
    seen = []
    handle = hooked.register_forward_hook(lambda *_: seen.append(1))
    explain(predictor, image, "LayerCAM", class_index=0, target_layer=layer)
    handle.remove()
    assert seen == []


@pytest.mark.slow
def test_earlier_blocks_give_finer_maps(predictor, image, library_calls):
    for layer in TARGET_LAYERS:
        explain(predictor, image, "Grad-CAM", class_index=0, target_layer=layer)
    # Fine detail = mean absolute Laplacian of the network-size map.
    detail = [np.abs(cv2.Laplacian(raw[0], cv2.CV_32F)).mean() for _, raw in library_calls]
    assert len(detail) == len(TARGET_LAYERS) == 5  # the four blocks, then norm5
    assert detail[0] > 2 * detail[3]


def test_default_grad_cam_of_a_prediction_is_the_cached_map(predictor, image, library_calls):
    prediction = predictor.predict(image)
    for k in range(predictor.config.num_classes):
        heat = explain(predictor, prediction, DEFAULT_METHOD, k)
        np.testing.assert_array_equal(heat, prediction.heatmap(k))
    assert library_calls == []  # instant: no library call
    np.testing.assert_array_equal(
        explain(predictor, prediction), prediction.heatmap(prediction.top_index)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "GradCAM"}, "unknown CAM method 'GradCAM'; choose one of"),
        ({"target_layer": "features.conv0"}, "unknown target layer 'features.conv0'"),
        ({"class_index": 5}, "class index 5 out of range 0..4"),
        ({"class_index": None}, "class_index is required"),
    ],
)
def test_bad_choices_say_what_works(kwargs, message, predictor, image):
    arguments = {"method": "HiResCAM", "class_index": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        explain(predictor, image, **arguments)


@pytest.mark.slow
def test_score_cam_time_estimate_is_positive_and_grows_with_channels(predictor):
    small = score_cam_seconds(predictor, "features.denseblock1")  # 256 channels
    large = score_cam_seconds(predictor, "features.denseblock4")  # 1920 channels
    assert 0.0 < small < large


@pytest.mark.slow
def test_views_side_by_side_contrast_and_pngs(tiny_checkpoint, image, tmp_path):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    prediction = predictor.predict(image)
    shown = side_by_side(
        predictor,
        prediction,
        ["Grad-CAM", "EigenCAM"],
        "COVID-19",
        TARGET_LAYERS[-1],
        0.5,
        "jet",
        True,
    )
    assert [caption for _, caption in shown] == ["Grad-CAM", "EigenCAM"]
    assert all(rgb.shape == (*image.pixels.shape, 3) for rgb, _ in shown)
    assert not np.array_equal(shown[0][0], shown[1][0])
    with pytest.raises(ValueError, match="pick 2 to 4 methods to compare; got 1"):
        side_by_side(
            predictor, prediction, ["HiResCAM"], "Normal", TARGET_LAYERS[-1], 0.5, "jet", False
        )
    drawn, paths = method_overlay(
        predictor, prediction, "HiResCAM", "Normal", TARGET_LAYERS[2], 0.5, "jet", False, tmp_path
    )
    assert [Path(p).name for p in paths] == [
        "hirescam-normal-denseblock3-heatmap.png",
        "hirescam-normal-denseblock3-overlay.png",
    ]
    assert drawn.shape == (*image.pixels.shape, 3)
    contrasted = contrast_overlay(
        predictor, prediction, "COVID-19", "Viral Pneumonia", 0.5, "viridis", False
    )
    assert contrasted.shape == drawn.shape
    assert "ROAD" in faithfulness_line(
        predictor, prediction, "Grad-CAM", "Normal", TARGET_LAYERS[-1]
    )
    assert "Score-CAM: about" in method_hint(predictor, "Score-CAM", TARGET_LAYERS[-1])


@pytest.mark.slow
def test_explain_endpoint_returns_the_overlay_and_two_pngs(client, real_image):
    predict_api(client, real_image)
    overlay_path, pngs = client.predict(
        "LayerCAM",
        "Tuberculosis",
        "features.denseblock3",
        0.5,
        "cividis",
        True,
        api_name="/explain",
    )
    size = load_image(real_image).pixels.shape
    assert np.asarray(Image.open(overlay_path)).shape == (*size, 3)
    assert sorted(np.asarray(Image.open(p)).ndim for p in pngs) == [2, 3]
