"""A model trained on lung-field crops is served the same crop, and its heatmaps land back on
the right pixels of the whole image."""

import numpy as np
import pytest
import torch

from imaging.image import LoadedImage
from model.config import ModelConfig
from model.crop import CropBox, lung_box
from model.lungs import LungMask
from model.network import create_network
from model.predictor import Predictor

SIZE = 64


class KnownLungs:
    """Stands in for the segmenter with a fixed answer, so the test checks the predictor's use
    of a mask, not the segmenter (tests/test_segmenter.py checks the segmenter)."""

    weights_sha256 = "known-lungs"

    def __init__(self, box: tuple[int, int, int, int] | None) -> None:
        self.box = box

    def to(self, device: torch.device) -> "KnownLungs":
        return self

    def analyse_many(self, images: list[np.ndarray]) -> list[LungMask]:
        masks = []
        for pixels in images:
            mask = np.zeros(pixels.shape, bool)
            if self.box is not None:
                x0, y0, x1, y1 = self.box
                mask[y0:y1, x0:x1] = True
            masks.append(LungMask(mask, self.box is not None, float(mask.mean()), 1))
        return masks


def _predictor(margin: float | None, lungs: KnownLungs | None) -> Predictor:
    torch.manual_seed(0)
    config = ModelConfig(input_size=(3, SIZE, SIZE), lung_crop_margin=margin)
    return Predictor(create_network(config), config, torch.device("cpu"), segmenter=lungs)


def _image(width: int = 200, height: int = 160) -> LoadedImage:
    rng = np.random.default_rng(1)
    return LoadedImage(rng.integers(0, 256, (height, width), dtype=np.uint8), "test", "L")


def test_the_network_sees_the_lung_box_and_nothing_else():
    predictor = _predictor(0.1, KnownLungs((50, 40, 150, 120)))
    image = _image()
    prediction = predictor.predict(image)
    assert prediction.box == CropBox(40, 32, 160, 128) == lung_box(prediction.lungs.mask, 0.1)
    expected = predictor.preprocess(image.pixels[32:128, 40:160])
    torch.testing.assert_close(predictor.batch([image], [prediction.box])[0], expected)
    heat = prediction.heatmap(prediction.top_index)
    assert heat.shape == (160, 200)
    outside = np.ones_like(heat, bool)
    outside[32:128, 40:160] = False
    assert heat[outside].max() == 0 and heat[~outside].max() > 0


def test_heatmap_at_another_size_scales_the_box():
    prediction = _predictor(0.0, KnownLungs((50, 40, 150, 120))).predict(_image())
    small = prediction.heatmap(0, (100, 80))
    assert small.shape == (80, 100)
    assert small[:20].max() == 0 and small[:, :25].max() == 0 and small[60:].max() == 0


def test_no_lungs_found_means_the_whole_image_and_no_share():
    prediction = _predictor(0.1, KnownLungs(None)).predict(_image())
    assert prediction.box == CropBox(0, 0, 200, 160) and not prediction.cropped
    assert prediction.lung_share(0) is None


def test_a_model_without_crop_still_measures_the_lungs():
    prediction = _predictor(None, KnownLungs((0, 0, 100, 160))).predict(_image())
    assert not prediction.cropped
    share = prediction.lung_share(prediction.top_index)
    heat = prediction.heatmap(prediction.top_index)
    assert share == pytest.approx(heat[:, :100].sum() / heat.sum(), abs=0.03)


def test_a_crop_model_without_segmenter_is_refused():
    with pytest.raises(ValueError, match="needs the lung segmenter"):
        _predictor(0.1, None)


@pytest.mark.parametrize("method", ["HiResCAM", "FinerCAM", "ROAD"])
def test_explain_tab_maps_use_the_same_crop(method):
    from explain.contrastive import contrast
    from explain.faithfulness import road_score
    from explain.methods import explain

    predictor = _predictor(0.1, KnownLungs((50, 40, 150, 120)))
    prediction = predictor.predict(_image())
    labels = predictor.config.label_names
    if method == "ROAD":
        heat = prediction.heatmap(0)
        assert np.isfinite(road_score(predictor, prediction.image, heat, 0, box=prediction.box))
        return
    if method == "FinerCAM":
        heat = contrast(predictor, prediction, labels[0], labels[1], "FinerCAM")
    else:
        heat = explain(predictor, prediction, method, 0)
    assert heat.shape == (160, 200)
    assert heat[:32].max() == 0 and heat[:, :40].max() == 0 and heat[128:].max() == 0
