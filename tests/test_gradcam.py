"""Our all-class Grad-CAM equals pytorch-grad-cam's GradCAM, class by class."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from imaging.load import load_image
from model.cam import AllClassGradCAM
from model.config import ModelConfig
from model.heatmaps import normalise_cam, scale_cam
from model.network import create_network
from model.predictor import Predictor
from tests.conftest import BUNDLED_MODEL, REPO, lung5_images


def reference_maps(model, batch, layer) -> np.ndarray:
    """pytorch-grad-cam's ``GradCAM`` maps of every class, (B, K, H, W) at input size."""
    with GradCAM(model, [layer]) as cam:
        targets = [[ClassifierOutputTarget(k)] * len(batch) for k in range(model.num_classes)]
        return np.stack([cam(batch, target) for target in targets], axis=1)


def normalised_maps(raw, size) -> np.ndarray:
    """Raw maps (B, K, h, w) → [0, 1] at ``size`` (width, height), as pytorch-grad-cam scales."""
    return np.stack([[normalise_cam(per_class, size) for per_class in image] for image in raw])


def _assert_equivalent(model, batch, layer="features.denseblock4"):
    logits, raw = AllClassGradCAM(model, layer)(batch)
    reference = reference_maps(model, batch, model.get_submodule(layer))
    ours = normalised_maps(raw, (batch.shape[-1], batch.shape[-2]))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(batch), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 224])
def test_matches_pytorch_grad_cam_with_random_weights(size):
    torch.manual_seed(size)
    model = create_network(ModelConfig(input_size=(3, size, size))).eval()
    _assert_equivalent(model, torch.randn(2, 3, size, size))


@pytest.mark.slow
def test_matches_pytorch_grad_cam_with_the_bundled_trained_model():
    predictor = Predictor.load(str(BUNDLED_MODEL), "cpu")  # with its lung segmenter
    assert predictor.config.trained
    batch = predictor.batch([load_image(p) for p in lung5_images()[:3]])  # lung-field crops
    _assert_equivalent(predictor.model, batch)


@pytest.mark.parametrize("stride", [16, 32])
def test_matches_pytorch_grad_cam_after_the_last_norm_at_either_output_stride(stride):
    """The guided models' served map: Grad-CAM on norm5, i.e. their class activation map."""
    torch.manual_seed(stride)
    model = create_network(ModelConfig(input_size=(3, 64, 64), output_stride=stride)).eval()
    _assert_equivalent(model, torch.randn(2, 3, 64, 64), "features.norm5")
    assert AllClassGradCAM(model, "features.norm5")(torch.randn(1, 3, 64, 64))[1].shape[-1] == (
        64 // stride
    )


def test_refuses_a_model_in_train_mode():
    model = create_network(ModelConfig()).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        AllClassGradCAM(model)(torch.randn(1, 3, 64, 64))


def test_prediction_heatmaps_are_at_image_resolution(tiny_checkpoint, real_image):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    image = load_image(real_image)
    prediction = predictor.predict(image)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    for k in range(5):
        heat = prediction.heatmap(k)
        assert heat.shape == image.pixels.shape
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    with pytest.raises(ValueError, match="out of range"):
        prediction.heatmap(5)


def test_batched_prediction_equals_single(tiny_checkpoint):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    images = [load_image(p) for p in lung5_images()[:3]]
    batched = predictor.predict_many(images)
    for image, together in zip(images, batched, strict=True):
        alone = predictor.predict(image)
        np.testing.assert_allclose(alone.probabilities, together.probabilities, atol=1e-5)
        np.testing.assert_allclose(alone.raw_cams, together.raw_cams, rtol=1e-4, atol=1e-5)


def test_temperature_scales_confidence_not_ranking(tiny_checkpoint, real_image):
    hot = Predictor.load(str(tiny_checkpoint), "cpu")
    cold = Predictor.load(str(tiny_checkpoint), "cpu")
    cold.config.temperature = 3.0
    image = load_image(real_image)
    p_hot, p_cold = hot.predict(image), cold.predict(image)
    assert p_hot.top_index == p_cold.top_index
    assert p_cold.probabilities.max() < p_hot.probabilities.max()
    np.testing.assert_allclose(p_hot.raw_cams, p_cold.raw_cams)


@pytest.mark.parametrize("size", [None, (224, 224), (300, 97)])
def test_scale_cam_equals_the_librarys_scale_cam_image(size):
    """Our copy of pytorch-grad-cam's ``scale_cam_image`` (kept to spare start-up the library
    import) gives the library's numbers, for a map with a negative part and a flat one."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(0)
    for cam in (rng.normal(0, 3, (7, 7)).astype(np.float32), np.full((7, 7), 2.5, np.float32)):
        ours = scale_cam(cam, size)
        np.testing.assert_array_equal(ours, scale_cam_image(cam[None], size)[0])
        assert ours.dtype == np.float32


def test_the_app_starts_without_importing_pytorch_grad_cam():
    """The served path needs none of the library: importing it (every method, scikit-learn,
    matplotlib) waits for the first Explain request that asks for another method."""
    code = "import sys, app; print(sorted({'pytorch_grad_cam', 'sklearn'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
