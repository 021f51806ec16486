"""Contrastive maps: why class A rather than class B?

For the classes the model confuses (bacterial vs viral pneumonia vs COVID-19) the plain map
of A often looks like the map of B. Two ways to show what separates them:

- ``"difference"``: the difference of the two classes' raw Grad-CAMs, ``relu(cam_A − cam_B)``,
  from the all-class maps the predictor already computed (free).
- ``"FinerCAM"``: pytorch-grad-cam's ``FinerCAM`` (Zhang et al., CVPR 2025) with B as the only
  comparison class: Grad-CAM of the target ``logit_A − logit_B`` (one forward + backward).

``DEFAULT_CONTRASTIVE`` was chosen by measurement (ROAD on the probability margin
P(A) − P(B), bundled model, lung5 test images); the numbers and command are in
docs/EXPLAINABILITY.md and ``python -m bench.faithfulness --contrastive`` reproduces them.

Example::

    heat = contrast(predictor, prediction, "COVID-19", "Viral Pneumonia")
"""

from __future__ import annotations

import numpy as np
import torch

from explain.methods import private_model, to_image
from model.crop import CropBox
from model.prediction import Prediction
from model.predictor import Predictor

CONTRASTIVE_METHODS: tuple[str, ...] = ("difference", "FinerCAM")
DEFAULT_CONTRASTIVE = "difference"


class ProbabilityMargin:
    """Target ``P(A) − P(B)``: what a "why A rather than B" map should explain."""

    def __init__(self, class_a: int, class_b: int) -> None:
        self.class_a, self.class_b = class_a, class_b

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(model_output, dim=-1)
        return probabilities[..., self.class_a] - probabilities[..., self.class_b]


def class_pair(predictor: Predictor, class_a: str, class_b: str) -> tuple[int, int]:
    """Indices of two different class names, or a ``ValueError`` naming the valid ones."""
    index_a, index_b = (predictor.config.class_index(name) for name in (class_a, class_b))
    if class_a == class_b:
        raise ValueError(f"a contrast needs two different classes; got {class_a!r} twice")
    return index_a, index_b


def contrast(
    predictor: Predictor,
    prediction: Prediction,
    class_a: str,
    class_b: str,
    method: str = DEFAULT_CONTRASTIVE,
) -> np.ndarray:
    """Where the image speaks for ``class_a`` rather than ``class_b``: (H, W) map in [0, 1]."""
    index_a, index_b = class_pair(predictor, class_a, class_b)
    if method == "difference":
        raw = prediction.raw_cams
        return prediction.to_image(np.maximum(raw[index_a] - raw[index_b], 0.0))
    if method != "FinerCAM":
        raise ValueError(
            f"unknown contrastive method {method!r}; choose one of {CONTRASTIVE_METHODS}"
        )
    from pytorch_grad_cam import FinerCAM  # on first use: see explain.choices.METHODS
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    box = prediction.box or CropBox.whole(prediction.image.pixels)
    batch = predictor.batch([prediction.image], [box])
    with private_model(predictor) as model:
        cam = FinerCAM(model, [model.get_submodule(predictor.config.target_layer)])
        try:
            maps = cam(batch, [FinerWeightedTarget(index_a, [index_b], alpha=1.0)])
        finally:
            cam.base_cam.activations_and_grads.release()
    return to_image(maps[0], box, prediction.image.size)
