"""The one image → tensor path (albumentations), shared by training, evaluation and serving.

The config that travels with the weights decides size, interpolation, normalisation,
contrast equalisation and whether the image is first cropped to the lung fields, so a
checkpoint is always fed the way it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class CropBox:
    """The part of an image the network saw: pixel box ``[x0, x1) × [y0, y1)``.

    Serving crops to the lung fields (plus a margin) so that borders, text marks and the
    field of view — which tell the source hospital, not the disease — stay out of the input.
    A heatmap computed on the crop is pasted back into the full image with ``paste``.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def whole(cls, pixels: np.ndarray) -> CropBox:
        return cls(0, 0, pixels.shape[1], pixels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the box."""
        return self.x1 - self.x0, self.y1 - self.y0

    def covers(self, pixels: np.ndarray) -> bool:
        return self == CropBox.whole(pixels)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.y0 : self.y1, self.x0 : self.x1]

    def paste(
        self,
        region: np.ndarray,
        image_size: tuple[int, int],
        out_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """A map of the box (any resolution) → a map of the image, 0 outside the box.

        ``image_size`` is the image's (W, H); the result has ``out_size`` (W, H), default the
        image's own, with the box scaled to it.
        """
        width, height = image_size
        out_w, out_h = out_size or image_size
        scale_x, scale_y = out_w / width, out_h / height
        x0, y0 = min(round(self.x0 * scale_x), out_w - 1), min(round(self.y0 * scale_y), out_h - 1)
        x1 = min(max(round(self.x1 * scale_x), x0 + 1), out_w)
        y1 = min(max(round(self.y1 * scale_y), y0 + 1), out_h)
        out = np.zeros((out_h, out_w), dtype=np.float32)
        if region.shape != (y1 - y0, x1 - x0):
            region = cv2.resize(
                region.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR
            )
        out[y0:y1, x0:x1] = region
        return out

    def jittered(self, shape: tuple[int, int], rng: np.random.Generator, amount: float) -> CropBox:
        """Each edge moved by up to ``amount`` × the box's side, clipped to the image (training)."""
        height, width = shape
        box_w, box_h = self.size
        dx = rng.uniform(-amount, amount, 2) * box_w
        dy = rng.uniform(-amount, amount, 2) * box_h
        x0 = int(np.clip(self.x0 + dx[0], 0, width - 2))
        y0 = int(np.clip(self.y0 + dy[0], 0, height - 2))
        x1 = int(np.clip(self.x1 + dx[1], x0 + 2, width))
        y1 = int(np.clip(self.y1 + dy[1], y0 + 2, height))
        return CropBox(x0, y0, x1, y1)


def lung_box(mask: np.ndarray, margin: float) -> CropBox | None:
    """Bounding box of the lung ``mask`` grown by ``margin`` × its size on every side.

    ``None`` when the mask is empty: the caller then shows the network the whole image.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    height, width = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    pad_x, pad_y = margin * (x1 - x0), margin * (y1 - y0)
    return CropBox(
        int(max(0, x0 - pad_x)),
        int(max(0, y0 - pad_y)),
        int(min(width, x1 + pad_x)),
        int(min(height, y1 + pad_y)),
    )


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
