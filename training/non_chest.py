"""Images that are not chest X-rays, for measuring the guard (``training.ood_fit measure``,
``tests/test_ood.py``): package sample images and generated documents, noise, CT-like slices
and hand- and knee-like radiographs, each handed to the predictor as an upload would be.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from imaging.image import LoadedImage
from imaging.load import load_image


def non_chest_images(seed: int = 0, per_kind: int = 8) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image) pairs that are not chest X-rays: package sample images and generated ones.

    Samples come from scikit-image's ``skimage.data`` (only files shipped in the wheel) and
    scikit-learn's ``load_sample_images``; generated kinds are documents, colour noise,
    CT-like slices and hand- and knee-like radiograph shapes.
    """
    import skimage.data
    from sklearn.datasets import load_sample_images

    shipped = [
        "astronaut",
        "camera",
        "coins",
        "coffee",
        "chelsea",
        "rocket",
        "horse",
        "moon",
        "page",
        "text",
        "checkerboard",
        "clock",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "brick",
        "grass",
        "gravel",
        "cell",
        "colorwheel",
        "logo",
        "microaneurysms",
        "shepp_logan_phantom",
    ]
    for name in shipped:
        yield f"skimage.{name}", _to_uint8(getattr(skimage.data, name)())
    for image in load_sample_images().images:
        yield "sklearn.sample", image
    rng = np.random.default_rng(seed)
    makers = {
        "document": _document,
        "colour-noise": lambda r: r.integers(0, 256, (r.integers(200, 400), 300, 3), np.uint8),
        "ct-slice": _ct_slice,
        "hand-xray": _hand,
        "knee-xray": _knee,
    }
    for kind, make in makers.items():
        for _ in range(per_kind):
            yield f"generated.{kind}", make(rng)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    return np.round(255 * (values - values.min()) / max(np.ptp(values), 1e-12)).astype(np.uint8)


def _document(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    page = Image.new("L", (420, 594), 245)
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(20, 60))
    while y < 560:
        words = " ".join("x" * int(n) for n in rng.integers(2, 10, 8))
        draw.text((int(rng.integers(20, 50)), y), words.replace("x", "lorem")[:70], fill=20)
        y += int(rng.integers(14, 30))
    return np.asarray(page)


def _canvas(rng: np.random.Generator, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / size
    background = rng.normal(12, 4, (size, size))
    return background, np.stack([yy, xx])


def _ellipse(grid: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0):
    y, x = grid[0] - cy, grid[1] - cx
    c, s = np.cos(angle), np.sin(angle)
    return ((c * x + s * y) / rx) ** 2 + ((-s * x + c * y) / ry) ** 2 <= 1


def _ct_slice(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.5, 0.5, 0.36, 0.46)] = 110  # body
    image[_ellipse(grid, 0.5, 0.32, 0.2, 0.12)] = 25  # lungs, dark
    image[_ellipse(grid, 0.5, 0.68, 0.2, 0.12)] = 25
    image[_ellipse(grid, 0.72, 0.5, 0.06, 0.06)] = 230  # vertebra
    image[_ellipse(grid, 0.45, 0.55, 0.1, 0.09)] = 140  # heart
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _hand(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.78, 0.5, 0.2, 0.22)] = 90  # palm soft tissue
    image[_ellipse(grid, 0.75, 0.5, 0.14, 0.16)] = 170  # carpals and metacarpals
    for k, angle in enumerate(np.linspace(-0.6, 0.6, 5) + rng.normal(0, 0.05, 5)):
        cy, cx = 0.42 - 0.05 * abs(k - 2), 0.5 + np.sin(angle) * 0.3
        image[_ellipse(grid, cy, cx, 0.2, 0.045, angle)] = 80  # finger
        image[_ellipse(grid, cy, cx, 0.17, 0.022, angle)] = 200  # phalanges
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _knee(rng: np.random.Generator) -> np.ndarray:
    image, grid = _canvas(rng)
    image[_ellipse(grid, 0.5, 0.5, 0.6, 0.3)] = 85  # leg soft tissue
    gap = rng.uniform(0.02, 0.05)
    image[_ellipse(grid, 0.2 - gap, 0.5, 0.32, 0.13)] = 200  # femur
    image[_ellipse(grid, 0.48 - gap, 0.5, 0.06, 0.2)] = 210  # condyles
    image[_ellipse(grid, 0.82 + gap, 0.5, 0.3, 0.12)] = 195  # tibia
    image[_ellipse(grid, 0.55 + gap, 0.5, 0.04, 0.18)] = 205  # plateau
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def as_upload(pixels: np.ndarray) -> LoadedImage:
    """An array as if uploaded: PNG-encoded, then decoded by ``load_image`` (saturation too)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return load_image(buffer.getvalue())
