"""Any upload → an 8-bit grayscale array, or an ``ImageInputError`` that says what is wrong.

This is the only decoder: serving, training, evaluation and batch prediction all call
``load_image`` so that a pixel means the same thing everywhere.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64
MAX_PIXELS = 50_000_000  # decompression-bomb guard (50 MP)
MAX_FILE_BYTES = 100 * 1024 * 1024
DICOM_MAGIC = b"DICM"


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

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) like PIL."""
        return self.pixels.shape[1], self.pixels.shape[0]


def load_image(source: str | Path | bytes) -> LoadedImage:
    """Decode a PNG/JPEG/TIFF/BMP/WebP/GIF or DICOM file (path or bytes) to 8-bit grayscale."""
    data = _read_bytes(source)
    name = Path(source).name if isinstance(source, (str, Path)) else "upload"
    if not data:
        raise ImageInputError(f"{name}: the file is empty (0 bytes)")
    if _looks_like_dicom(data, name):
        from model.dicom import read_dicom

        loaded = read_dicom(data, name)
    else:
        loaded = _read_pil(data, name)
    _check_size(loaded.pixels, name)
    return loaded


def to_grayscale_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode → (H, W) uint8. High bit depths are rescaled over their range, not clipped;
    transparent areas become black (the background of a radiograph)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return rescale_to_uint8(np.asarray(image))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    elif mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map the array's own min..max to 0..255 (a constant image becomes 0)."""
    values = values.astype(np.float64)
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{path.name}: no such file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageInputError(
                f"{path.name}: the file is {path.stat().st_size / 2**20:.0f} MB; the limit is "
                f"{MAX_FILE_BYTES // 2**20} MB"
            )
        data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise ImageInputError(f"upload is larger than {MAX_FILE_BYTES // 2**20} MB")
    return data


def _looks_like_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == DICOM_MAGIC or name.lower().endswith((".dcm", ".dicom"))


def _read_pil(data: bytes, name: str) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageInputError(
                    f"{name}: {width}×{height} is {width * height / 1e6:.0f} MP; images over "
                    f"{MAX_PIXELS / 1e6:.0f} MP are refused"
                )
            fmt = image.format or "unknown"
            frames = getattr(image, "n_frames", 1)
            image.seek(0)
            image.load()
            original_mode = image.mode
            image = ImageOps.exif_transpose(image)
            pixels = to_grayscale_uint8(image)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(f"{name}: refused as a decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageInputError(
            f"{name}: not a readable image; upload a PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM file"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageInputError(f"{name}: the image is truncated or corrupt ({err})") from err
    notes = [f"{fmt} has {frames} frames; the first one is analysed"] if frames > 1 else []
    return LoadedImage(pixels, fmt, original_mode, notes, {"format": fmt, "mode": original_mode})


def _check_size(pixels: np.ndarray, name: str) -> None:
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageInputError(
            f"{name}: {width}×{height} is too small; each side must be at least {MIN_SIDE} px"
        )
    if height * width > MAX_PIXELS:
        raise ImageInputError(
            f"{name}: {width}×{height} exceeds the {MAX_PIXELS / 1e6:.0f} MP limit"
        )
