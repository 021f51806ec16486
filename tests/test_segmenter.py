"""The lung segmenter: Dice on real lungmask films, post-processing, heatmap share, bbox, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from batch.segment import CSV_NAME, main
from imaging.load import load_image
from model.checkpoint import WEIGHTS_FILE, CheckpointNotFound, file_sha256
from model.crop import lung_box
from model.lungs import heatmap_share_on_lungs
from model.segmenter import (
    DEFAULT_SEGMENTER,
    LungSegmenter,
    dice,
    keep_lungs,
    lung_contrast,
)
from tests.conftest import LUNG5

LUNGMASK = LUNG5.parent / "lungmask"  # lungmask sits beside lung5 (LUNGCAM_DATA moves both)
DICE_FLOOR = 0.85  # each of the five films
MEAN_DICE_FLOOR = 0.90


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter.load()


def lungmask_test_items(count: int = 5) -> list[tuple[Path, Path]]:
    if not LUNGMASK.is_dir():
        pytest.fail(f"lungmask data not found at {LUNGMASK}; set LUNGCAM_DATA to its lung5 sibling")
    images = sorted((LUNGMASK / "test" / "images").glob("*.jpg"))
    step = max(1, len(images) // count)  # spread over patients, not five films of one
    picked = images[::step][:count]
    return [(p, LUNGMASK / "test" / "masks" / f"{p.stem}.png") for p in picked]


# --- the trained network on real films -------------------------------------------------------


def test_bundled_config_carries_preprocessing_and_scores(segmenter: LungSegmenter) -> None:
    config = json.loads((DEFAULT_SEGMENTER / "config.json").read_text())
    assert config["trained"] is True
    assert config["encoder_name"] == segmenter.config.encoder_name
    assert config["metrics"]["test"]["mean_dice"] >= 0.9
    assert (DEFAULT_SEGMENTER / "model.safetensors").stat().st_size <= 10 * 2**20


def test_dice_on_real_lungmask_films(segmenter: LungSegmenter) -> None:
    scores = []
    for image_path, mask_path in lungmask_test_items():
        gray = load_image(image_path).pixels
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
        result = segmenter.analyse(gray)
        assert result.found and result.mask.shape == gray.shape and result.mask.dtype == bool
        assert 1 <= result.components <= 2
        scores.append(dice(result.mask, truth))
    assert min(scores) >= DICE_FLOOR, scores
    assert np.mean(scores) >= MEAN_DICE_FLOOR, scores


def test_written_out_forward_matches_the_network_and_keeps_encoder_features(
    segmenter: LungSegmenter,
) -> None:
    """``_forward`` spells out smp's forward to keep the encoder's stages: same probabilities
    as calling the network, and one pooled feature per encoder channel (guards an smp upgrade
    that changes the forward)."""
    grays = [load_image(path).pixels for path, _ in lungmask_test_items(2)]
    inputs, probabilities, features = segmenter._forward(grays)
    with torch.inference_mode():
        logits = segmenter.network(torch.from_numpy(inputs[:, None]))
    np.testing.assert_allclose(probabilities, torch.sigmoid(logits)[:, 0].numpy(), atol=1e-6)
    channels = sum(segmenter.network.encoder.out_channels[1:])
    assert features.shape == (2, channels) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])  # two films, two descriptions
    masks = segmenter.analyse_many(grays)
    np.testing.assert_allclose(masks[0].features, features[0], rtol=1e-5)


@pytest.mark.parametrize("shape", [(300, 200), (97, 131), (512, 512)])
def test_mask_has_the_inputs_own_size(segmenter: LungSegmenter, shape: tuple[int, int]) -> None:
    image_path, _ = lungmask_test_items(1)[0]
    gray = cv2.resize(load_image(image_path).pixels, shape[::-1], interpolation=cv2.INTER_AREA)
    assert segmenter.segment(gray).shape == shape


@pytest.mark.parametrize(
    "gray",
    [
        np.full((256, 256), 128, dtype=np.uint8),
        np.zeros((200, 300), dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8),
    ],
    ids=["flat-gray", "black", "noise"],
)
def test_no_lung_found_on_non_radiographs(segmenter: LungSegmenter, gray: np.ndarray) -> None:
    result = segmenter.analyse(gray)
    assert not result.found
    assert result.mask.shape == gray.shape and not result.mask.any()
    assert result.lung_fraction == 0.0 and result.components == 0
    assert lung_box(result.mask, 0.05) is None
    assert heatmap_share_on_lungs(np.ones((7, 7)), result.mask) is None


@pytest.mark.parametrize(
    "bad", [np.zeros((64, 64, 3), dtype=np.uint8), np.zeros((64, 64), dtype=np.float32)]
)
def test_segment_rejects_non_gray_uint8(segmenter: LungSegmenter, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 grayscale"):
        segmenter.segment(bad)


def test_load_refuses_missing_files_and_foreign_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lacks"):
        LungSegmenter.load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(DEFAULT_SEGMENTER, copy)
    config = json.loads((copy / "config.json").read_text())
    config["weights_sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not belong together"):
        LungSegmenter.load(copy)


def test_save_and_load_keep_weights_and_config_in_the_checkpoint_folder_format(
    tmp_path: Path,
) -> None:
    """The classifier's folder I/O (``model.checkpoint``): the same two files, the config
    recording the weights' sha256; a missing file is a ``CheckpointNotFound``."""
    original = LungSegmenter.load()
    folder = original.save(tmp_path / "copy")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS_FILE]
    loaded = LungSegmenter.load(folder)
    assert loaded.config == original.config
    assert loaded.weights_sha256 == file_sha256(folder / WEIGHTS_FILE)
    before, after = original.network.state_dict(), loaded.network.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointNotFound, match=f"lacks {WEIGHTS_FILE}; pass a segmenter"):
        LungSegmenter.load(folder)


