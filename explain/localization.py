"""Does a heatmap point at the lesion? Measures against expert boxes, their baselines, intervals.

The measures follow CheXlocalize (Saporta et al., "Benchmarking saliency methods for chest
X-ray interpretation", Nat. Mach. Intell. 2022), with boxes standing in for its masks:

- **hit** — the pointing game (Zhang et al., "Top-down neural attention by excitation
  backprop", IJCV 2018): is the map's maximum inside a box? Scored CheXlocalize's way, with no
  pixel tolerance; when several pixels tie for the maximum, the hit is the share of them that
  lies inside, so a flat map scores the boxes' area share instead of an arbitrary 0 or 1.
- **energy** — the share of the map's (non-negative) mass inside the boxes.
- **iou_otsu** — IoU of the boxes with the map min-max normalised and thresholded by Otsu's
  method, as CheXlocalize turns a saliency map into a segmentation (it quantises to 8 bits and
  calls OpenCV; 256 histogram bins here amount to the same).
- **iou_top20** — IoU of the boxes with the map's top 20 % of the area.

Every figure means something only beside baselines scored on the same films: a flat map over
the image, a flat map over the crop the network saw, a centre Gaussian, and a location prior —
where this class's lesions lie on average in the training films, in the network's crop frame —
which knows where a disease usually is and nothing about the film. Plain numpy (scikit-image
for Otsu when importable); no torch.

Example::

    mask = box_mask([(40, 30, 90, 80)], (128, 128))
    score_map(heat, mask)  # {"hit": 1.0, "energy": 0.61, "iou_otsu": 0.52, "iou_top20": 0.47}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.crop import CropBox

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (or 0–1 of a frame)
MEASURES = ("hit", "energy", "iou_otsu", "iou_top20")
TOP_AREA = 0.2  # iou_top20 keeps this share of the map's area
TIE_ATOL = 1e-6  # values this close to the maximum tie for it (maps are in [0, 1])
OTSU_BINS = 256
PRIOR_GRID = 128  # side of the location prior, in the network's crop frame
GAUSSIAN_SIGMA = 0.25  # centre baseline's standard deviation, a share of each side
RESAMPLES = 2000  # bootstrap resamples of the films
LEVEL = 0.95

# A lesion-box folder (``../shared/data/lesions``' layout): ``images/`` and ``boxes.csv``.
BOXES_FILE = "boxes.csv"
COLUMNS = (
    "image",
    "split",
    "label",
    "finding",
    "x0",
    "y0",
    "x1",
    "y1",
    "patient_id",
    "source",
    "license",
)
SPLITS = ("train", "val", "test")


def box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """The union of ``boxes`` as a boolean (H, W) mask: a pixel is inside when its centre is."""
    height, width = shape
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return mask


def _check(heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.shape != mask.shape:
        raise ValueError(f"map {heat.shape} and box mask {mask.shape} must be the same 2-D shape")
    if not np.isfinite(heat).all():
        raise ValueError("the map holds NaN or infinite values")
    if not mask.any():
        raise ValueError("the box mask is empty: no pixel centre lies in any box")
    return heat


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's maxima (ties within ``TIE_ATOL``) inside ``mask`` (Zhang et al. 2018)."""
    heat = _check(heat, mask)
    return float(mask[heat >= heat.max() - TIE_ATOL].mean())


