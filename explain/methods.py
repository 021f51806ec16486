"""pytorch-grad-cam's CAM methods behind one call, for any class and any dense block.

The default (Grad-CAM on the checkpoint's target layer) reuses the all-class maps the
predictor already computed, so it costs nothing. Every other choice runs the library's own
implementation — we never rewrite a method here:

- Grad-CAM: Selvaraju et al., ICCV 2017.
- Grad-CAM++: Chattopadhay et al., WACV 2018.
- HiResCAM: Draelos & Carin, 2020 (element-wise gradient × activation, no averaging).
- XGrad-CAM: Fu et al., BMVC 2020.
- LayerCAM: Jiang et al., IEEE TIP 2021 (good on earlier blocks).
- EigenCAM: Muhammad & Yeasin, IJCNN 2020 (first principal component; class-agnostic).
- Score-CAM: Wang et al., CVPRW 2020 (one masked forward per channel: slow on CPU).

Example::

    heat = explain(predictor, prediction, "LayerCAM", class_index=1,
                   target_layer="features.denseblock3")  # (H, W) in [0, 1]
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from explain.choices import DEFAULT_METHOD, METHODS, TARGET_LAYERS
from imaging.image import LoadedImage
from model.crop import CropBox
from model.heatmaps import scale_cam
from model.prediction import Prediction
from model.predictor import Predictor

if TYPE_CHECKING:
    from pytorch_grad_cam.base_cam import BaseCAM

SCORE_CAM_BATCH = 32
_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_COPIES_LOCK = threading.Lock()


def check_choice(method: str, target_layer: str) -> None:
    """Raise a ``ValueError`` naming the valid choices for an unknown method or layer."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {list(METHODS)}")
    if target_layer not in TARGET_LAYERS:
        raise ValueError(f"unknown target layer {target_layer!r}; choose one of {TARGET_LAYERS}")


@contextmanager
def library_cam(
    model: nn.Module, method: str, target_layer: str, batch_size: int = SCORE_CAM_BATCH
) -> Iterator[BaseCAM]:
    """pytorch-grad-cam's ``method`` hooked on ``target_layer``; hooks released on exit.

    The library puts the model in eval mode; its previous train/eval state is restored.
    ``batch_size`` is how many masked images Score-CAM sends through the model at once.
    """
    import pytorch_grad_cam

    check_choice(method, target_layer)
    was_training = model.training
    cam = getattr(pytorch_grad_cam, METHODS[method])(model, [model.get_submodule(target_layer)])
    cam.batch_size = batch_size  # read by ScoreCAM only
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)


@contextmanager
def private_model(predictor: Predictor) -> Iterator[nn.Module]:
    """A copy of the served model for hooked methods, lent to one caller at a time.

    Forward hooks on the served model would also catch the forwards of other requests
    (and the all-class Grad-CAM), so library methods never hook ``predictor.model`` itself.
    """
    with _COPIES_LOCK:
        if predictor.model not in _COPIES:
            _COPIES[predictor.model] = (copy.deepcopy(predictor.model).eval(), threading.Lock())
        model, lock = _COPIES[predictor.model]
    with lock:
        yield model


def cam_batch(
    model: nn.Module,
    batch: torch.Tensor,
    method: str,
    class_indices: Sequence[int],
    target_layer: str,
    batch_size: int = SCORE_CAM_BATCH,
) -> np.ndarray:
    """(B, 3, h, w) input, one class per image → (B, h, w) maps in [0, 1] from pytorch-grad-cam."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(class_indices) != len(batch):
        raise ValueError(f"{len(batch)} images need as many classes; got {len(class_indices)}")
    targets = [ClassifierOutputTarget(int(k)) for k in class_indices]
    with library_cam(model, method, target_layer, batch_size) as cam:
        return cam(batch, targets)


def explain(
    predictor: Predictor,
    source: Prediction | LoadedImage,
    method: str = DEFAULT_METHOD,
    class_index: int | None = None,
    target_layer: str | None = None,
    batch_size: int = SCORE_CAM_BATCH,
) -> np.ndarray:
    """``method``'s map for ``class_index`` (default: the top class) at image resolution, in [0, 1].

    ``source`` is a ``Prediction`` (then default Grad-CAM is free: its cached map) or a bare
    ``LoadedImage``. ``target_layer`` defaults to the checkpoint's (the last dense block).
    """
    target_layer = target_layer or predictor.config.target_layer
    check_choice(method, target_layer)
    labels = predictor.config.label_names
    if class_index is None:
        if not isinstance(source, Prediction):
            raise ValueError("class_index is required when source is an image, not a Prediction")
        class_index = source.top_index
    if not 0 <= class_index < len(labels):
        raise ValueError(f"class index {class_index} out of range 0..{len(labels) - 1}")
    if (
        isinstance(source, Prediction)
        and method == DEFAULT_METHOD
        and target_layer == predictor.config.target_layer
    ):
        return source.heatmap(class_index)
    image = source.image if isinstance(source, Prediction) else source
    box = source.box if isinstance(source, Prediction) else None
    box = box or predictor.frame([image])[1][0]
    batch = predictor.batch([image], [box])
    with private_model(predictor) as model:
        cam = cam_batch(model, batch, method, [class_index], target_layer, batch_size)
    return to_image(cam[0], box, image.size)


def to_image(cam: np.ndarray, box: CropBox, size: tuple[int, int]) -> np.ndarray:
    """A [0, 1] map at network resolution → [0, 1] map over the image of ``size`` = (W, H),
    0 outside ``box``, the part of the image the network saw."""
    if box.size == size:
        return scale_cam(cam, size)
    return box.paste(scale_cam(cam, box.size), size)


def score_cam_seconds(predictor: Predictor, target_layer: str, probe_images: int = 4) -> float:
    """Expected Score-CAM time: seconds per masked forward (timed) × channels of the layer.

    Score-CAM sends one masked copy of the input per channel of ``target_layer``; the time
    per copy is the faster of two timed forwards of ``probe_images`` copies.
    """
    check_choice("Score-CAM", target_layer)
    height, width = predictor.config.image_size
    probe = torch.zeros(probe_images, 3, height, width, device=predictor.device)
    channels: list[int] = []
    with private_model(predictor) as model:
        layer = model.get_submodule(target_layer)
        handle = layer.register_forward_hook(lambda _m, _i, out: channels.append(out.shape[1]))
        try:
            seconds = min(_timed(lambda: model(probe)) for _ in range(2))
        finally:
            handle.remove()
    return seconds / probe_images * channels[0]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - start
