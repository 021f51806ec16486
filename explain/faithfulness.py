"""How faithful is a heatmap to the model? The ROAD score, via pytorch-grad-cam.

ROAD (RemOve And Debias; Rong et al., ICML 2022) removes the pixels a map ranks most
relevant, and separately those it ranks least relevant, fills them by noisy linear
imputation (so the filled image does not leak the mask's shape), and compares how the
class probability moves. pytorch-grad-cam's ``ROADCombined`` returns
``(LeRF - MoRF) / 2`` averaged over removal percentiles: above 0 the map points at pixels
the model relies on, about 0 it is no better than a random map, below 0 it misleads.

Example::

    score = road_score(predictor, image, heatmap, class_index=1)
    print(road_meaning(score, "COVID-19"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from imaging.image import LoadedImage
from model.crop import CropBox
from model.predictor import Predictor

# ROAD thresholds: keep 20/40/60/80 % of the pixels: 8 sparse solves per map instead of the
# library default's 18 (10..90 in steps of 10), so a score takes seconds, not half a minute.
ROAD_PERCENTILES: tuple[int, ...] = (20, 40, 60, 80)
ROAD_SEED = 0


def road_batch(
    model: nn.Module,
    batch: torch.Tensor,
    cams: np.ndarray,
    targets: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    percentiles: Sequence[int] = ROAD_PERCENTILES,
) -> np.ndarray:
    """ROAD score per image: ``batch`` (B, 3, h, w), ``cams`` (B, h, w) at the same size.

    The imputation noise is drawn from a fixed seed, so a score can be reproduced.
    """
    if cams.shape != (batch.shape[0], *batch.shape[-2:]):
        raise ValueError(
            f"cams must be (B, h, w) = {(batch.shape[0], *batch.shape[-2:])}; got {cams.shape}"
        )
    from pytorch_grad_cam.metrics.road import ROADCombined  # on first use: explain.methods

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ROAD_SEED)
        scores = ROADCombined(percentiles=list(percentiles))(
            batch, np.float32(cams), list(targets), model
        )
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def road_score(
    predictor: Predictor,
    image: LoadedImage,
    heatmap: np.ndarray,
    class_index: int,
    target: Callable[[torch.Tensor], torch.Tensor] | None = None,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    box: CropBox | None = None,
) -> float:
    """ROAD score of ``heatmap`` ((H, W) at image resolution) for ``class_index``'s probability.

    ``target`` overrides what is measured (e.g. a probability margin for a contrastive map);
    ``box`` is the crop the network sees (``Prediction.box``; found again when not given).
    """
    if heatmap.shape != image.pixels.shape:
        raise ValueError(f"heatmap {heatmap.shape} and image {image.pixels.shape} differ in size")
    height, width = predictor.config.image_size
    box = box or predictor.frame([image])[1][0]
    batch = predictor.batch([image], [box])
    seen = np.float32(box.apply(heatmap))
    cam = cv2.resize(seen, (width, height), interpolation=cv2.INTER_AREA)
    if target is None:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        target = ClassifierOutputSoftmaxTarget(class_index)
    return float(road_batch(predictor.model, batch, cam[None], [target], percentiles)[0])


def road_meaning(score: float, what: str) -> str:
    """One number, ``score``, and one sentence on what it means for the probability of ``what``.

    ``score`` is (LeRF − MoRF) / 2: half of how much higher P(``what``) stays when the pixels
    the map ranks lowest are removed than when those it ranks highest are removed.
    """
    if score > 0.01:
        verdict = "the map points at pixels the model relies on"
    elif score < -0.01:
        verdict = "the map points away from what the model uses (misleading)"
    else:
        verdict = "no better than a random map"
    return (
        f"ROAD {score:+.3f} → {verdict}. Above 0: removing the pixels this map ranks highest "
        f"lowers P({what}) more than removing those it ranks lowest (half the gap, averaged "
        "over 20–80 % removed); about 0: a random map would do as well; below 0: it misleads."
    )
