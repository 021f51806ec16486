"""Drawing heatmaps over the uploaded image at its own resolution."""

from __future__ import annotations

import cv2
import numpy as np

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,  # colour-blind safe
    "cividis": cv2.COLORMAP_CIVIDIS,  # colour-blind safe
}


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """[0, 1] map (H, W) → RGB uint8 (H, W, 3) through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    scaled = np.uint8(np.clip(heatmap, 0.0, 1.0) * 255)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(
    gray: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45, colormap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] heatmap over a grayscale image of the same size → RGB uint8."""
    if gray.shape[:2] != heatmap.shape[:2]:
        raise ValueError(f"image {gray.shape[:2]} and heatmap {heatmap.shape[:2]} differ in size")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colorize(heatmap, colormap), opacity, base, 1.0 - opacity, 0.0)
