"""The part of an image the network saw, and the lung-field box it is cut from.

Plain numpy (no torch): the server process, which never imports torch, places heatmaps with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
