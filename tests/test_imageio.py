"""Ordinary image files: every common mode and format decodes right; bad ones get a clear error."""

from __future__ import annotations

import re
import tempfile

import numpy as np
import pytest
from PIL import Image

from imaging import load as imageio
from imaging.image import ImageInputError, rescale_to_uint8
from imaging.load import load_image
from tests.bad_inputs import BAD_INPUTS, encode, ramp, write_bad_inputs

RAMP = ramp(96, 80)  # 0 → 255 left to right


def colour_ramp() -> np.ndarray:
    """An RGB image whose gray value is ``RAMP`` (equal channels)."""
    return np.repeat(RAMP[..., None], 3, axis=2)


@pytest.mark.parametrize(
    ("fmt", "image", "options"),
    [
        ("PNG", Image.fromarray(RAMP), {}),
        ("PNG", Image.fromarray(colour_ramp()), {}),
        ("PNG", Image.fromarray(RAMP).convert("P"), {}),
        ("PNG", Image.fromarray(RAMP).convert("LA"), {}),
        ("PNG", Image.fromarray(colour_ramp()).convert("RGBA"), {}),
        ("JPEG", Image.fromarray(RAMP), {"quality": 100}),
        ("JPEG", Image.fromarray(colour_ramp()), {"quality": 100}),
        ("TIFF", Image.fromarray(RAMP), {}),
        ("TIFF", Image.fromarray(colour_ramp()), {"compression": "tiff_lzw"}),
        ("BMP", Image.fromarray(colour_ramp()), {}),
        ("WEBP", Image.fromarray(colour_ramp()), {"lossless": True}),
        ("GIF", Image.fromarray(RAMP), {}),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "mode", ""),
)
def test_formats_and_modes_decode_to_the_same_gray(fmt, image, options):
    loaded = load_image(encode(image, fmt, **options))
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == RAMP.shape
    assert loaded.source_format == fmt
    assert np.abs(loaded.pixels.astype(int) - RAMP).max() <= 3
    assert loaded.saturation < 0.02


def test_16bit_png_is_rescaled_not_clipped():
    deep = (RAMP.astype(np.uint16) * 200 + 1000).astype(np.uint16)
    loaded = load_image(encode(Image.fromarray(deep), "PNG"))
    assert loaded.original_mode.startswith("I")
    np.testing.assert_array_equal(loaded.pixels, RAMP)


def test_float_tiff_with_nan_is_finite():
    values = RAMP.astype(np.float32)
    values[0, 0] = np.nan
    values[0, 1] = np.inf
    loaded = load_image(encode(Image.fromarray(values), "TIFF"))
    assert loaded.pixels[0, 0] == 0 and loaded.pixels[0, 1] == 0
    assert loaded.pixels[0, -1] == 255


def test_transparent_area_becomes_black():
    rgba = np.zeros((96, 80, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, 40:, 3] = 255  # right half opaque white, left half fully transparent
    loaded = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert loaded.pixels[:, :40].max() == 0 and loaded.pixels[:, 40:].min() == 255


def test_cmyk_jpeg():
    white_left = Image.fromarray(colour_ramp()[:, ::-1].copy()).convert("CMYK")
    loaded = load_image(encode(white_left, "JPEG", quality=100))
    assert loaded.original_mode == "CMYK"
    assert loaded.pixels[:, 0].mean() > 240 and loaded.pixels[:, -1].mean() < 15


def test_exif_rotated_jpeg_is_turned_upright():
    marked = np.zeros((80, 120), np.uint8)
    marked[:10, :10] = 255  # a bright corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    loaded = load_image(encode(Image.fromarray(marked), "JPEG", quality=100, exif=exif))
    assert loaded.pixels.shape == (120, 80)
    assert loaded.pixels[:10, -10:].mean() > 200  # the corner is now top right
    assert loaded.pixels[:10, :10].mean() < 50


def test_animated_gif_uses_first_frame_and_says_so():
    frames = [Image.fromarray(RAMP), Image.fromarray(255 - RAMP)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(data)
    assert np.abs(loaded.pixels.astype(int) - RAMP).max() <= 3
    assert loaded.notes == ["GIF has 2 frames; the first one is analysed"]


def test_lab_tiff_uses_lightness():
    lab = Image.merge("LAB", [Image.fromarray(RAMP), *(Image.new("L", (80, 96), 128),) * 2])
    loaded = load_image(encode(lab, "TIFF"))
    np.testing.assert_array_equal(loaded.pixels, RAMP)


@pytest.mark.parametrize("name", ["scan.jpg", "scan.dcm", "scan.tif", "scan"])
def test_content_decides_not_the_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(encode(Image.fromarray(RAMP), "PNG"))
    loaded = load_image(path)
    assert loaded.source_format == "PNG"
    np.testing.assert_array_equal(loaded.pixels, RAMP)


@pytest.mark.parametrize(
    ("rgb", "low", "high"),
    [
        ((128, 128, 128), 0.0, 0.001),
        ((200, 40, 40), 0.6, 0.65),
        ((30, 160, 220), 0.7, 0.76),
    ],
)
def test_saturation_is_recorded_at_decode_time(rgb, low, high):
    image = Image.new("RGB", (100, 100), rgb)
    loaded = load_image(encode(image, "PNG"))
    assert low <= loaded.saturation <= high


def test_rescale_to_uint8_constant_and_range():
    assert rescale_to_uint8(np.full((3, 3), 7.0)).max() == 0
    np.testing.assert_array_equal(rescale_to_uint8(np.array([[-5.0, 0.0, 5.0]])), [[0, 128, 255]])


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_bad_inputs_are_refused_with_a_message_naming_the_problem(tmp_path, case):
    path = tmp_path / case.name
    path.write_bytes(case.build())
    with pytest.raises(ImageInputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert re.search(case.message, message), message
    assert message.startswith(case.name)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "large.png"
    path.write_bytes(bytes(5000))
    with pytest.raises(ImageInputError, match="limit is"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "gone.png")


def test_refusals_leave_no_temporary_files(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for path, _ in write_bad_inputs(tmp_path / "corpus"):
        with pytest.raises(ImageInputError):
            load_image(path)
    load_image(encode(Image.fromarray(RAMP), "PNG"))
    assert list(scratch.iterdir()) == []
