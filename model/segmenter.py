"""Lung-field segmentation: a small U-Net that says where the lungs are on a chest X-ray.

The network is a library one (``segmentation_models_pytorch.Unet`` with a timm
MobileNetV3-small encoder, Ronneberger et al. 2015, "U-Net: Convolutional Networks for
Biomedical Image Segmentation"); it is trained by ``training.segmenter`` on the lungmask data
set. A checkpoint is a folder with ``config.json`` + ``model.safetensors``, read and written by
the classifier's folder I/O (``model.checkpoint``); the config carries the preprocessing
(input size, mean, std), the threshold and the test scores, so nothing here hard-codes them.

    >>> seg = LungSegmenter.load()                      # assets/segmenter
    >>> result = seg.analyse(gray)                      # (H, W) uint8
    >>> result.found, result.lung_fraction, result.mask.shape == gray.shape

The mask is used to say how much of a Grad-CAM heatmap lies on the lungs
(``heatmap_share_on_lungs``) and to crop the classifier's input to the lung fields
(``model.crop.lung_box``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from imaging.image import fit_within
from model.checkpoint import load_weights, read_folder, write_folder
from model.lungs import LungMask

DEFAULT_SEGMENTER = Path(__file__).resolve().parent.parent / "assets" / "segmenter"
ARCHITECTURES = ("Unet",)
POSTPROCESS_SIDE = 512  # the lungmask films the scores were measured on are ≤ 512 px a side
# The forward's intra-op threads on CPU. One: on this 2-core machine under load two threads
# took 0.9–2.3 s per forward (oversubscription), one 60 ms (docs/BENCHMARKS.md).
SEGMENTER_THREADS = 1


@dataclass
class SegmenterConfig:
    """What travels with the segmenter's weights: network, preprocessing, decision rule, scores."""

    architecture: str = "Unet"
    encoder_name: str = "tu-mobilenetv3_small_100"
    decoder_channels: tuple[int, ...] = (64, 32, 24, 16, 8)
    input_size: tuple[int, int, int] = (1, 224, 224)  # (channels, height, width)
    mean: float = 0.5
    std: float = 0.25
    threshold: float = 0.5  # on the sigmoid probability
    min_lung_fraction: float = 0.03  # below this share of the image: "no lung found"
    # Lungs are darker than what surrounds them. (mean of a ring around the mask − mean inside)
    # / image std, at the working size: flat, noise and gradient images score < 0.07 (the
    # network still draws lung shapes on them), 186 real films (lungmask val/test, lung5 test
    # incl. pediatric) ≥ 0.199. Below this: "no lung found".
    min_lung_contrast: float = 0.12
    version: str = "untrained"
    trained: bool = False
    trained_on: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"segmenter architecture {self.architecture!r} is not one of {ARCHITECTURES}"
            )
        if len(self.input_size) != 3 or self.input_size[0] != 1:
            raise ValueError(f"input_size must be (1, H, W) (grayscale); got {self.input_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1; got {self.threshold}")
        if not 0.0 <= self.min_lung_fraction < 1.0:
            raise ValueError(f"min_lung_fraction must be in [0, 1); got {self.min_lung_fraction}")
        if not self.std > 0:
            raise ValueError(f"std must be positive; got {self.std}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.input_size[1], self.input_size[2]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SegmenterConfig:
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown segmenter config keys {unknown}; known: {sorted(known)}"
            )
        return cls(**data)


