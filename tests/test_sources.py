"""Several data folders as one: class merging by name, source attribution, balanced sampling."""

import csv
from collections import Counter

import cv2
import numpy as np
import pytest
from torch.utils.data import RandomSampler, WeightedRandomSampler

from model.config import CLASS_FOLDERS, CLASS_NAMES
from training.data import LUNG5, PNEUMONIA_CLASSES, ImageRecord, allowed_classes
from training.sources import (
    balance_weights,
    cell_counts,
    load_folders,
    loss_class_weights,
    make_sampler,
)

SHOUTED = ["BACTERIAL PNEUMONIA", "covid-19", "NORMAL", "TB", "viral_pneumonia"]


def make_folder(root, folders=CLASS_FOLDERS, per_split=None, source=None):
    """A split root of tiny PNGs; ``source(class index) → str`` writes a manifest."""
    per_split = per_split or {"train": 2, "val": 1, "test": 1}
    rows = []
    for split, count in per_split.items():
        for k, folder in enumerate(folders):
            (root / split / folder).mkdir(parents=True)
            for i in range(count):
                name = f"{split}/{folder}/{root.name}-{k}-{i}.png"
                cv2.imwrite(str(root / name), np.full((64, 64), 10 * k + i, np.uint8))
                rows.append(
                    {
                        "file": name,
                        "split": split,
                        "label": folder,
                        "patient_id": f"{root.name}-{split}-{k}-{i}",
                        "source": source(k) if source else "",
                    }
                )
    if source:
        with open(root / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture
def three_folders(tmp_path):
    a = make_folder(tmp_path / "a", source=lambda k: "paper" if k == 1 else "kids")
    b = make_folder(
        tmp_path / "b", SHOUTED, {"train": 3, "val": 1, "test": 2}, source=lambda k: "hospital"
    )
    c = make_folder(tmp_path / "plain", per_split={"train": 1, "val": 1})
    return a, b, c


def test_folders_merge_class_folders_by_name_and_keep_their_sources(three_folders):
    splits = load_folders(three_folders)
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["train"]) == 5 * (2 + 3 + 1) and len(splits["val"]) == 15
    assert len(splits["test"]) == 5 * (1 + 2)  # the plain folder has no test split
    cells = cell_counts(splits["train"])
    assert cells[(2, "kids")] == 2 and cells[(2, "hospital")] == 3 and cells[(2, "plain")] == 1
    assert cells[(1, "paper")] == 2 and (1, "kids") not in cells
    assert {r.source for r in splits["train"]} == {"kids", "paper", "hospital", "plain"}
    assert Counter(r.label for r in splits["train"]) == dict.fromkeys(range(5), 6)
    covid = [r for r in splits["train"] if r.source == "hospital" and r.label == 1]
    assert all(r.path.parent.name == "covid-19" for r in covid)


def test_a_folder_without_val_gets_a_patient_split_of_its_own(three_folders, tmp_path):
    d = make_folder(tmp_path / "noval", per_split={"train": 4})
    splits = load_folders([three_folders[0], d], seed=1)
    own = [r for name in ("train", "val") for r in splits[name] if r.source == "noval"]
    assert len(own) == 20 and any(r.source == "noval" for r in splits["val"])


def test_no_folders_and_missing_folders_are_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one --data"):
        load_folders([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folders([tmp_path / "nope"])


def _records(cells):
    return [
        ImageRecord(f"{label}{source}{i}.png", label, f"p{i}", source)
        for (label, source), n in cells.items()
        for i in range(n)
    ]


# class 0: source a ×3, source b ×1; class 1: source a ×2.
RECORDS = _records({(0, "a"): 3, (0, "b"): 1, (1, "a"): 2})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("class-source", [1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 4, 1 / 4]),  # 1 / (C · S · n)
        ("class", [1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 4, 1 / 4]),  # 1 / (C · n_class)
        ("none", [1 / 6] * 6),
        ("loss", [1 / 6] * 6),
    ],
)
def test_balance_weights_on_a_known_record_list(mode, expected):
    np.testing.assert_allclose(balance_weights(RECORDS, mode), expected)


def test_class_source_cells_and_classes_get_equal_totals():
    records = _records({(0, "a"): 50, (0, "b"): 5, (0, "c"): 1, (2, "a"): 7, (3, "d"): 300})
    weights = balance_weights(records, "class-source")
    totals = Counter()
    for record, w in zip(records, weights, strict=True):
        totals[(record.label, record.source)] += w
    assert totals[(0, "a")] == pytest.approx(1 / 9) and totals[(0, "c")] == pytest.approx(1 / 9)
    assert totals[(2, "a")] == pytest.approx(1 / 3) and totals[(3, "d")] == pytest.approx(1 / 3)
    assert weights.sum() == pytest.approx(1.0)


