"""The lung fields found on one image, and how much of a heatmap lies on them.

Plain numpy (no torch): ``model.segmenter`` produces ``LungMask``; the server process, which
never imports torch, reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class LungMask:
    """A segmentation: the boolean mask at the image's own size and whether lungs were found."""

    mask: np.ndarray  # (H, W) bool; all False when ``found`` is False
    found: bool
    lung_fraction: float  # share of the image's pixels inside the mask (0 when not found)
    components: int  # connected lung regions kept (0, 1 or 2)
    contrast: float = 0.0  # how much darker the mask is than its surroundings (see config)
    # The encoder's features of the whole image, each stage averaged over space and joined:
    # what the not-a-chest-X-ray guard compares with chest X-rays (``model.ood``), since the
    # classifier itself sees only the lung crop. None when not computed.
    features: np.ndarray | None = None


def heatmap_share_on_lungs(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of a heatmap's energy inside the lung mask, in [0, 1]; None when the mask is empty.

    The heatmap is resized (bilinear) to the mask's size and min-max normalised to [0, 1];
    the share is ``sum(h inside mask) / sum(h)``. A constant heatmap carries no localisation,
    so it is treated as uniform and the share equals the mask's area fraction.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if heat.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D; got shapes {heat.shape} and {mask.shape}")
    if not mask.any():
        return None
    if heat.shape != mask.shape:
        heat = cv2.resize(heat, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(heat.min()), float(heat.max())
    if high <= low:
        return float(mask.mean())
    heat = (heat - low) / (high - low)
    return float(heat[mask].sum() / heat.sum())
