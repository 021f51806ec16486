"""The one image → tensor path (albumentations), shared by training, evaluation and serving.

The config that travels with the weights decides size, interpolation, normalisation,
contrast equalisation and whether the image is first cropped to the lung fields, so a
checkpoint is always fed the way it was trained.
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


def _random_frame(image: np.ndarray, **_: object) -> np.ndarray:
    """Flat bands of one random grey on random sides: the borders that differ by source."""
    rng = np.random.default_rng()
    out = image.copy()
    height, width = out.shape[:2]
    value = int(rng.integers(0, 256))
    for side in np.flatnonzero(rng.random(4) < 0.5):
        band = int(rng.uniform(0.02, 0.15) * (height if side < 2 else width))
        if side == 0:
            out[:band] = value
        elif side == 1:
            out[height - band :] = value
        elif side == 2:
            out[:, :band] = value
        else:
            out[:, width - band :] = value
    return out


def _random_marks(image: np.ndarray, **_: object) -> np.ndarray:
    """A few letters or a bright square near an edge: the side markers and burnt-in text."""
    rng = np.random.default_rng()
    out = image.copy()
    height, width = out.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        x = int(rng.choice([rng.uniform(0.02, 0.25), rng.uniform(0.7, 0.92)]) * width)
        y = int(rng.choice([rng.uniform(0.06, 0.25), rng.uniform(0.75, 0.95)]) * height)
        value = int(rng.choice([0, 255]))
        if rng.random() < 0.7:
            text = "".join(rng.choice(list("ABCDEFGHLPRSTX0123456789"), int(rng.integers(1, 4))))
            scale = rng.uniform(0.3, 0.9) * width / 224
            thickness = max(1, round(scale * 2))
            cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, value, thickness)
        else:
            side = max(2, int(rng.uniform(0.02, 0.06) * width))
            out[y : y + side, x : x + side] = value
    return out


def _augmentations() -> list[A.BasicTransform]:
    """Training-only changes that keep anatomy plausible and take a source's fingerprints away.

    Geometry stays small (no horizontal flip: the heart is on the left). Frames, burnt-in
    marks, resampling blur and intensity curves are what differ between hospitals, so the
    model sees every source with every kind of each.
    """
    return [
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.06, 0.06),
            rotate=(-10, 10),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=0.8,
        ),
        A.Lambda(image=_random_frame, p=0.35),
        A.Lambda(image=_random_marks, p=0.35),
        A.Downscale(scale_range=(0.35, 0.9), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.15),
        A.RandomGamma(gamma_limit=(70, 150), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.8),
    ]


def build_transform(config: ModelConfig, train: bool = False) -> A.Compose:
    """Resize (+ augmentation when ``train``) (+ CLAHE if the config says) + normalise → tensor.

    CLAHE runs on every image, training or serving, so every source's contrast is brought
    to the same local equalisation before the network sees it.
    """
    height, width = config.image_size
    clahe = A.CLAHE(clip_limit=(2.0, 2.0), tile_grid_size=(8, 8), p=1.0)
    equalise = [clahe] if config.clahe else []
    return A.Compose(
        [
            A.Resize(height, width, interpolation=_CV2_INTERPOLATION[config.interpolation]),
            *(_augmentations() if train else []),
            *equalise,
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
