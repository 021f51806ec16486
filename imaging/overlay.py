"""Drawing heatmaps over the uploaded image at its own resolution."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,  # colour-blind safe
    "cividis": cv2.COLORMAP_CIVIDIS,  # colour-blind safe
}


DEFAULT_OPACITY = 0.35  # the film stays readable under the heat (docs/screenshot.png)
DEFAULT_COLORMAP = "inferno"  # low = dark, not a blue veil over the whole film
# Outlines are white with a black halo on each side: every colormap above has dark and light
# ends, so a single colour vanishes somewhere, a two-tone line reads on all of them.
OUTLINE_COLOR = (255, 255, 255)
OUTLINE_HALO = (0, 0, 0)
MARK_COLOR = (0, 255, 255)  # reviewers' marks: cyan, apart from every colormap's ends
FULL_WINDOW = (128, 256)  # (level, width) of 8-bit gray that shows the film as it is


def apply_window(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """The film seen through a display window (uint8): gray values ``level ± width / 2`` are
    stretched over black … white, the rest clipped (brightness = level, contrast = width)."""
    if width <= 0:
        raise ValueError(f"window width must be positive; got {width}")
    if (level, width) == FULL_WINDOW:
        return gray
    low = level - width / 2.0
    table = np.clip((np.arange(256) - low) * 255.0 / width, 0, 255).round().astype(np.uint8)
    return cv2.LUT(gray, table)


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """[0, 1] map (H, W) → RGB uint8 (H, W, 3) through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    scaled = np.uint8(np.clip(heatmap, 0.0, 1.0) * 255)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def colorbar(
    colormap: str = DEFAULT_COLORMAP, length: int = 256, thickness: int = 16
) -> np.ndarray:
    """A horizontal colour bar, low (left, 0) to high (right, 1): RGB (thickness, length, 3).

    The scale every overlay needs beside it: the heatmap is min-max scaled per image, so its
    colours mean "relatively low" to "relatively high" for this image and class.
    """
    ramp = np.linspace(0.0, 1.0, length, dtype=np.float32)[None, :].repeat(thickness, axis=0)
    return colorize(ramp, colormap)


def colorbar_stops(colormap: str = DEFAULT_COLORMAP, stops: int = 9) -> list[str]:
    """``stops`` evenly spaced colours of ``colormap`` from low to high, as ``#rrggbb``."""
    row = colorbar(colormap, stops, 1)[0]
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in row]


def overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
    contour: bool = False,
) -> np.ndarray:
    """Blend a [0, 1] heatmap over a grayscale image of the same size → RGB uint8.

    ``contour`` outlines the top-10 % activation region (see ``draw_contour``).
    """
    if gray.shape[:2] != heatmap.shape[:2]:
        raise ValueError(f"image {gray.shape[:2]} and heatmap {heatmap.shape[:2]} differ in size")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]; got {opacity}")
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    blended = cv2.addWeighted(colorize(heatmap, colormap), opacity, base, 1.0 - opacity, 0.0)
    return draw_contour(blended, heatmap) if contour else blended


def top_region(heatmap: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Boolean mask of the ``fraction`` of pixels with the highest activation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    threshold = np.quantile(heatmap, 1.0 - fraction)
    return (heatmap >= threshold) & (heatmap > 0)


def draw_contour(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    fraction: float = 0.1,
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Outline the top-``fraction`` activation region of ``heatmap`` on a copy of ``rgb``."""
    if rgb.shape[:2] != heatmap.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and heatmap {heatmap.shape[:2]} differ in size")
    return draw_outline(rgb, top_region(heatmap, fraction), color, halo=None)


def draw_outline(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = OUTLINE_COLOR,
    halo: tuple[int, int, int] | None = OUTLINE_HALO,
) -> np.ndarray:
    """Outline every region of a boolean ``mask`` (e.g. the lung fields) on a copy of ``rgb``.

    The line is about 1/256 of the longer side thick (at least 1 px); with ``halo`` a line of
    that colour 2 px wider is drawn first, so the outline reads on any colormap.
    """
    if rgb.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and mask {mask.shape[:2]} differ in size")
    contours, _ = cv2.findContours(np.uint8(mask) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(rgb.shape[:2]) / 256))
    out = rgb.copy()
    if halo is not None:
        cv2.drawContours(out, contours, -1, halo, thickness + 2)
    return cv2.drawContours(out, contours, -1, color, thickness)


def draw_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Outline the pixel box ``[x0, x1) × [y0, y1)`` given as ``(x0, y0, x1, y1)``, in the
    style of ``draw_outline`` (e.g. the crop a lung-cropping model saw)."""
    x0, y0, x1, y1 = box
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return draw_outline(rgb, mask)


def draw_marks(
    rgb: np.ndarray, boxes: list[tuple[int, int, int, int]], scale: float = 1.0
) -> np.ndarray:
    """Reviewers' boxes ``(x0, y0, x1, y1)`` (film pixels × ``scale``) in ``MARK_COLOR`` with a
    black halo, numbered in the order they were drawn, on a copy of ``rgb``."""
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 300))
    for number, box in enumerate(boxes, start=1):
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), OUTLINE_HALO, thickness + 2)
        cv2.rectangle(out, (x0, y0), (x1, y1), MARK_COLOR, thickness)
        origin = (x0 + thickness + 2, y0 + 6 * thickness + 8)
        cv2.putText(out, str(number), origin, cv2.FONT_HERSHEY_SIMPLEX, thickness / 3,
                    MARK_COLOR, max(1, thickness - 1), cv2.LINE_AA)  # fmt: skip
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a grayscale (H, W) or RGB (H, W, 3) uint8 array, or a [0, 1] float map, as PNG."""
    if array.dtype != np.uint8:
        array = np.uint8(np.round(np.clip(array, 0.0, 1.0) * 255))
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    path = Path(path)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write PNG to {path}")
    return path


def export_pngs(
    heatmap: np.ndarray, blended: np.ndarray, folder: str | Path, stem: str = "lungcam"
) -> tuple[Path, Path]:
    """Save the heatmap (8-bit gray, 255 = 1.0) and the overlay (RGB) as PNGs in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return (
        save_png(heatmap, folder / f"{stem}-heatmap.png"),
        save_png(blended, folder / f"{stem}-overlay.png"),
    )