# --- post-processing and the pure helpers ----------------------------------------------------


def test_keep_lungs_keeps_two_largest_and_fills_holes() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 5:40] = True  # right lung (largest)
    mask[40:50, 15:25] = False  # a hole in it (e.g. a pacemaker)
    mask[15:80, 60:90] = True  # left lung
    mask[92:97, 92:97] = True  # a speck: third component
    mask[2:5, 50:53] = True  # another speck
    cleaned, components = keep_lungs(mask)
    assert components == 2
    assert cleaned[45, 20]  # hole filled
    assert not cleaned[94, 94] and not cleaned[3, 51]  # specks gone
    assert not cleaned[50, 50]  # the gap between the lungs stays open
    assert cleaned.sum() == 80 * 35 + 65 * 30


def test_keep_lungs_on_empty_and_single_component() -> None:
    cleaned, components = keep_lungs(np.zeros((20, 20), dtype=bool))
    assert components == 0 and not cleaned.any()
    ring = np.zeros((20, 20), dtype=bool)
    ring[2:18, 2:18] = True
    ring[6:14, 6:14] = False
    cleaned, components = keep_lungs(ring)
    assert components == 1 and cleaned.sum() == 16 * 16


def test_lung_contrast_is_positive_for_dark_lungs_and_zero_for_flat() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:80, 10:45] = mask[20:80, 55:90] = True
    film = np.full((100, 100), 200, dtype=np.float32)
    film[mask] = 60
    assert lung_contrast(film, mask) > 1.0
    assert lung_contrast(255 - film, mask) < -1.0  # an inverted film
    assert lung_contrast(np.full((100, 100), 128.0), mask) == 0.0
    assert lung_contrast(film, np.zeros_like(mask)) == 0.0


def quadrant_heatmap(side: int) -> np.ndarray:
    """Quadrants valued 0, 1, 2, 3 (→ 0, 1/3, 2/3, 1 after min-max): total energy 2 × quadrant."""
    half = side // 2
    heat = np.zeros((side, side), dtype=np.float32)
    heat[:half, half:], heat[half:, :half], heat[half:, half:] = 1, 2, 3
    return heat


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [
        (slice(10, 20), slice(10, 20), 0.5),  # bottom-right: energy 1 of 2
        (slice(0, 10), slice(10, 20), 1 / 6),  # top-right: 1/3 of 2
        (slice(0, 10), slice(0, 10), 0.0),  # top-left: value 0
        (slice(0, 20), slice(0, 20), 1.0),  # whole image
    ],
)
def test_heatmap_share_known_answers(rows: slice, cols: slice, expected: float) -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[rows, cols] = True
    assert heatmap_share_on_lungs(quadrant_heatmap(20) * 7 - 4, mask) == pytest.approx(expected)


def test_heatmap_share_resizes_the_heatmap_to_the_mask() -> None:
    mask = np.zeros((200, 200), dtype=bool)
    mask[100:, 100:] = True
    share = heatmap_share_on_lungs(quadrant_heatmap(20), mask)
    assert share == pytest.approx(0.5, abs=0.02)


def test_heatmap_share_constant_heatmap_and_empty_mask() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    assert heatmap_share_on_lungs(np.ones((10, 10)), mask) is None
    mask[:, :3] = True
    assert heatmap_share_on_lungs(np.full((5, 5), 0.7), mask) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2-D"):
        heatmap_share_on_lungs(np.ones((5, 5, 3)), mask)


def test_cli_writes_masks_and_lists_bad_files(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    items = lungmask_test_items(3)
    for image_path, _ in items[:2]:
        shutil.copy(image_path, inputs / "sub" / image_path.name)
    Image.open(items[2][0]).save(inputs / "scan.png")
    data = items[2][0].read_bytes()
    (inputs / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (inputs / "notes.png").write_text("this is not an image\n")
    out = tmp_path / "out"

    status = main(
        [
            str(inputs / "sub"),
            str(inputs / "*.png"),
            str(inputs / "truncated.jpg"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )

    assert status == 1  # some inputs failed, the others were segmented
    with (out / CSV_NAME).open() as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert set(rows) == {
        items[0][0].name,
        items[1][0].name,
        "scan.png",
        "notes.png",
        "truncated.jpg",
    }
    assert rows["notes.png"]["status"] == "error"
    assert "not a readable image" in rows["notes.png"]["error"]
    assert rows["truncated.jpg"]["status"] == "error"
    assert "truncated" in rows["truncated.jpg"]["error"]
    for image_path, _ in items[:2]:
        row = rows[image_path.name]
        assert row["status"] == "ok" and row["lung_found"] == "1"
        written = np.asarray(Image.open(out / f"{image_path.stem}.png"))
        assert written.shape == load_image(image_path).pixels.shape
        assert set(np.unique(written)) == {0, 255}
    assert (out / "scan.png").is_file()


def test_cli_refuses_inputs_that_match_nothing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing-*.png"), "--out", str(tmp_path / "out"), "--no-progress"])
