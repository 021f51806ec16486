"""Label sets in ``evaluate`` (``training.label_sets``): a ``Pneumonia`` folder's images are
right when their top class is either pneumonia, scored apart from the single-label ones, per
view and per source."""

import csv
import shutil

import numpy as np
import pytest

from tests.conftest import lung5_images
from tests.evaluate_folders import lung5_folders, run_evaluate
from training import evaluate


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return lung5_folders(tmp_path_factory.mktemp("eval"))


# File name → (class folder, view, source, top class the stub predictor gives it).
MIXED = {
    "s0.png": ("Pneumonia", "AP", "rsna", 0),  # Bacterial: right for the set
    "s1.png": ("Pneumonia", "AP", "rsna", 4),  # Viral: right
    "s2.png": ("Pneumonia", "PA", "rsna", 2),  # Normal: wrong
    "s3.png": ("Pneumonia", "AP", "other", 1),  # COVID-19: wrong
    "b0.png": ("Bacterial Pneumonia", "PA", "kids", 0),
    "n0.png": ("Normal", "PA", "kids", 2),
    "n1.png": ("Normal", "PA", "kids", 4),  # a Normal called Viral
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """test/ with four ``Pneumonia`` (label set) images and three single-label ones, real
    lung5 films, and a manifest naming view and source."""
    root = tmp_path_factory.mktemp("mixed") / "adult"
    films = iter(lung5_images("test", per_class=2))
    rows = []
    for name, (folder, view, source, _) in MIXED.items():
        (root / "test" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(next(films), root / "test" / folder / name)
        rows.append(
            {
                "file": f"test/{folder}/{name}",
                "split": "test",
                "label": folder,
                "patient_id": name[:2],
                "view": view,
                "source": source,
            }
        )
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _stub_logits(monkeypatch):
    """``predict_variants`` whose top class per file is MIXED's, the same under every edit."""

    def stub(predictor, records, variants, batch_size=16, lungs=None):
        logits = np.zeros((len(records), 5))
        for row, record in enumerate(records):
            logits[row, MIXED[record.path.name][3]] = 3.0
        if lungs is not None:
            lungs.extend((True, 0.5) for _ in records)
        return {name: logits for name in variants}, list(records), []

    monkeypatch.setattr(evaluate, "predict_variants", stub)


def test_a_set_image_is_right_when_its_top_class_is_either_pneumonia(
    mixed, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    _stub_logits(monkeypatch)
    metrics, _ = run_evaluate(tmp_path, tiny_checkpoint, mixed)
    sets = metrics["label_sets"]
    assert sets["sets"] == {"Bacterial Pneumonia or Viral Pneumonia": 4}
    assert sets["n"] == 4 and sets["accuracy"] == 0.5
    p = evaluate.softmax(np.array([[3.0, 0, 0, 0, 0]]), metrics["temperature"])[0]
    assert sets["set_probability"] == pytest.approx((2 * (p[0] + p[4]) + 2 * 2 * p[4]) / 4)
    assert sets["called"] == {
        "Bacterial Pneumonia": 0.25,
        "COVID-19": 0.25,
        "Normal": 0.25,
        "Tuberculosis": 0.0,
        "Viral Pneumonia": 0.25,
    }
    assert {v: (b["n"], b["accuracy"]) for v, b in sets["per_view"].items()} == {
        "AP": (3, pytest.approx(2 / 3)),
        "PA": (1, 0.0),
    }
    assert {s: (b["n"], b["accuracy"]) for s, b in sets["per_source"].items()} == {
        "other": (1, 0.0),
        "rsna": (3, pytest.approx(2 / 3)),
    }
    # per-class metrics see the three single-label images only
    calibrated = metrics["calibrated"]
    assert calibrated["n"] == 3 and metrics["accuracy"] == pytest.approx(2 / 3)
    assert calibrated["per_class"]["Bacterial Pneumonia"]["support"] == 1
    assert calibrated["per_class"]["Bacterial Pneumonia"]["sensitivity"] == 1.0
    assert calibrated["per_class"]["Viral Pneumonia"]["support"] == 0
    assert calibrated["per_class"]["Viral Pneumonia"]["ppv"] == 0.0  # only n1, a Normal
    assert np.sum(calibrated["confusion_matrix"]) == 3
    assert list(metrics["per_source"]) == ["kids"] and metrics["per_source"]["kids"]["n"] == 3
    assert metrics["audit"]["overall"]["clean"]["n"] == 3
    assert metrics["lung_share"]["overall"]["n"] == 3
    lines = [line for line in capsys.readouterr().out.splitlines() if "Label sets" in line]
    assert lines == [
        "Label sets (Bacterial Pneumonia or Viral Pneumonia): n=4, top class in the "
        f"set 0.500, mean p(set) {sets['set_probability']:.3f}; per view AP 0.67 "
        "(n=3), PA 0.00 (n=1); called Bacterial Pneumonia 25%, COVID-19 25%, "
        "Normal 25%, Viral Pneumonia 25%"
    ]


def test_a_folder_of_label_sets_only_still_writes_metrics(
    mixed, tiny_checkpoint, tmp_path, monkeypatch
):
    only = tmp_path / "only"
    shutil.copytree(mixed / "test" / "Pneumonia", only / "test" / "pneumonia")
    _stub_logits(monkeypatch)
    metrics, out = run_evaluate(tmp_path, tiny_checkpoint, only, extra=["--no-audit"])
    assert metrics["label_sets"]["n"] == 4 and metrics["label_sets"]["accuracy"] == 0.5
    assert metrics["label_sets"]["per_view"]["unknown"]["n"] == 4  # no manifest: no view
    assert metrics["calibrated"] is None and metrics["accuracy"] is None
    assert not (out / "confusion_matrix.png").exists()


def test_evaluate_mixes_label_set_folders_with_lung5_folders(
    mixed, folders, tiny_checkpoint, tmp_path
):
    metrics, _ = run_evaluate(tmp_path, tiny_checkpoint, mixed, *folders, extra=["--no-audit"])
    assert metrics["label_sets"]["n"] == 4 and 0 <= metrics["label_sets"]["accuracy"] <= 1
    assert 0 < metrics["label_sets"]["set_probability"] < 1
    assert metrics["calibrated"]["n"] == 3 + 7
    assert sum(b["n"] for b in metrics["label_sets"]["per_source"].values()) == 4
