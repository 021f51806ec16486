"""Any upload → an 8-bit grayscale array, or an ``ImageInputError`` that says what is wrong.

This is the only decoder: serving, training, evaluation and batch prediction all call
``load_image`` so that a pixel means the same thing everywhere.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imaging.image import (
    DICOM_MAGIC,
    DICOM_SUFFIXES,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    ImageInputError,
    LoadedImage,
    rescale_to_uint8,
    saturation,
)

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SATURATION_SIDE = 128  # saturation is measured on a thumbnail of at most this side


def load_image(source: str | Path | bytes, name: str | None = None) -> LoadedImage:
    """Decode a PNG/JPEG/TIFF/BMP/WebP/GIF or DICOM file (path or bytes) to 8-bit grayscale.

    The content decides the decoder, not the name: a DICOM preamble means DICOM, then
    anything PIL recognises; a ``.dcm`` name only matters for DICOM files without a preamble.
    ``name`` is what error messages call the file (default: the path's file name, "upload"
    for bytes); the app passes one that never identifies the patient.
    """
    if name is None:
        name = Path(source).name if isinstance(source, (str, Path)) else "upload"
    data = _read_bytes(source, name)
    if not data:
        raise ImageInputError(f"{name}: the file is empty (0 bytes)")
    if data[128:132] == DICOM_MAGIC:
        loaded = _read_dicom(data, name)
    else:
        try:
            loaded = _read_pil(data, name)
        except _NotAnImage:
            if not name.lower().endswith(DICOM_SUFFIXES):
                raise ImageInputError(
                    f"{name}: not a readable image; upload a PNG, JPEG, TIFF, BMP, WebP, GIF "
                    "or DICOM file"
                ) from None
            loaded = _read_dicom(data, name)
    _check_size(loaded.pixels, name)
    return loaded


def decoded_batches(
    paths: Sequence[Path], batch_size: int, failed: list[tuple[Path, str]]
) -> Iterator[list[tuple[Path, LoadedImage]]]:
    """Decode ``paths`` lazily into batches of (path, image) for ``Predictor.predict_many``.

    A file that cannot be read is appended to ``failed`` as (path, reason) and skipped, so one
    bad file never stops a batch run (the batch CLI, evaluation).
    """
    batch: list[tuple[Path, LoadedImage]] = []
    for path in paths:
        image = load_or_reason(path)
        if isinstance(image, str):
            failed.append((path, image))
        else:
            batch.append((path, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_or_reason(path: Path) -> LoadedImage | str:
    """``load_image(path)``, or the reason it cannot be read: what a batch run reports for a bad
    file instead of stopping (``decoded_batches``, the Ray engine of ``batch.predict``)."""
    try:
        return load_image(path)
    except (ImageInputError, OSError) as err:
        return str(err)


def to_grayscale_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode → (H, W) uint8. High bit depths are rescaled over their range, not clipped;
    transparent areas become black (the background of a radiograph)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return rescale_to_uint8(np.asarray(image))
    if mode == "LAB":  # PIL cannot convert LAB; its L channel is the lightness
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    elif mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _read_bytes(source: str | Path | bytes, name: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{name}: no such file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageInputError(
                f"{name}: the file is {path.stat().st_size / 2**20:.0f} MB; the limit is "
                f"{MAX_FILE_BYTES // 2**20} MB"
            )
        data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise ImageInputError(f"{name}: the file is larger than {MAX_FILE_BYTES // 2**20} MB")
    return data


class _NotAnImage(Exception):
    """PIL does not recognise the bytes as any image format."""


def _read_dicom(data: bytes, name: str) -> LoadedImage:
    from imaging.dicom import read_dicom  # pydicom is imported only when a DICOM arrives

    return read_dicom(data, name)


def _colour_saturation(image: Image.Image) -> float:
    if image.mode in GRAY_MODES or image.mode == "LAB":
        return 0.0
    thumb = image.copy()
    thumb.thumbnail((SATURATION_SIDE, SATURATION_SIDE))
    return saturation(np.asarray(thumb.convert("RGB")))


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
            colour = _colour_saturation(image)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(
            f"{name}: this image declares more pixels than LungCAM opens (over "
            f"{MAX_PIXELS / 1e6:.0f} megapixels); a chest X-ray is far smaller, so it is refused "
            "as a possible decompression bomb. Resize or re-export it and upload again."
        ) from err
    except UnidentifiedImageError as err:
        raise _NotAnImage(name) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageInputError(f"{name}: the image is truncated or corrupt ({err})") from err
    notes = [f"{fmt} has {frames} frames; the first one is analysed"] if frames > 1 else []
    metadata = {"format": fmt, "mode": original_mode}
    return LoadedImage(pixels, fmt, original_mode, notes, metadata, saturation=colour)


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
