"""Raw Grad-CAM maps → [0, 1] heatmaps, exactly as pytorch-grad-cam scales them.

Plain numpy and OpenCV: the web process, which never imports torch, draws every heatmap from
the raw maps the model's process sent. The library's own ``scale_cam_image`` cannot serve it:
its module imports torch, torchvision, matplotlib and scipy. ``tests/test_gradcam.py`` checks
that ``scale_cam`` equals it.
"""

from __future__ import annotations

import cv2
import numpy as np


def scale_cam(cam: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` for one (h, w) map: shift to 0, divide by
    (1e-7 + max), resize to ``size`` = (width, height) with ``cv2.resize``; float32."""
    cam = cam - np.min(cam)
    cam = cam / (1e-7 + np.max(cam))
    return cv2.resize(np.float32(cam), size) if size is not None else np.float32(cam)


def normalise_cam(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One raw map (h, w) → [0, 1] map of ``size`` = (width, height).

    Scales twice, exactly as pytorch-grad-cam's ``BaseCAM`` does (scale per layer with
    resize, then again after aggregating layers), so our maps and its maps are comparable
    number for number.
    """
    return scale_cam(scale_cam(raw, size))