def test_sampler_draws_cells_in_the_expected_proportions():
    sampler = make_sampler(RECORDS, "class-source", num_samples=12_000, seed=0)
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == 12_000
    drawn = Counter((RECORDS[i].label, RECORDS[i].source) for i in sampler)
    assert drawn[(0, "b")] / 12_000 == pytest.approx(0.25, abs=0.02)  # 1 image, a quarter
    assert drawn[(1, "a")] / 12_000 == pytest.approx(0.5, abs=0.02)


def test_none_shuffles_and_samples_per_epoch_sets_the_length():
    sampler = make_sampler(RECORDS, "none", num_samples=9, seed=0)
    assert isinstance(sampler, RandomSampler) and len(list(sampler)) == 9
    with pytest.raises(ValueError, match="at least 1"):
        make_sampler(RECORDS, "class", num_samples=0)
    with pytest.raises(ValueError, match="unknown balance mode 'cells'"):
        balance_weights(RECORDS, "cells")


@pytest.mark.parametrize("mode", ["class-source", "class", "none"])
def test_loss_is_unweighted_unless_the_loss_does_the_balancing(mode):
    assert loss_class_weights(RECORDS, 3, mode) is None


def test_loss_mode_weighs_classes_inversely():
    np.testing.assert_allclose(loss_class_weights(RECORDS, 3, "loss"), [6 / 12, 6 / 6, 6 / 3])


def test_real_folders_with_some_classes_merge_into_all_five():
    splits = load_folders([LUNG5, LUNG5.parent / "lung5-extra"])
    sources = {r.source for r in splits["train"]}
    assert any("NIH" in s for s in sources) and any("Hannover" in s for s in sources)
    assert {r.label for r in splits["train"]} == set(range(5))
    with pytest.raises(ValueError, match="hold no images of: Bacterial Pneumonia"):
        load_folders([LUNG5.parent / "lung5-extra"])


@pytest.mark.parametrize(
    ("label", "allowed"),
    [
        ("Pneumonia", (0, 4)),
        ("PNEUMONIA", (0, 4)),
        (" pneumonia ", (0, 4)),
        ("NORMAL", (2,)),
        ("viral_pneumonia", (4,)),
        ("covid-19", (1,)),
    ],
)
def test_label_sets_and_single_labels_have_one_home(label, allowed):
    from training import crop_cache

    assert allowed_classes(label) == allowed
    assert crop_cache.allowed_classes is allowed_classes  # the cache reads training.data's
    names = [CLASS_NAMES[k] for k in PNEUMONIA_CLASSES]
    assert names == ["Bacterial Pneumonia", "Viral Pneumonia"]


def test_an_unknown_label_is_named():
    with pytest.raises(ValueError, match=r"unknown label 'cats'.*'Pneumonia'"):
        allowed_classes("cats")


def test_a_pneumonia_folder_is_a_label_set_balanced_as_a_bacterial_source(tmp_path):
    root = make_folder(
        tmp_path / "adult",
        [*CLASS_FOLDERS, "PNEUMONIA"],
        source=lambda k: "rsna" if k == 5 else "kids",
    )
    splits = load_folders([root])
    sets = [r for r in splits["train"] if r.path.parent.name == "PNEUMONIA"]
    assert len(sets) == 2 and all(r.is_set for r in sets)
    assert {(r.label, r.allowed, r.source) for r in sets} == {(0, (0, 4), "rsna")}
    singles = [r for r in splits["train"] if not r.is_set]
    assert len(singles) == 10 and all(r.allowed == (r.label,) for r in singles)
    cells = cell_counts(splits["train"])
    assert cells[(0, "rsna")] == 2 and cells[(0, "kids")] == 2 and cells[(4, "kids")] == 2
    weights = dict(
        zip(
            [r.path.name for r in splits["train"]],
            balance_weights(splits["train"], "class-source"),
            strict=True,
        )
    )
    # class 0 has two sources (kids, rsna): each cell a tenth of the epoch, each image 1/20
    assert weights[sets[0].path.name] == pytest.approx(1 / 20)
    assert sum(
        w for r, w in zip(splits["train"], weights.values(), strict=True) if r.label == 4
    ) == pytest.approx(1 / 5)


def test_a_label_set_is_no_example_of_its_classes(tmp_path):
    root = make_folder(tmp_path / "sets", ["PNEUMONIA", *CLASS_FOLDERS[1:]])
    with pytest.raises(ValueError, match=r"hold no images of: Bacterial Pneumonia$"):
        load_folders([root])