def energy_share(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass (negative values count as 0) inside ``mask``; a map without
    mass prefers nothing and scores the mask's area share."""
    heat = np.clip(_check(heat, mask), 0.0, None)
    total = float(heat.sum(dtype=np.float64))
    return float(mask.mean()) if total <= 0 else float(heat[mask].sum(dtype=np.float64) / total)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold: scikit-image's ``threshold_otsu`` when installed, else ``numpy_otsu``."""
    try:
        from skimage.filters import threshold_otsu
    except ImportError:
        return numpy_otsu(values)
    return float(threshold_otsu(values, nbins=OTSU_BINS))


def numpy_otsu(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold computed as scikit-image 0.26 does for a float image: a ``bins``-bin
    histogram over the values' range, the bin centre maximising the between-class variance
    (the value itself when all values are equal)."""
    flat = np.asarray(values).reshape(-1)
    if np.all(flat == flat[0]):
        return float(flat[0])
    counts, edges = np.histogram(flat, bins=bins)
    counts = counts.astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[np.argmax(variance)])


def otsu_mask(heat: np.ndarray) -> np.ndarray:
    """CheXlocalize's segmentation of a map: min-max normalised, kept above Otsu's threshold.
    A constant map prefers nothing and keeps every pixel."""
    low, high = float(heat.min()), float(heat.max())
    if high <= low:
        return np.ones(heat.shape, dtype=bool)
    scaled = (heat - low) / (high - low)
    return scaled > otsu_threshold(scaled)


def top_area_mask(heat: np.ndarray, fraction: float = TOP_AREA) -> np.ndarray:
    """The pixels at or above the map's ``1 − fraction`` quantile; ties at the threshold are all
    kept, so a flat plateau is kept whole rather than cut at random."""
    return heat >= np.quantile(heat, 1.0 - fraction)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = int(np.count_nonzero(predicted | truth))
    return float(np.count_nonzero(predicted & truth) / union) if union else 0.0


def score_map(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every measure (``MEASURES``) of one map against one film's box ``mask``."""
    heat = _check(heat, mask)
    return {
        "hit": pointing_hit(heat, mask),
        "energy": energy_share(heat, mask),
        "iou_otsu": iou(otsu_mask(heat), mask),
        "iou_top20": iou(top_area_mask(heat), mask),
    }


def flat_map(shape: tuple[int, int]) -> np.ndarray:
    """Baseline: the same value everywhere on the image."""
    return np.ones(shape, dtype=np.float32)


def flat_crop_map(shape: tuple[int, int], crop: CropBox) -> np.ndarray:
    """Baseline: the same value on the crop the network saw, 0 outside it."""
    return crop.paste(np.ones((1, 1), dtype=np.float32), (shape[1], shape[0]))


def centre_gaussian(shape: tuple[int, int], sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """Baseline: a Gaussian at the image centre, ``sigma`` × each side."""
    height, width = shape
    ys = ((np.arange(height) + 0.5) / height - 0.5) / sigma
    xs = ((np.arange(width) + 0.5) / width - 0.5) / sigma
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


def to_crop_frame(box: Box, crop: CropBox) -> Box:
    """A box in image pixels → 0–1 coordinates of ``crop`` (clipped to it)."""
    width, height = crop.size
    origin = np.array([crop.x0, crop.y0, crop.x0, crop.y0], dtype=np.float64)
    scaled = (np.asarray(box, dtype=np.float64) - origin) / [width, height, width, height]
    x0, y0, x1, y1 = (float(v) for v in np.clip(scaled, 0.0, 1.0))
    return x0, y0, x1, y1


def location_prior(films: Sequence[Sequence[Box]], grid: int = PRIOR_GRID) -> np.ndarray:
    """The average lesion map of ``films`` (each a list of 0–1 crop-frame boxes): the share of
    films whose boxes cover each point of the crop frame, on a ``grid`` × ``grid`` map."""
    if not films:
        raise ValueError("a location prior needs at least one film with boxes")
    masks = [box_mask([_scaled(box, grid) for box in boxes], (grid, grid)) for boxes in films]
    return np.mean(masks, axis=0).astype(np.float32)


def _scaled(box: Box, factor: float) -> Box:
    x0, y0, x1, y1 = box
    return x0 * factor, y0 * factor, x1 * factor, y1 * factor


def place_prior(prior: np.ndarray, shape: tuple[int, int], crop: CropBox) -> np.ndarray:
    """The prior (crop frame) placed over a film of ``shape`` (H, W) in its crop, 0 outside."""
    return crop.paste(prior, (shape[1], shape[0]))


def bootstrap_interval(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling the films with replacement."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarise(values: Sequence[float], resamples: int = RESAMPLES) -> dict[str, Any]:
    """n, mean and bootstrap 95 % interval of one measure over films (None when n = 0)."""
    if not len(values):
        return {"n": 0, "mean": None, "ci95": None}
    low, high = bootstrap_interval(values, resamples)
    return {"n": len(values), "mean": float(np.mean(values)), "ci95": [low, high]}


def group_report(
    films: Sequence[Mapping[str, Mapping[str, float]]], prior: str, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """Each map's measures over ``films`` (each: map name → ``score_map``), and its lift over
    the ``prior`` map on the same films: per-film differences, so the interval is paired."""
    names = list(films[0]) if films else []
    report: dict[str, Any] = {}
    for name in names:
        values = {m: [film[name][m] for film in films] for m in MEASURES}
        lifts = {m: [film[name][m] - film[prior][m] for film in films] for m in MEASURES}
        report[name] = {
            "scores": {m: summarise(values[m], resamples) for m in MEASURES},
            "lift_over_prior": None
            if name == prior
            else {m: summarise(lifts[m], resamples) for m in MEASURES},
        }
    return report
