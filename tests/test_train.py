"""The two-stage recipe, the data layer and the saved checkpoint, on a few real images."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imaging.load import load_image
from model.config import CLASS_FOLDERS, ModelConfig
from model.network import create_network
from model.predictor import Predictor
from model.transforms import build_transform
from tests.conftest import lung5_images
from training import recipe
from training import train as trainer
from training.data import (
    PNEUMONIA_CLASSES,
    XrayDataset,
    class_index_of,
    load_splits,
    scan_class_folders,
)


def _args(data, out, *extra):
    return trainer.parse_args(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--head-epochs",
            "1",
            "--epochs",
            "1",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("NORMAL", 2),
        ("Corona Virus Disease", 1),
        ("covid-19", 1),
        ("viral_pneumonia", 4),
        ("Bacterial Pneumonia", 0),
        ("TB", 3),
        ("cats", None),
    ],
)
def test_class_folder_spellings(name, index):
    assert class_index_of(name) == index


def test_missing_and_empty_classes_are_named(tmp_path):
    for folder in CLASS_FOLDERS[:4]:
        (tmp_path / folder).mkdir()
    with pytest.raises(ValueError, match="lacks class folders: Viral Pneumonia"):
        scan_class_folders(tmp_path)
    (tmp_path / "Viral Pneumonia").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        scan_class_folders(tmp_path)


def test_unreadable_images_are_skipped_and_counted(tiny_data):
    records = scan_class_folders(tiny_data / "train")
    dataset = XrayDataset(records, build_transform(ModelConfig(input_size=(3, 64, 64))))
    assert len(dataset) == len(records) - 1 == 15
    assert dataset.skipped and dataset.skipped[0].endswith("broken.png")


def test_single_folder_gets_a_patient_grouped_split(tiny_data):
    splits = load_splits(tiny_data / "train", seed=3)
    patients = [{r.patient_id for r in splits[name]} for name in ("train", "val", "test")]
    assert sum(len(splits[name]) for name in splits) == 16
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])


def _one_step(model, stage, args, data_root):
    records = scan_class_folders(data_root / "train")[:4]
    loader = DataLoader(
        XrayDataset(records, build_transform(ModelConfig(input_size=(3, 64, 64)))), batch_size=4
    )
    params = recipe.set_stage(model, stage, args.freeze_blocks)
    optimizer, scheduler = recipe.make_optimizer(params, stage, args, steps=1)
    recipe.train_one_epoch(
        model,
        loader,
        stage,
        optimizer,
        scheduler,
        recipe.SetCrossEntropy(),
        torch.device("cpu"),
        amp=False,
    )
    return optimizer


def test_stage1_adam_moves_only_the_head(tiny_data, tmp_path):
    model = create_network(ModelConfig(input_size=(3, 64, 64)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _one_step(model, "head", _args(tiny_data, tmp_path), tiny_data)
    assert type(optimizer) is torch.optim.Adam
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}  # BN statistics untouched too


def test_stage2_adamw_with_weight_decay_moves_the_backbone(tiny_data, tmp_path):
    model = create_network(ModelConfig(input_size=(3, 64, 64)))
    before = model.features.conv0.weight.detach().clone()
    optimizer = _one_step(
        model, "full", _args(tiny_data, tmp_path, "--weight-decay", "0.02"), tiny_data
    )
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["weight_decay"] == 0.02
    assert optimizer.param_groups[0]["initial_lr"] == 1e-4
    assert not torch.equal(before, model.features.conv0.weight)


@pytest.mark.slow
def test_training_run_saves_a_calibrated_checkpoint_the_app_loads(tiny_data, tmp_path):
    best = trainer.train(_args(tiny_data, tmp_path / "run", "--version", "smoke"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [line["stage"] for line in lines] == ["head", "full"]
    config = json.loads((best / "config.json").read_text())
    assert config["lungcam"]["trained"] and config["lungcam"]["version"] == "smoke"
    assert config["lungcam"]["temperature"] > 0
    predictor = Predictor.load(str(best), "cpu")
    prediction = predictor.predict(load_image(lung5_images()[0]))
    assert prediction.probabilities.shape == (5,)
    assert np.isclose(prediction.probabilities.sum(), 1.0)

    resumed = _args(tiny_data, tmp_path / "run", "--resume", "--epochs", "2")
    trainer.train(resumed)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [(line["stage"], line["epoch"]) for line in lines] == [
        ("head", 1),
        ("full", 1),
        ("full", 2),
    ]


@pytest.mark.slow
def test_pretrained_without_hub_stops_with_a_clear_message(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match="could not fetch ImageNet weights"):
        trainer.main(["--data", str(tiny_data), "--out", str(tmp_path), "--pretrained"])


@pytest.mark.slow
def test_frozen_blocks_keep_weights_and_batchnorm_statistics(tiny_data, tmp_path):
    model = create_network(ModelConfig(input_size=(3, 64, 64)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model, "full", _args(tiny_data, tmp_path, "--freeze-blocks", "2"), tiny_data)
    after = model.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert not changed & {"conv0", "norm0", "denseblock1", "transition1", "denseblock2"}
    assert {"transition2", "denseblock3", "denseblock4", "norm5"} <= changed


@pytest.mark.slow
def test_two_folders_train_with_class_source_sampling(tiny_data, tmp_path, caplog):
    second = tmp_path / "second"
    shutil.copytree(tiny_data, second)
    (second / "train" / "NORMAL" / "broken.png").unlink()
    sorted((second / "train" / "NORMAL").iterdir())[0].unlink()
    args = _args(tiny_data, tmp_path / "run", "--epochs", "0", "--samples-per-epoch", "8")
    args.data.append(str(second))
    assert args.balance == "class-source"
    with caplog.at_level("INFO", logger="lungcam.train"):
        trainer.train(args)
    cells = next(r.getMessage() for r in caplog.records if "train cells" in r.getMessage())
    assert f"Normal / {tiny_data.name}: 3" in cells and "Normal / second: 2" in cells
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [line["stage"] for line in lines] == ["head"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_macro_f1"] >= 0  # temperature fitted on both folders' val splits


def _with_pneumonia_sets(tiny_data, root, per_split=2):
    """A copy of ``tiny_data`` with a ``PNEUMONIA`` (label set) folder in train and val."""
    shutil.copytree(tiny_data, root)
    for split in ("train", "val"):
        (root / split / "PNEUMONIA").mkdir()
        for path in lung5_images("test", per_class=per_split)[:per_split]:
            shutil.copy(path, root / split / "PNEUMONIA" / f"set-{path.name}")
    return root


def test_a_pneumonia_folder_is_read_as_the_set_of_both_pneumonia_classes(tiny_data, tmp_path):
    root = _with_pneumonia_sets(tiny_data, tmp_path / "data")
    records = scan_class_folders(root / "train")
    sets = [r for r in records if r.path.parent.name == "PNEUMONIA"]
    assert len(sets) == 2 and all(r.is_set and r.allowed == PNEUMONIA_CLASSES for r in sets)
    assert {r.label for r in sets} == {0}  # the first admitted class, for balancing only
    assert sum(not r.is_set for r in records) == 16
    dataset = XrayDataset(sets, build_transform(ModelConfig(input_size=(3, 64, 64))))
    image, allowed = dataset[0]
    assert image.shape == (3, 64, 64) and allowed.tolist() == [True, False, False, False, True]
    (root / "val" / "BACTERIAL PNEUMONIA").rename(root / "val" / "Lobar")
    with pytest.raises(ValueError, match=r"unknown class folder 'Lobar'.*or Pneumonia"):
        scan_class_folders(root / "val")


def test_a_label_set_stands_in_for_no_class_folder(tiny_data, tmp_path):
    root = _with_pneumonia_sets(tiny_data, tmp_path / "data")
    shutil.rmtree(root / "train" / "BACTERIAL PNEUMONIA")
    with pytest.raises(ValueError, match=r"lacks class folders: Bacterial Pneumonia$"):
        scan_class_folders(root / "train")


@pytest.mark.parametrize("weighted", [False, True])
def test_set_cross_entropy_is_cross_entropy_for_one_class_and_log_sum_for_a_set(weighted):
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.5]) if weighted else None
    one_hot = torch.nn.functional.one_hot(labels, 5).bool()
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, labels)
    assert torch.allclose(recipe.SetCrossEntropy(weight)(logits, one_hot), expected)
    sets = one_hot.clone()
    sets[:2] = False
    sets[:2, list(PNEUMONIA_CLASSES)] = True  # rows 0 and 1: "Pneumonia", cause unknown
    p = logits.softmax(dim=1)
    per_image = -torch.log(torch.where(sets, p, 0).sum(dim=1))
    w = torch.ones(6) if weight is None else weight[torch.tensor([0, 0, 2, 3, 4, 2])]
    got = recipe.SetCrossEntropy(weight)(logits, sets)
    assert torch.allclose(got, (w * per_image).sum() / w.sum())
    # a set is never trained as Bacterial: with all mass on Viral its loss is ~0
    viral = torch.tensor([[-9.0, -9.0, -9.0, -9.0, 9.0]])
    assert recipe.SetCrossEntropy(weight)(viral, sets[:1]) < 1e-6
    assert recipe.SetCrossEntropy(weight)(viral, one_hot[:1]) > 10


def test_training_with_label_sets_scores_them_apart(tiny_data, tmp_path):
    root = _with_pneumonia_sets(tiny_data, tmp_path / "data")
    trainer.train(_args(root, tmp_path / "run", "--epochs", "0", "--samples-per-epoch", "8"))
    (line,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert 0 <= line["val_set_accuracy"] <= 1 and 0 <= line["val_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["temperature"] > 0
