"""The one image → tensor path (albumentations), shared by training, evaluation and serving.

The config that travels with the weights decides size, interpolation and normalisation,
so a checkpoint is always fed the way it was trained.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from model.config import ModelConfig

_CV2_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


def build_transform(config: ModelConfig, train: bool = False) -> A.Compose:
    """Resize + normalise (+ mild, X-ray-safe augmentation when ``train``) → CHW float tensor.

    Training augmentation keeps anatomy plausible: small rotation, shift and scale, and
    brightness/contrast jitter. No horizontal flip: the heart is on the left.
    """
    height, width = config.image_size
    augment = (
        [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.06, 0.06),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.8),
        ]
        if train
        else []
    )
    return A.Compose(
        [
            A.Resize(height, width, interpolation=_CV2_INTERPOLATION[config.interpolation]),
            *augment,
            A.ToRGB(num_output_channels=3),  # replicate gray after resizing: 3× less work
            A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def to_tensor(pixels: np.ndarray, transform: A.Compose) -> torch.Tensor:
    """(H, W) uint8 grayscale → (3, H', W') float tensor, the gray channel replicated."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected a (H, W) uint8 grayscale array; got shape {pixels.shape}, {pixels.dtype}"
        )
    return transform(image=pixels)["image"]
