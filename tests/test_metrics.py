"""Metrics against values worked out by hand on a fixed six-image prediction set."""

import json

import numpy as np
import pytest

from model.predictor import Predictor
from tests.conftest import LUNG5, lung5_images
from training import evaluate
from training.calibrate import fit_temperature, softmax
from training.data import ImageRecord
from training.metrics import binary_auroc, classification_metrics

LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.5, 0.1, 0.4],
    ]
)  # predicted: 0 1 1 1 2 0


def test_values_match_hand_computation():
    m = classification_metrics(LABELS, PROBS, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: a = 2·.5·.5/(1) = .5, b = 2·(2/3)·1/(5/3) = .8, c = 2·1·.5/1.5 = 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["per_class"]["a"] == {
        "support": 2,
        "sensitivity": 0.5,
        "specificity": 0.75,
        "ppv": 0.5,
        "auroc": 0.875,
    }
    assert m["per_class"]["b"]["ppv"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["specificity"] == 1.0
    assert m["macro_auroc"] == pytest.approx((0.875 + 1 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # Brier: per-image squared error .14 .62 .14 .06 .06 .62 → mean 1.64 / 6
    assert m["brier"] == pytest.approx(1.64 / 6)
    # ECE (15 bins): conf .5/.5 acc 0, .7/.7 acc 1, .8/.8 acc 1 → (2·.5 + 2·.3 + 2·.2) / 6
    assert m["ece"] == pytest.approx(2.0 / 6, abs=1e-6)


def test_binary_auroc_uses_only_the_two_classes():
    # among images of class 0 and 1: score p0/(p0+p1) = .78 .44 | .22 .11 → perfect ranking
    assert binary_auroc(LABELS, PROBS, positive=0, negative=1) == 1.0
    assert binary_auroc(LABELS[:2], PROBS[:2], 0, 1) is None


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    fitted = fit_temperature(true_logits * 3.0, labels)  # over-confident by 3×
    assert fitted == pytest.approx(3.0, rel=0.1)


def test_evaluate_cli_writes_metrics_and_plots(tiny_checkpoint, tmp_path):
    data = tmp_path / "few"
    for folder in (LUNG5 / "test").iterdir():
        (data / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[:2]:
            (data / folder.name / path.name).write_bytes(path.read_bytes())
    (data / "manifest.csv").write_text((LUNG5 / "manifest.csv").read_text().replace("test/", ""))
    out = tmp_path / "o"
    evaluate.main(["--model", str(tiny_checkpoint), "--data", str(data), "--out", str(out)])
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "macro_auroc", "bacterial_vs_viral_auroc", "per_source"):
        assert key in metrics
    for key in ("ece", "brier", "confusion_matrix", "per_class"):
        assert key in metrics["calibrated"] and key in metrics["uncalibrated"]
    assert set(metrics["calibrated"]["per_class"]["COVID-19"]) >= {
        "sensitivity",
        "specificity",
        "ppv",
        "auroc",
    }
    assert sum(s["n"] for s in metrics["per_source"].values()) == 10
    for source in metrics["per_source"].values():  # only the classes the source has
        assert sum(c["n"] for c in source["classes"].values()) == source["n"]
        assert all(0 <= c["sensitivity"] <= 1 for c in source["classes"].values())
    for plot in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (tmp_path / "o" / plot).stat().st_size > 5000


def test_unreadable_files_are_listed_and_the_rest_evaluated(tiny_checkpoint, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    good = lung5_images("test")[:2]
    records = [ImageRecord(p, i, f"p{i}", "s") for i, p in enumerate([good[0], junk, good[1]])]
    logits, kept, failed = evaluate.predict_logits(
        Predictor.load(str(tiny_checkpoint), "cpu"), records, batch_size=2
    )
    assert [r.path for r in kept] == good and logits.shape == (2, 5)
    assert len(failed) == 1 and failed[0].startswith(f"{junk}: ") and "not a readable" in failed[0]
