"""The training augmentations of ``model.transforms`` on whole batches of tensors, on the GPU.

``training.train_guided`` keeps every cached film on the device and augments a batch in a few
kernels, so a GPU is never left waiting on CPU workers. Geometry moves the film and its lung
and lesion masks together (one affine grid); then, as in ``model.transforms``: flat frames,
burnt-in marks, resampling blur, gamma and brightness/contrast. No horizontal flip: the heart
is on the left.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def random_affine(n: int, device: torch.device, p: float = 0.8) -> torch.Tensor:
    """(n, 2, 3) affine grids: scale 0.9–1.1, shift ±6 %, rotation ±10°, each with prob. ``p``."""
    scale = _uniform(n, 0.9, 1.1, device)
    angle = _uniform(n, -10.0, 10.0, device) * math.pi / 180
    shift = _uniform(2 * n, -0.12, 0.12, device).view(n, 2)  # ±6 % of the side in [-1, 1]
    keep = torch.rand(n, device=device) >= p
    scale, angle = scale.masked_fill(keep, 1.0), angle.masked_fill(keep, 0.0)
    shift = shift.masked_fill(keep[:, None], 0.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )


def warp(batch: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply affine grids to (n, c, h, w) floats; outside the film is 0 (black, as serving)."""
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_frames(images: torch.Tensor, p: float = 0.35) -> torch.Tensor:
    """Flat bands of one random grey on random sides (2–15 % deep): the borders that differ
    by source. ``images`` (n, 1, h, w) in 0–255."""
    n, _, height, width = images.shape
    device = images.device
    chosen = torch.rand(n, device=device) < p
    sides = (torch.rand(n, 4, device=device) < 0.5) & chosen[:, None]
    depth = _uniform(4 * n, 0.02, 0.15, device).view(n, 4)
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    band = (
        (sides[:, 0, None, None] & (ys[None, :, None] < depth[:, 0, None, None]))
        | (sides[:, 1, None, None] & (ys[None, :, None] > 1 - depth[:, 1, None, None]))
        | (sides[:, 2, None, None] & (xs[None, None, :] < depth[:, 2, None, None]))
        | (sides[:, 3, None, None] & (xs[None, None, :] > 1 - depth[:, 3, None, None]))
    )
    grey = torch.randint(0, 256, (n, 1, 1), device=device).float()
    return torch.where(band[:, None], grey[:, None], images)


def text_stamps(count: int = 64, seed: int = 0) -> torch.Tensor:
    """(count, 40, 120) 0/1 masks of 1–3 random letters (side markers, burnt-in text)."""
    rng = np.random.default_rng(seed)
    stamps = np.zeros((count, 40, 120), np.uint8)
    for stamp in stamps:
        text = "".join(rng.choice(list("ABCDEFGHLPRSTX0123456789"), int(rng.integers(1, 4))))
        scale = float(rng.uniform(0.3, 0.9))
        cv2.putText(
            stamp, text, (2, 30), cv2.FONT_HERSHEY_SIMPLEX, scale, 1, max(1, round(scale * 2))
        )
    return torch.from_numpy(stamps).float()


def random_marks(images: torch.Tensor, stamps: torch.Tensor, p: float = 0.35) -> torch.Tensor:
    """A letter stamp or a bright/dark square near an edge on a share ``p`` of the images."""
    n, _, height, width = images.shape
    out = images.clone()
    stamp_h, stamp_w = stamps.shape[1:]
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,))))
    for i in np.flatnonzero(rng.random(n) < p):
        x = int(rng.choice([rng.uniform(0.02, 0.25), rng.uniform(0.55, 0.8)]) * width)
        y = int(rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.7, 0.85)]) * height)
        value = float(rng.choice([0.0, 255.0]))
        if rng.random() < 0.7:
            mark = stamps[int(rng.integers(len(stamps)))].to(images.device)
            h, w = min(stamp_h, height - y), min(stamp_w, width - x)
            region = out[i, 0, y : y + h, x : x + w]
            out[i, 0, y : y + h, x : x + w] = torch.where(mark[:h, :w] > 0, value, region)
        else:
            side = max(2, int(rng.uniform(0.02, 0.06) * width))
            out[i, 0, y : y + side, x : x + side] = value
    return out


def random_resampling(
    images: torch.Tensor, p_down: float = 0.3, p_blur: float = 0.15
) -> torch.Tensor:
    """Downscale–upscale (35–90 %) and Gaussian blur (3 or 5 px) on random subsets."""
    n, _, height, width = images.shape
    out = images
    down = torch.rand(n, device=images.device) < p_down
    if down.any():
        factor = float(np.random.uniform(0.35, 0.9))
        small = F.interpolate(out[down], scale_factor=factor, mode="area")
        out = out.clone()
        out[down] = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    blur = torch.rand(n, device=images.device) < p_blur
    if blur.any():
        size = int(np.random.choice([3, 5]))
        kernel = torch.from_numpy(cv2.getGaussianKernel(size, 0).astype(np.float32)).to(
            images.device
        )
        kernel2d = (kernel @ kernel.T)[None, None]
        out = out.clone()
        out[blur] = F.conv2d(F.pad(out[blur], [size // 2] * 4, mode="replicate"), kernel2d)
    return out


def random_intensity(images: torch.Tensor) -> torch.Tensor:
    """Gamma 0.7–1.5 (prob. 0.5), then brightness and contrast ±20 % (prob. 0.8); 0–255."""
    n = images.shape[0]
    device = images.device
    gamma = torch.where(torch.rand(n, device=device) < 0.5, _uniform(n, 0.7, 1.5, device), 1.0)
    out = 255.0 * (images.clamp(0, 255) / 255.0) ** gamma[:, None, None, None]
    apply = torch.rand(n, device=device) < 0.8
    contrast = torch.where(apply, _uniform(n, 0.8, 1.2, device), 1.0)[:, None, None, None]
    brightness = torch.where(apply, _uniform(n, -0.2, 0.2, device), 0.0)[:, None, None, None]
    return (out * contrast + brightness * 255.0).clamp(0, 255)


def augment(
    images: torch.Tensor, masks: torch.Tensor, stamps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, h, w) 0–255 films and (n, m, s, s) masks → both moved alike, films changed."""
    theta = random_affine(images.shape[0], images.device)
    films = warp(images, theta)
    moved = warp(masks, theta)
    films = random_marks(random_frames(films), stamps)
    return random_intensity(random_resampling(films)), moved


def normalise(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(n, 1, h, w) 0–255 → (n, 3, h, w) normalised as ``model.transforms`` does."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images / 255.0 - mean_t) / std_t
