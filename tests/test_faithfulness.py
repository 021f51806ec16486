"""ROAD scores: the right sign on a model whose evidence we know, and a readable meaning."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from explain.contrastive import ProbabilityMargin
from explain.faithfulness import road_batch, road_meaning, road_score
from imaging.load import load_image
from model.predictor import Predictor

SIZE = 32


class TopLeftTexture(nn.Module):
    """Class 0's logit is the texture energy of the top-left quadrant; class 1's is constant.

    Imputation smooths removed pixels, so removing the top-left quadrant (and only that)
    lowers P(class 0): the quadrant is the true evidence.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x[:, :, : SIZE // 2, : SIZE // 2].pow(2).mean(dim=(1, 2, 3))
        return torch.stack([4 * energy, torch.full_like(energy, 2.0)], dim=1)


def _maps() -> dict[str, np.ndarray]:
    truth = np.zeros((SIZE, SIZE), np.float32)
    truth[: SIZE // 2, : SIZE // 2] = 1.0
    truth += np.linspace(0, 0.1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)  # no ties
    noise = np.random.default_rng(0).random((SIZE, SIZE), dtype=np.float32)
    return {"truth": truth, "inverse": 1.0 - truth, "noise": noise}


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    torch.manual_seed(0)
    batch = torch.randn(1, 3, SIZE, SIZE)
    target = [ClassifierOutputSoftmaxTarget(0)]
    return {
        name: float(road_batch(TopLeftTexture(), batch, cam[None], target)[0])
        for name, cam in _maps().items()
    }


def test_the_true_evidence_scores_positive_and_its_inverse_negative(scores):
    assert scores["truth"] > 0.05
    assert scores["inverse"] < -0.05
    assert scores["inverse"] == pytest.approx(-scores["truth"], abs=0.02)


def test_a_random_map_scores_near_zero_and_below_the_truth(scores):
    assert abs(scores["noise"]) < 0.3 * scores["truth"]


def test_scores_are_reproducible_and_leave_the_global_rng_alone():
    batch = torch.randn(2, 3, SIZE, SIZE)
    cams = np.stack(list(_maps().values())[:2])
    targets = [ProbabilityMargin(0, 1)] * 2
    torch.manual_seed(123)
    first = road_batch(TopLeftTexture(), batch, cams, targets)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    second = road_batch(TopLeftTexture(), batch, cams, targets)
    np.testing.assert_array_equal(first, second)
    assert torch.rand(1) == after_first
    assert first.shape == (2,)


def test_wrong_map_shape_is_an_error():
    with pytest.raises(
        ValueError, match=r"cams must be \(B, h, w\) = \(1, 32, 32\); got \(1, 16, 16\)"
    ):
        road_batch(
            TopLeftTexture(),
            torch.zeros(1, 3, SIZE, SIZE),
            np.zeros((1, 16, 16)),
            [ProbabilityMargin(0, 1)],
        )


@pytest.mark.slow
def test_road_score_of_a_real_image_with_a_prediction(tiny_checkpoint, real_image):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    image = load_image(real_image)
    prediction = predictor.predict(image)
    heat = prediction.heatmap(prediction.top_index)
    score = road_score(predictor, image, heat, prediction.top_index)
    assert -0.5 <= score <= 0.5  # a difference of two probabilities, halved
    assert road_score(predictor, image, heat, prediction.top_index) == score
    with pytest.raises(ValueError, match="differ in size"):
        road_score(predictor, image, heat[:10], 0)


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.12, "points at pixels the model relies on"),
        (0.004, "no better than a random map"),
        (-0.08, "misleading"),
    ],
)
def test_meaning_names_the_class_number_and_verdict(score, verdict):
    line = road_meaning(score, "COVID-19")
    assert line.startswith(f"ROAD {score:+.3f} → ")
    numbers = re.findall(r"[+-]?\d+\.\d+", line)
    assert numbers == [f"{score:+.3f}"]  # one number, explained in words
    assert verdict in line
    assert "\n" not in line
