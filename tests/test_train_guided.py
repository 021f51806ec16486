"""The crop cache and the localisation-guided trainer, on a few real lung5 films."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lung5_images, make_checkpoint

from imaging.load import load_image
from model.checkpoint import load_checkpoint
from model.predictor import Predictor
from training import crop_cache, train_guided
from training.feature_sources import CachedFilms
from training.localization_loss import outside_energy_loss, outside_mass_loss, set_cross_entropy

MANIFEST_COLUMNS = ["file", "split", "label", "source"]


@pytest.fixture(scope="module")
def lesion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a manifest (two real films per class and split, one 'Pneumonia' of
    unknown cause) and a lesions folder with one box on each TB film."""
    root = tmp_path_factory.mktemp("guided")
    rows, boxes = [], []
    for split in ("train", "val"):
        films = lung5_images(split, per_class=2)
        labels = ["Bacterial Pneumonia"] * 2 + ["Corona Virus Disease"] * 2 + ["Normal"] * 2
        labels += ["Tuberculosis"] * 2 + ["Viral Pneumonia"] * 2
        for index, (path, label) in enumerate(zip(films, labels, strict=True)):
            label = "Pneumonia" if index == 0 else label
            target = root / "data" / split / label / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
            rows.append([f"{split}/{label}/{path.name}", split, label, f"source-{index % 2}"])
            if label == "Tuberculosis":
                (root / "lesions" / "images").mkdir(parents=True, exist_ok=True)
                shutil.copy(path, root / "lesions" / "images" / path.name)
                boxes.append(
                    [f"images/{path.name}", split, label, "TB", 60, 40, 200, 180, "p", "s", "l"]
                )
    with open(root / "data" / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([MANIFEST_COLUMNS, *rows])
    with open(root / "lesions" / "boxes.csv", "w", newline="") as fh:
        header = ["image", "split", "label", "finding", "x0", "y0", "x1", "y1"]
        header += ["patient_id", "source", "license"]
        csv.writer(fh).writerows([header, *boxes])
    return root


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model"), image_size=64)


@pytest.fixture(scope="module")
def cache(lesion_folder: Path, small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = small_model
    out = tmp_path_factory.mktemp("cache") / "cache.npz"
    code = crop_cache.main(
        ["--data", str(lesion_folder / "data"), "--lesions", str(lesion_folder / "lesions"),
         "--model", str(model), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_cache_holds_the_serving_input_and_the_lesions_in_its_frame(
    cache, small_model, lesion_folder
):
    arrays = dict(np.load(cache))
    films = CachedFilms(cache, torch.device("cpu")).films[:, 0].numpy()
    assert films.shape == (20, 64, 64)
    # the "Pneumonia" films admit both pneumonia classes, every other film one class
    pneumonia = arrays["allowed"][:, [0, 4]].all(axis=1)
    assert pneumonia.sum() == 2 and (arrays["allowed"].sum(1)[~pneumonia] == 1).all()
    # every TB film has its lesion, no other film has one
    tb = arrays["allowed"][:, 3]
    assert (arrays["has_lesion"] == tb).all()
    # the draw weights are the train split's class × source balance
    train = arrays["split"] == "train"
    assert arrays["draw_weight"][train].sum() == pytest.approx(1.0)
    assert (arrays["draw_weight"][~train] == 0).all()
    # pixels equal the serving path's (its lung crop, resize and transform), up to WebP at
    # quality 82, which moves a pixel of these 64-px crops by about 2 grey levels on average
    predictor = Predictor.load(str(small_model), "cpu")
    image = load_image(next((lesion_folder / "data").rglob(str(arrays["film"][0]))))
    _, boxes = predictor.frame([image])
    expected = crop_cache.network_pixels(predictor, image.pixels, boxes[0])
    difference = np.abs(films[0].astype(int) - expected).mean()
    assert difference < 3.0, difference
    assert json.loads(str(arrays["preprocessing"]))["input_size"] == [3, 64, 64]


def test_outside_mass_is_small_for_a_map_peaked_in_the_region():
    maps = torch.zeros(2, 14, 14)
    maps[:, 3, 4] = 20.0
    region = torch.zeros(2, 14, 14)
    region[0, 2:5, 3:6] = 1.0  # around the peak
    region[1, 10:, 10:] = 1.0  # in a corner
    loss = outside_mass_loss(maps, region)
    assert loss[0] < 0.01 and loss[1] > 5.0


def test_outside_mass_of_a_flat_map_is_minus_log_the_regions_share():
    region = torch.zeros(1, 56, 56)
    region[0, :28] = 1.0
    loss = outside_mass_loss(torch.zeros(1, 14, 14), region)
    assert float(loss) == pytest.approx(np.log(2), abs=1e-4)


def test_outside_energy_is_zero_inside_and_cannot_be_met_by_silencing_the_map():
    region = torch.zeros(3, 14, 14)
    region[:, 2:5, 3:6] = 1.0
    maps = torch.zeros(3, 14, 14)
    maps[0, 2:5, 3:6] = 4.0  # all of its energy in the region
    maps[1] = 1.0  # flat: the region's share is unknown, so nothing inside
    maps[2] = 2.0
    maps[2, 2:5, 3:6] = 3.0  # the same shape as map 0 on a raised floor: normalised alike
    loss = outside_energy_loss(maps, region)
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(loss[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(loss[2]) == pytest.approx(float(loss[0]), abs=1e-5)
    assert float(outside_energy_loss(maps[:1] * 1e-3, region[:1])) < 1e-3  # scale-free


def test_set_cross_entropy_is_cross_entropy_for_one_class_and_admits_either_of_two():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 1.0]])
    one = torch.zeros(1, 5, dtype=torch.bool)
    one[0, 2] = True
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    assert float(set_cross_entropy(logits, one)) == pytest.approx(float(expected))
    both = torch.zeros(1, 5, dtype=torch.bool)
    both[0, [0, 4]] = True
    p = torch.softmax(logits, 1)[0]
    assert float(set_cross_entropy(logits, both)) == pytest.approx(float(-torch.log(p[0] + p[4])))


def test_guided_training_saves_a_checkpoint_the_predictor_loads(cache, tmp_path):
    out = tmp_path / "run"
    args = ["--cache", str(cache), "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--samples-per-epoch", "8", "--device", "cpu"]  # fmt: skip
    train_guided.main(args)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_lesion"] > 0 and record["train_lung"] >= 0
    assert 0 <= record["val_lesion_pointing"] <= 1 and 0 <= record["val_prior_pointing"] <= 1
    model, config = load_checkpoint(out / "best")
    assert config.output_stride == 16 and config.target_layer == "features.norm5"
    assert config.input_size == (3, 64, 64) and config.clahe is False
    predictor = Predictor(model, config, torch.device("cpu"))
    assert predictor.model.features.transition3.pool.__class__.__name__ == "Identity"
    # resuming continues the epoch count
    train_guided.main([*args[:5], "2", *args[6:], "--resume"])
    epochs = [
        json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2]


def test_a_frozen_prefix_trains_only_the_end_and_is_computed_once(cache, small_model, tmp_path):
    """The CPU recipe: from a checkpoint, dense layers N… of the last block, norm5 and the head
    are trained on the frozen layers' cached output; a second run reads that cache back."""
    saved = tmp_path / "prefix.pt"
    args = ["--cache", str(cache), "--device", "cpu", "--init-from", str(small_model),
            "--output-stride", "32", "--train-from", "31", "--prefix-cache", str(saved),
            "--epochs", "1", "--batch-size", "4", "--samples-per-epoch", "8"]  # fmt: skip
    train_guided.main([*args, "--out", str(tmp_path / "one")])
    first = torch.load(saved, weights_only=True)
    assert first["prefix"].shape[0] == len(first["films"]) == 20
    stamp = saved.stat().st_mtime_ns
    train_guided.main([*args, "--out", str(tmp_path / "two")])
    assert saved.stat().st_mtime_ns == stamp  # nothing left to compute: not rewritten
    before, _ = load_checkpoint(small_model)
    after, config = load_checkpoint(tmp_path / "two" / "best")
    assert config.target_layer == "features.norm5" and config.output_stride == 32
    frozen = "features.denseblock4.denselayer30.conv2.weight"
    trained = "features.denseblock4.denselayer31.conv2.weight"
    state_before, state_after = before.state_dict(), after.state_dict()
    torch.testing.assert_close(state_after[frozen], state_before[frozen].half().float())
    assert not torch.allclose(state_after[trained], state_before[trained].half().float())
