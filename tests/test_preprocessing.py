"""Any image mode → correct 8-bit grayscale → the checkpoint's tensor, one path for all."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imaging.image import rescale_to_uint8
from imaging.load import load_image, to_grayscale_uint8
from model.config import ModelConfig
from model.crop import CropBox, lung_box
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


def test_clahe_runs_in_training_and_serving_alike():
    config = ModelConfig(input_size=(3, 64, 64), clahe=True)
    for transform in (build_transform(config, train=True), build_transform(config)):
        names = [type(t).__name__ for t in transform.transforms]
        assert names[-4:] == ["CLAHE", "ToRGB", "Normalize", "ToTensorV2"]
    flat_contrast = np.tile(np.linspace(100, 140, 64).astype(np.uint8), (64, 1))
    tensor = to_tensor(flat_contrast, build_transform(config))
    # CLAHE stretches a 40-level ramp: the tensor spans clearly more than its 40/255.
    span = float(tensor[0].max() - tensor[0].min()) * config.std[0]
    assert span > 50 / 255


def test_config_round_trips_crop_and_clahe(tmp_path):
    config = ModelConfig(clahe=True, lung_crop_margin=0.1)
    config.save(tmp_path / "config.json")
    loaded = ModelConfig.load(tmp_path / "config.json")
    assert loaded.clahe is True and loaded.lung_crop_margin == 0.1
    with pytest.raises(ValueError, match="lung_crop_margin"):
        ModelConfig(lung_crop_margin=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_augmentations_keep_shape_and_type(seed):
    np.random.seed(seed)
    transform = build_transform(ModelConfig(input_size=(3, 96, 96), clahe=True), train=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (150, 130), dtype=np.uint8)
    assert to_tensor(pixels, transform).shape == (3, 96, 96)


def test_lung_box_grows_by_the_margin_and_clips():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True  # 100 wide, 40 high
    assert lung_box(mask, 0.1) == CropBox(40, 16, 160, 64)
    assert lung_box(mask, 1.0) == CropBox(0, 0, 200, 100)
    assert lung_box(np.zeros((10, 10), bool), 0.1) is None


def test_crop_box_applies_and_pastes_back():
    pixels = np.arange(100 * 120, dtype=np.int64).reshape(100, 120) % 251
    box = CropBox(10, 20, 70, 60)
    assert box.apply(pixels.astype(np.uint8)).shape == (40, 60)
    pasted = box.paste(np.ones((7, 7), np.float32), (120, 100))
    assert pasted.shape == (100, 120)
    assert pasted[20:60, 10:70].min() == 1.0 and pasted.sum() == 40 * 60
    assert CropBox.whole(pixels).covers(pixels) and not box.covers(pixels)


def test_jittered_box_stays_inside_the_image():
    rng = np.random.default_rng(0)
    box = CropBox(5, 5, 95, 75)
    for _ in range(200):
        moved = box.jittered((80, 100), rng, 0.2)
        assert 0 <= moved.x0 < moved.x1 <= 100 and 0 <= moved.y0 < moved.y1 <= 80
