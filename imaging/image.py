"""The leaf types every reader shares: a decoded upload, the error for a bad one, the limits.

Imports nothing from LungCAM, so the PIL path (``imaging.load``), the DICOM reader
(``imaging.dicom``) and everything above can all use it without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SIDE = 64
MAX_PIXELS = 50_000_000  # decompression-bomb guard (50 MP)
MAX_FILE_BYTES = 100 * 1024 * 1024
DICOM_MAGIC = b"DICM"
DICOM_SUFFIXES = (".dcm", ".dicom")
# Every suffix the readers take (PIL's formats we document, then DICOM): what the batch CLI
# collects from a folder. The content, not the name, picks the decoder (``load_image``).
SUPPORTED_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", *DICOM_SUFFIXES}
)


class ImageInputError(ValueError):
    """The upload cannot be turned into an image we can analyse; the message says why."""


@dataclass
class LoadedImage:
    """A decoded upload: 8-bit grayscale pixels plus non-identifying facts about the file."""

    pixels: np.ndarray  # (H, W) uint8
    source_format: str
    original_mode: str
    notes: list[str] = field(default_factory=list)  # warnings worth showing to the user
    metadata: dict[str, str] = field(default_factory=dict)  # never patient identifiers
    saturation: float = 0.0  # mean colour saturation of the upload before the gray conversion

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) like PIL."""
        return self.pixels.shape[1], self.pixels.shape[0]


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most ``max_side`` a side (never up;
    None: unchanged): the grids that masks, heatmaps and displayed images are worked on."""
    width, height = size
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map the array's own min..max to 0..255 (a constant image becomes 0).

    Non-finite values (NaN, ±inf in float TIFFs) are ignored for the range and drawn black.
    """
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(np.min(values[finite])), float(np.max(values[finite]))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(finite, values, low)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def saturation(rgb: np.ndarray) -> float:
    """Mean chroma (max − min channel, as a fraction of 255) of an (H, W, 3) uint8 array.

    A radiograph stored as RGB scores about 0; colour photos score 0.1 or more. The
    not-a-chest-X-ray guard (``model.ood``) uses it, since the pixels themselves are gray.
    """
    channels = rgb.astype(np.int16)
    return float(np.mean(channels.max(axis=-1) - channels.min(axis=-1)) / 255.0)
