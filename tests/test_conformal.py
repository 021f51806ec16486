"""Conformal prediction sets: the threshold, coverage with a known answer, edges, the config
section and the sets a ``Predictor`` attaches to every prediction."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from crepes import ConformalClassifier

from batch.prediction_rows import Row, write_csv
from explain.verdict import NO_SETS, describe_set, set_caption
from imaging.load import load_image
from model.config import CONFIG_FILE, ModelConfig
from model.conformal import (
    ConformalConfig,
    check_alpha,
    class_scores,
    conformal_rank,
    conformal_threshold,
    prediction_sets,
    true_class_scores,
)
from model.predictor import Predictor
from tests.conftest import lung5_images
from training.calibrate import main as calibrate_main
from training.conformal import coverage_curve, coverage_report, fit_conformal, format_report
from ui.analyze import uncertainty
from ui.common import Case

NAMES = ["a", "b", "c", "d", "e"]


def calibrated_world(n: int, seed: int, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: each label is drawn from them."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, 0.3), size=n)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return probs, labels


def test_threshold_is_the_finite_sample_order_statistic():
    scores = np.arange(1, 100) / 100  # n = 99: ⌈100 · 0.9⌉ = 90th smallest
    assert conformal_rank(99, 0.1) == 90
    assert conformal_threshold(scores[::-1], 0.1) == pytest.approx(0.90)
    assert conformal_rank(1000, 0.1) == 901  # ⌈1001 · 0.9⌉ = ⌈900.9⌉
    assert conformal_threshold(np.arange(1000) / 1000, 0.1) == pytest.approx(0.900)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_on_calibrated_synthetic_data_is_nominal(method):
    cal_p, cal_y = calibrated_world(2000, seed=1)
    test_p, test_y = calibrated_world(20000, seed=2)
    fitted = fit_conformal(cal_p, cal_y, alpha=0.1, method=method, split="synthetic")
    report = coverage_report(test_p, test_y, fitted, NAMES)
    assert fitted.n == 2000 and fitted.split == "synthetic"
    assert report["overall"]["coverage"] == pytest.approx(0.9, abs=0.015)
    assert report["overall"]["n"] == 20000 and sum(report["set_sizes"].values()) == 20000
    assert 1 <= report["overall"]["mean_size"] <= 5


def test_lac_matches_the_oracle_set_when_the_probabilities_are_true():
    # With calibrated probabilities the best 90 % sets keep classes with p ≥ t; LAC finds t.
    cal_p, cal_y = calibrated_world(5000, seed=3)
    lac = fit_conformal(cal_p, cal_y, 0.1, "lac")
    aps = fit_conformal(cal_p, cal_y, 0.1, "aps")
    test_p, test_y = calibrated_world(5000, seed=4)
    lac_size = coverage_report(test_p, test_y, lac, NAMES)["overall"]["mean_size"]
    aps_size = coverage_report(test_p, test_y, aps, NAMES)["overall"]["mean_size"]
    assert lac_size <= aps_size


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_sets_match_crepes_on_the_same_scores(alpha):
    cal_p, cal_y = calibrated_world(498, seed=5)  # (n + 1) α is not a whole number
    test_p, _ = calibrated_world(300, seed=6)
    ours = prediction_sets(test_p, fit_conformal(cal_p, cal_y, alpha).threshold)
    crepes = ConformalClassifier().fit(true_class_scores(cal_p, cal_y))
    theirs = crepes.predict_set(class_scores(test_p), confidence=1 - alpha, smoothing=False)
    theirs[np.arange(len(test_p)), test_p.argmax(axis=1)] = 1  # ours never empty
    np.testing.assert_array_equal(ours, theirs.astype(bool))


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), "ten", None])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be"):
        check_alpha(alpha)
    with pytest.raises(ValueError, match="alpha must be"):
        ConformalConfig(alpha=alpha, threshold=0.5, n=10)


def test_too_few_calibration_images_give_every_class():
    probs = np.array([[0.7, 0.2, 0.1]])
    fitted = fit_conformal(probs, np.array([0]), alpha=0.1)  # ⌈2 · 0.9⌉ = 2 > n = 1
    assert fitted.threshold == 1.0
    assert prediction_sets(probs, fitted.threshold).all()


def test_sets_are_never_empty_and_keep_the_top_class():
    probs = np.array([[0.4, 0.35, 0.25], [0.98, 0.01, 0.01]])
    member = prediction_sets(probs, threshold=0.05)  # nothing has 1 − p ≤ 0.05
    np.testing.assert_array_equal(member, [[1, 0, 0], [1, 0, 0]])
    member = prediction_sets(probs, threshold=0.7)  # 1 − p ≤ 0.7 ⟺ p ≥ 0.3
    np.testing.assert_array_equal(member, [[1, 1, 0], [1, 0, 0]])


def test_aps_scores_are_the_mass_ranked_at_or_above():
    np.testing.assert_allclose(class_scores(np.array([[0.2, 0.5, 0.3]]), "aps"), [[1.0, 0.5, 0.8]])
    np.testing.assert_allclose(class_scores(np.array([[0.2, 0.5, 0.3]]), "lac"), [[0.8, 0.5, 0.7]])
    member = prediction_sets(np.array([[0.2, 0.5, 0.3]]), 0.8, "aps")
    np.testing.assert_array_equal(member, [[0, 1, 1]])


def test_named_set_is_ordered_by_probability():
    sets = ConformalConfig(method="lac", alpha=0.1, threshold=0.75, split="val", n=10)
    assert sets.named_set(np.array([0.05, 0.3, 0.05, 0.05, 0.55]), NAMES) == ["e", "b"]
    assert sets.named_set(np.array([0.9, 0.1, 0, 0, 0]), NAMES) == ["a"]


def test_a_class_never_present_reports_nulls():
    probs = np.array([[0.9, 0.1, 0, 0, 0], [0.2, 0.7, 0.1, 0, 0]])
    fitted = ConformalConfig(threshold=0.5, n=2)
    report = coverage_report(probs, np.array([0, 1]), fitted, NAMES, ["x", "y"])
    assert report["per_class"]["e"] == {
        "n": 0,
        "coverage": None,
        "mean_size": None,
        "uncertain_share": None,
    }
    assert report["per_class"]["a"]["coverage"] == 1.0 and report["per_source"]["y"]["n"] == 1
    assert "e: no images" in format_report(report)


def test_coverage_curve_follows_nominal():
    probs, labels = calibrated_world(4000, seed=7)
    curve = coverage_curve(probs, labels, alphas=(0.05, 0.1, 0.2), repeats=5)
    np.testing.assert_allclose(curve["coverage"], [0.95, 0.9, 0.8], atol=0.02)
    assert curve["mean_size"][0] > curve["mean_size"][2]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"method": "raps", "alpha": 0.1, "threshold": 0.5, "n": 5}, "unknown conformal method"),
        ({"method": "lac", "alpha": 0.1, "threshold": 1.5, "n": 5}, "threshold must be in"),
        ({"method": "lac", "alpha": 0.1, "threshold": 0.5, "n": 0}, "must be ≥ 1"),
        ({"alpha": 0.1, "threshold": 0.5, "n": 5, "q": 1}, "unknown keys"),
    ],
)
def test_a_bad_conformal_section_names_the_problem(section, message):
    data = ModelConfig().to_dict()
    data["lungcam"]["conformal"] = section
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_the_section_round_trips_and_is_optional(tmp_path):
    config = ModelConfig(conformal={"method": "aps", "alpha": 0.05, "threshold": 0.9, "n": 7})
    config.save(tmp_path / CONFIG_FILE)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())["lungcam"]["conformal"]
    assert saved == {"method": "aps", "alpha": 0.05, "threshold": 0.9, "split": "", "n": 7}
    assert ModelConfig.load(tmp_path / CONFIG_FILE).conformal == config.conformal
    bare = ModelConfig().to_dict()
    del bare["lungcam"]["conformal"]  # a checkpoint from before conformal sets
    assert ModelConfig.from_dict(bare).conformal is None


def test_captions():
    assert set_caption(0.1) == "90 % set" and set_caption(0.125) == "87.5 % set"
    assert describe_set(["A", "B"], 0.1) == "**90 % set:** A, B · ⚠️ **uncertain**"
    assert describe_set(["A"], 0.05) == "**95 % set:** A · certain"
    assert describe_set(None, None) == NO_SETS


def test_predictions_carry_the_set_only_with_a_section(tiny_checkpoint, tmp_path):
    image = load_image(lung5_images("test")[0])
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    plain = predictor.predict(image)
    assert plain.prediction_set is None and plain.uncertain is None and plain.set_alpha is None
    predictor.config.conformal = ConformalConfig(threshold=1.0, n=10)  # every class
    every = predictor.predict(image)
    assert every.prediction_set[0] == every.top_label and len(every.prediction_set) == 5
    assert every.uncertain is True and every.set_alpha == 0.1
    predictor.config.conformal = ConformalConfig(threshold=0.0, n=10)  # top class only
    certain = predictor.predict(image)
    assert certain.prediction_set == [every.top_label] and certain.uncertain is False
    rows = [Row(Path("a.png"), every), Row(Path("b.png"), certain), Row(Path("c.png"), plain)]
    write_csv([*rows, Row(Path("d.png"), error="broken")], NAMES, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as handle:
        sets = [row["prediction_set"] for row in csv.DictReader(handle)]
    assert sets == ["|".join(every.prediction_set), every.top_label, "", ""]
    assert uncertainty(Case("x", plain)) == NO_SETS and uncertainty(None) == ""
    assert uncertainty(Case("x", every)).startswith(f"**90 % set:** {every.top_label}, ")
    assert uncertainty(Case("x", certain)).endswith("· certain")


@pytest.mark.parametrize("alpha", ["0", "1.5"])
def test_calibrate_cli_refuses_alpha_outside_zero_one(alpha, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        calibrate_main(["--data", str(tmp_path), "--alpha", alpha, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "alpha must be in (0, 1)" in capsys.readouterr().err


def test_calibrate_cli_writes_a_loadable_checkpoint(tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("val", "test"):
        for path in lung5_images(split, per_class=2):
            target = root / split / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    out = tmp_path / "fitted"
    calibrate_main(
        [
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(root),
            "--alpha",
            "0.2",
            "--check-split",
            "test",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    summary = json.loads((out / "calibration.json").read_text())
    section = summary["conformal"]
    assert section["alpha"] == 0.2 and section["n"] == 10 and section["split"] == "val of data"
    assert set(summary["check"]) == {"split", "unreadable", "lac", "aps"}
    assert summary["check"]["lac"]["overall"]["n"] == 10
    assert summary["nll"]["after"] <= summary["nll"]["before"] + 1e-6
    predictor = Predictor.load(str(out), "cpu")  # weights linked beside the new config
    assert predictor.config.conformal.threshold == section["threshold"]
    assert predictor.config.temperature == summary["temperature"]["after"]
    assert predictor.predict(load_image(lung5_images("test")[0])).prediction_set
    assert "Conformal lac sets, α = 0.2" in capsys.readouterr().out


def test_calibrate_cli_names_a_missing_split_before_loading_anything(tmp_path, capsys):
    (tmp_path / "val").mkdir()
    with pytest.raises(SystemExit) as stop:
        calibrate_main(["--data", str(tmp_path), "--check-split", "test", "--out", str(tmp_path)])
    assert stop.value.code == 2 and f"{str(tmp_path / 'test')!r} is not a folder" in (
        capsys.readouterr().err
    )