def create_segmenter_network(config: SegmenterConfig) -> nn.Module:
    """The smp network the config names, with random weights (never downloads any)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(
        encoder_name=config.encoder_name,
        encoder_weights=None,
        encoder_depth=len(config.decoder_channels),
        decoder_channels=config.decoder_channels,
        in_channels=1,
        classes=1,
    )


def preprocess(gray: np.ndarray, config: SegmenterConfig) -> np.ndarray:
    """(H, W) uint8 → (1, h, w) float32 network input: squash-resize (area) and normalise.

    The one transform for serving, training and evaluation. Squashing (no letterbox) matches
    how the classifier's pediatric images were stored.
    """
    height, width = config.image_size
    resized = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    return ((resized.astype(np.float32) / 255.0 - config.mean) / config.std)[None]


def keep_lungs(mask: np.ndarray, count: int = 2) -> tuple[np.ndarray, int]:
    """Keep the ``count`` largest 8-connected components of a boolean mask and fill their holes.

    Returns (cleaned mask, number of components kept).
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask), 0
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.argsort(sizes)[::-1][:count] + 1
    cleaned = np.zeros_like(mask)
    for label in kept:  # fill each lung separately so the gap between them stays open
        cleaned |= ndimage.binary_fill_holes(labels == label)
    return cleaned, len(kept)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice overlap of two boolean masks (1.0 when both are empty)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: as they are), then restore them."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LungSegmenter:
    """A loaded segmenter in eval mode; ``analyse``/``segment`` take 8-bit grayscale arrays.

    ``threads`` sets torch's intra-op threads for its CPU forward only (None: the process's;
    default ``SEGMENTER_THREADS``), restored afterwards; measured in docs/BENCHMARKS.md
    ("Lung segmenter inside /predict").
    """

    def __init__(self, network: nn.Module, config: SegmenterConfig) -> None:
        self.network = network.eval()
        self.config = config
        self.threads: int | None = SEGMENTER_THREADS

    @classmethod
    def load(cls, path: str | Path | None = None) -> LungSegmenter:
        """Load ``config.json`` + ``model.safetensors`` from a folder (default: the bundled one).

        Raises ``CheckpointNotFound`` (a ``FileNotFoundError``) for a missing file and
        ``CheckpointError`` (a ``ValueError``) for weights another config was written for.
        """
        folder = Path(path) if path is not None else DEFAULT_SEGMENTER
        hint = f"pass a segmenter folder from training.segmenter (default {DEFAULT_SEGMENTER})"
        config, state = read_folder(folder, SegmenterConfig.load, verify_sha256=True, hint=hint)
        network = create_segmenter_network(config)
        load_weights(network, state, f"{config.encoder_name} {config.architecture}")
        return cls(network, config)

    def save(self, folder: str | Path) -> Path:
        """Write the weights (fp32) and the config with the weights' sha256."""
        return write_folder(self.network.state_dict(), self.config, folder)

    @property
    def description(self) -> str:
        return f"lung segmenter {self.config.version} ({self.config.encoder_name} U-Net)"

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the weights, which the guard's whole-image statistics are tied to."""
        return self.config.weights_sha256

    def to(self, device: torch.device | str) -> LungSegmenter:
        """Run on ``device`` (the classifier's: a GPU server must not wait on the CPU)."""
        self.network.to(device)
        return self

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Lung probability maps at the network's working size, (N, h, w) float32."""
        return self._forward(images)[1]

    @torch.inference_mode()
    def _forward(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(network inputs (N, h, w), lung probabilities (N, h, w), pooled encoder features).

        The network's own forward (smp ``SegmentationModel.forward``: encoder, decoder, head)
        written out, so the encoder's stages are kept without a hook on a shared module.
        """
        inputs = np.stack([preprocess(_check_gray(g), self.config) for g in images])
        device = next(self.network.parameters()).device
        with torch_threads(self.threads if device.type == "cpu" else None):
            stages = self.network.encoder(torch.from_numpy(inputs).to(device))
            logits = self.network.segmentation_head(self.network.decoder(stages))
        # stages[0] is the input itself; the others are the encoder's feature maps
        pooled = torch.cat([stage.float().mean(dim=(2, 3)) for stage in stages[1:]], dim=1)
        probabilities = torch.sigmoid(logits)[:, 0].float().cpu().numpy()
        return inputs[:, 0], probabilities, pooled.cpu().numpy()

    def analyse_many(self, images: Sequence[np.ndarray]) -> list[LungMask]:
        """Segment a batch of (H, W) uint8 images (sizes may differ); one ``LungMask`` each."""
        if not images:
            return []
        inputs, probs, features = self._forward(images)
        return [
            replace(self._postprocess(prob, image.shape[:2], small), features=pooled)
            for small, prob, pooled, image in zip(inputs, probs, features, images, strict=True)
        ]

    def analyse(self, gray: np.ndarray) -> LungMask:
        """Segment one (H, W) uint8 image: mask at its own size, found flag and lung fraction."""
        return self.analyse_many([gray])[0]

    def segment(self, gray: np.ndarray) -> np.ndarray:
        """(H, W) uint8 → (H, W) bool lung mask (all False when no lung is found)."""
        return self.analyse(gray).mask

    def _postprocess(self, prob: np.ndarray, shape: tuple[int, int], small: np.ndarray) -> LungMask:
        height, width = shape
        contrast = lung_contrast(small, keep_lungs(prob > self.config.threshold)[0])
        # Components and hole filling on a grid of at most POSTPROCESS_SIDE px a side, then the
        # clean mask is scaled up: on a 2048² upload this took 413 ms at full size, 23 ms here.
        grid = fit_within((width, height), POSTPROCESS_SIDE)
        prob = cv2.resize(prob, grid, interpolation=cv2.INTER_LINEAR)
        mask, components = keep_lungs(prob > self.config.threshold)
        if grid != (width, height):
            grown = cv2.resize(
                mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
            )
            mask = grown > 0.5
        fraction = float(mask.mean())
        if fraction < self.config.min_lung_fraction or contrast < self.config.min_lung_contrast:
            return LungMask(np.zeros((height, width), dtype=bool), False, 0.0, 0, contrast)
        return LungMask(mask, True, fraction, components, contrast)


def lung_contrast(image: np.ndarray, mask: np.ndarray, ring: float = 0.067) -> float:
    """(mean of a ring around ``mask`` − mean inside it) / the image's std; 0 for an empty mask.

    Radiographs show lungs darker than the mediastinum, diaphragm and chest wall around them;
    a network asked to segment a flat or noise image still draws lung shapes, but there the
    score is about 0. ``ring`` is the ring's width as a fraction of the shorter side.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    side = max(3, round(ring * min(mask.shape)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    around = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
    if not around.any():
        return 0.0
    values = np.asarray(image, dtype=np.float32)
    return float((values[around].mean() - values[mask].mean()) / (values.std() + 1e-6))


def _check_gray(gray: np.ndarray) -> np.ndarray:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        shape = getattr(gray, "shape", None)
        dtype = getattr(gray, "dtype", type(gray).__name__)
        raise ValueError(
            f"expected an (H, W) uint8 grayscale array (imaging.load.load_image(...).pixels); "
            f"got shape {shape} dtype {dtype}"
        )
    return gray
