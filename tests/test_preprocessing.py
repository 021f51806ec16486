"""Any image mode → correct 8-bit grayscale → the checkpoint's tensor, one path for all."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imaging.image import rescale_to_uint8
from imaging.load import load_image, to_grayscale_uint8
from model.config import ModelConfig
from model.transforms import build_transform, to_tensor

GRADIENT = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))  # 96×128, left dark


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode",
    ["L", "RGB", "RGBA", "P", "CMYK", "LA", "I", "F"],
)
def test_every_mode_becomes_the_same_grayscale(mode):
    source = Image.fromarray(GRADIENT).convert(mode)
    gray = to_grayscale_uint8(source)
    assert gray.dtype == np.uint8 and gray.shape == GRADIENT.shape
    assert np.abs(gray.astype(int) - GRADIENT).max() <= 2


def test_16bit_png_is_rescaled_not_clipped():
    values = np.tile(np.linspace(1000, 5000, 128), (96, 1)).astype(np.uint16)
    loaded = load_image(_encode(Image.fromarray(values)))
    assert loaded.original_mode.startswith("I")
    assert loaded.pixels.min() == 0 and loaded.pixels.max() == 255
    assert np.all(np.diff(loaded.pixels[0].astype(int)) >= 0)  # order kept, nothing saturated
    assert len(np.unique(loaded.pixels)) > 100


def test_transparent_areas_become_black():
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 64:, 3] = 255  # right half opaque
    gray = load_image(_encode(Image.fromarray(rgba, "RGBA"))).pixels
    assert gray[:, :64].max() == 0 and gray[:, 64:].min() == 200


def test_exif_orientation_is_applied():
    image = Image.fromarray(GRADIENT)  # 128 wide, 96 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = load_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (96, 128)


def test_constant_image_rescales_to_zero():
    assert rescale_to_uint8(np.full((4, 4), 7.0)).max() == 0


def test_tensor_has_model_size_and_normalisation():
    config = ModelConfig(input_size=(3, 64, 80))
    tensor = to_tensor(np.full((300, 200), 255, np.uint8), build_transform(config))
    assert tensor.shape == (3, 64, 80) and tensor.dtype == torch.float32
    expected = (1.0 - torch.tensor(config.mean)) / torch.tensor(config.std)
    torch.testing.assert_close(tensor[:, 10, 10], expected.float())


def test_train_transform_differs_but_shares_the_tail():
    config = ModelConfig(input_size=(3, 64, 64))
    train, serve = build_transform(config, train=True), build_transform(config)
    serve_names = [type(t).__name__ for t in serve.transforms]
    train_names = [type(t).__name__ for t in train.transforms]
    assert train_names[0] == serve_names[0] == "Resize"
    assert train_names[-3:] == serve_names[-3:] == ["ToRGB", "Normalize", "ToTensorV2"]
    assert "HorizontalFlip" not in train_names


def test_rejects_color_arrays():
    with pytest.raises(ValueError, match=r"expected a \(H, W\) uint8"):
        to_tensor(np.zeros((8, 8, 3), np.uint8), build_transform(ModelConfig()))
