"""The not-a-chest-X-ray guard: statistics, cheap checks, predictor wiring, and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from explain.verdict import guard_sentence
from imaging.image import LoadedImage
from imaging.load import load_image
from model import ood
from model.config import ModelConfig
from model.lungs import LungMask
from model.ood import OODCheck, assess, check_image
from model.predictor import Predictor
from serving.runtime import free_port
from tests.conftest import BUNDLED_MODEL, LUNG5, REPO, lung5_images
from training import non_chest, ood_fit
from training.ood_fit import fit_feature_stats


def gray(width: int = 100, height: int = 100, saturation: float = 0.0) -> LoadedImage:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    return LoadedImage(pixels, "PNG", "L", saturation=saturation)


@pytest.fixture(scope="module")
def gaussian_stats():
    """Two classes in 16-d with most variance in 4 directions; calibrated on fresh samples."""
    rng = np.random.default_rng(0)
    scale = np.r_[np.full(4, 3.0), np.full(12, 0.1)]

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 2, n)
        return rng.normal(0, 1, (n, 16)) * scale + labels[:, None] * np.r_[
            np.full(4, 2.0), np.zeros(12)
        ], labels

    train, labels = sample(4000)
    calibration, _ = sample(4000)
    stats = fit_feature_stats(train, labels, calibration, components=4, quantile=0.95)
    return stats, sample


def test_thresholds_flag_the_chosen_fraction_of_in_distribution(gaussian_stats):
    stats, sample = gaussian_stats
    fresh, _ = sample(4000)
    distance, residual = stats.scores(fresh)
    assert np.mean(distance > stats.distance_threshold) == pytest.approx(0.05, abs=0.015)
    assert np.mean(residual > stats.residual_threshold) == pytest.approx(0.05, abs=0.015)


def test_per_source_thresholds_hold_for_the_rarer_source(gaussian_stats):
    """A small source whose images sit further out sets the threshold: its own chest X-rays
    are not warned about more often than the chosen rate."""
    _, sample = gaussian_stats
    common, labels = sample(3000)
    rare = sample(300)[0] * 1.6
    calibration = np.concatenate([common, rare])
    groups = ["common"] * 3000 + ["rare"] * 300
    pooled = fit_feature_stats(common, labels, calibration, components=4, quantile=0.95)
    per_source = fit_feature_stats(common, labels, calibration, 4, 0.95, groups)
    fresh_rare = sample(2000)[0] * 1.6
    rate = lambda s: np.mean(s.scores(fresh_rare)[0] > s.distance_threshold)  # noqa: E731
    assert rate(pooled) > 0.15 and rate(per_source) == pytest.approx(0.05, abs=0.02)


def test_far_points_score_high_on_distance_and_residual(gaussian_stats):
    stats, _ = gaussian_stats
    inside_subspace = stats.mean + 50 * stats.basis[0]
    off_subspace = stats.mean + np.r_[np.zeros(4), np.full(12, 2.0)]
    distance, residual = stats.scores(np.stack([inside_subspace, off_subspace]))
    assert distance[0] > 3 * stats.distance_threshold
    assert residual[1] > 3 * stats.residual_threshold
    assert residual[0] < stats.residual_threshold


def test_stats_survive_the_config_json_round_trip(gaussian_stats, tmp_path):
    stats, sample = gaussian_stats
    config = ModelConfig(ood=stats.to_dict())
    config.save(tmp_path / "config.json")
    loaded = ood.load_feature_stats(ModelConfig.load(tmp_path / "config.json").ood)
    points, _ = sample(50)
    for before, after in zip(stats.scores(points), loaded.scores(points), strict=True):
        np.testing.assert_allclose(before, after, rtol=1e-4)


def test_incomplete_ood_section_is_a_clear_error():
    with pytest.raises(ValueError, match="refit it"):
        ood.load_feature_stats({"mean": [0.0]})


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (gray(), []),
        (gray(saturation=0.2), ["colour"]),
        (gray(400, 100), ["shape"]),
        (gray(100, 300, saturation=0.3), ["colour", "shape"]),
    ],
)
def test_cheap_checks(image, expected):
    reasons = check_image(image)
    assert len(reasons) == len(expected)
    for reason, word in zip(reasons, expected, strict=True):
        assert word in reason


def test_assess_without_stats_uses_cheap_checks_only():
    check = assess(gray(saturation=0.5), np.zeros(8), None)
    assert check.warn and check.score is None and len(check.reasons) == 1


def test_assess_with_stats_adds_the_feature_reason(gaussian_stats):
    stats, _ = gaussian_stats
    far = stats.mean + 50 * stats.basis[0]
    check = assess(gray(), far, stats)
    assert check.warn and check.score > 1 and "far from its training" in check.reasons[0]
    near = assess(gray(), stats.mean + stats.class_means[0] @ stats.basis, stats)
    assert not near.warn and near.score < 1


def _lungs(found: bool, features: np.ndarray | None = None) -> LungMask:
    mask = np.zeros((100, 100), bool)
    mask[20:80, 10:45] = mask[20:80, 55:90] = found
    return LungMask(mask, found, float(mask.mean()), 2 if found else 0, features=features)


def test_assess_scores_the_whole_image_with_the_segmenters_features(gaussian_stats):
    """The classifier's crop may look like a chest while the whole image does not: the
    segmenter's features, scored with their own statistics, add their own reason."""
    stats, _ = gaussian_stats
    near = stats.mean + stats.class_means[0] @ stats.basis
    far = stats.mean + 50 * stats.basis[0]
    check = assess(gray(), near, stats, _lungs(True, far), whole_image_stats=stats)
    assert check.score < 1 < check.whole_image_score
    assert len(check.reasons) == 1 and "seen whole" in check.reasons[0]
    calm = assess(gray(), near, stats, _lungs(True, near), whole_image_stats=stats)
    assert not calm.warn and calm.whole_image_score < 1
    # without statistics or without the segmenter's features nothing is concluded
    assert assess(gray(), near, stats, _lungs(True, far)).whole_image_score is None
    assert assess(gray(), near, stats, _lungs(True), whole_image_stats=stats).reasons == []


def test_whole_image_statistics_belong_to_one_segmenter(gaussian_stats):
    stats, _ = gaussian_stats
    ood_section = {"whole_image": stats.to_dict() | {"segmenter_sha256": "a" * 64}}
    loaded = ood.load_whole_image_stats(ood_section, "a" * 64)
    np.testing.assert_allclose(loaded.basis, stats.basis, atol=1e-6)
    assert ood.load_whole_image_stats(ood_section, None) is None  # no segmenter loaded
    assert ood.load_whole_image_stats({}, "a" * 64) is None  # not fitted
    with pytest.raises(ValueError, match="refit"):
        ood.load_whole_image_stats(ood_section, "b" * 64)


@pytest.mark.parametrize(
    ("found", "score", "warns"),
    [
        (None, None, False),  # no segmenter: nothing concluded
        (True, None, False),
        (True, 5.0, False),
        (False, None, True),  # no fitted statistics: no lungs is enough
        (False, ood.NO_LUNGS_SCORE + 0.01, True),
        (False, ood.NO_LUNGS_SCORE, False),  # at or below the lower bar: not enough
    ],
)
def test_no_lungs_rule(found, score, warns):
    assert ood.no_lungs_warns(found, score) is warns


def test_assess_counts_no_lung_fields_as_evidence(gaussian_stats):
    stats, _ = gaussian_stats
    near = stats.mean + stats.class_means[0] @ stats.basis
    assert not assess(gray(), near, stats, _lungs(True)).warn
    assert not assess(gray(), near, stats, None).warn
    check = assess(gray(), near, stats, _lungs(False), no_lungs_score=0.0)
    assert check.score <= 1 and check.reasons == [ood.NO_LUNGS_REASON]
    strict = assess(gray(), near, stats, _lungs(False), no_lungs_score=check.score + 0.01)
    assert not strict.warn
    default = assess(gray(), near, stats, _lungs(False))
    assert default.warn == (check.score > ood.NO_LUNGS_SCORE)
    far = assess(gray(), stats.mean + 50 * stats.basis[0], stats, _lungs(False))
    assert len(far.reasons) == 2 and ood.NO_LUNGS_REASON in guard_sentence(far)
    assert assess(gray(), None, None, _lungs(False)).reasons == [ood.NO_LUNGS_REASON]


def test_predictor_passes_the_lung_fields_to_the_guard(tiny_checkpoint):
    """The bundled segmenter: a flat image has no lungs and is flagged for it; a film is not."""
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    flat, film = predictor.predict_many(
        [LoadedImage(np.full((120, 100), 128, np.uint8), "PNG", "L"), load_image(lung5_images()[3])]
    )
    assert not flat.lungs.found and ood.NO_LUNGS_REASON in flat.ood.reasons
    assert film.lungs.found and ood.NO_LUNGS_REASON not in film.ood.reasons


def test_describe():
    assert guard_sentence(OODCheck()) == ""
    text = guard_sentence(OODCheck(["the upload is in colour"]))
    assert text.startswith("This may not be a frontal chest X-ray") and "in colour" in text


@pytest.mark.slow
def test_predictor_returns_pooled_features_of_the_same_forward(tiny_checkpoint):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    image = gray(96, 80)
    prediction = predictor.predict(image)
    with torch.inference_mode():
        batch = predictor.preprocess(image.pixels)[None]
        expected = predictor.model.forward_head(
            predictor.model.forward_features(batch), pre_logits=True
        )[0].numpy()
        logits = predictor.model(batch)[0].numpy()
    assert prediction.features.shape == (1920,)
    np.testing.assert_allclose(prediction.features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prediction.logits, logits, rtol=1e-4, atol=1e-5)
    assert prediction.ood.score is None  # the tiny checkpoint has no fitted statistics


def test_non_chest_images_cover_every_kind():
    kinds = [kind for kind, _ in non_chest.non_chest_images(per_kind=2)]
    for wanted in ("skimage.page", "sklearn.sample", "generated.ct-slice", "generated.hand-xray"):
        assert wanted in kinds
    assert len(kinds) == 23 + 2 + 5 * 2


@pytest.mark.slow
def test_fit_then_measure_cli(tiny_checkpoint, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    weights = (model / "model.safetensors").read_bytes()
    data = ["--model", str(model), "--data", str(LUNG5), "--max-per-class", "3"]
    ood_fit.main(["fit", *data, "--components", "8", "--batch-size", "8"])
    section = json.loads((model / "config.json").read_text())["lungcam"]["ood"]
    assert section["components"] == 8 and len(section["basis"]) == 8
    assert section["fitted_on"]["train_images"] == 15
    assert (model / "model.safetensors").read_bytes() == weights

    predictor = Predictor.load(str(model), "cpu")
    assert predictor.ood_stats is not None
    whole = section["whole_image"]
    assert whole["segmenter_sha256"] == predictor.segmenter.weights_sha256
    assert len(whole["basis"]) == 8 and predictor.whole_image_stats is not None
    check = predictor.predict(non_chest.as_upload(np.asarray(gray().pixels))).ood
    assert check.score > 0 and check.whole_image_score > 0

    out = tmp_path / "measure.json"
    ood_fit.main(["measure", *data[:4], "--max-per-class", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["chest_images"] == 5 and result["non_chest_images"] == 65
    assert sum(result["chest_images_by_source"].values()) == 5
    assert 0 <= result["chest_warn_rate"] <= 1 and 0 <= result["non_chest_warn_rate"] <= 1
    assert set(result["chest_warn_rate_by_source"]) == set(result["chest_images_by_source"])
    assert result["non_chest_no_lungs_rate"] > 0  # colour noise and flat pages have no lungs
    candidates = result["no_lungs_candidates"]
    assert list(candidates) == [str(t) for t in ood.NO_LUNGS_CANDIDATES]
    rates = [candidates[str(t)]["non_chest_warn_rate"] for t in ood.NO_LUNGS_CANDIDATES]
    assert rates == sorted(rates)  # a lower bar can only catch more
    chosen = candidates[str(ood.NO_LUNGS_SCORE)]
    assert chosen["non_chest_warn_rate"] == result["non_chest_warn_rate"]
    # colour photos are caught by saturation whatever the weights: a floor that must hold
    assert result["non_chest_warn_rate_by_source"]["generated.colour-noise"] == 1.0
    assert len(lung5_images("test")) == 5
    assert "chest_warn_rate" in capsys.readouterr().out


@pytest.mark.slow
def test_bundled_guard_warns_on_every_kind_of_non_chest_image():
    """CT slices and hand/knee radiographs pass a guard that sees only the crop (the segmenter
    draws "lungs" on them); seen whole, each generated kind and each package sample warns."""
    predictor = Predictor.load(str(BUNDLED_MODEL), "cpu")
    kinds, arrays = zip(*non_chest.non_chest_images(seed=1, per_kind=2), strict=True)
    predictions = predictor.predict_many([non_chest.as_upload(a) for a in arrays])
    missed = [kind for kind, p in zip(kinds, predictions, strict=True) if not p.ood.warn]
    assert missed == []
    hard = [p for k, p in zip(kinds, predictions, strict=True) if k.endswith(("ct-slice", "xray"))]
    assert all(p.ood.whole_image_score > 1 for p in hard)  # the whole-image signal caught them


def test_bundled_examples_are_not_flagged_as_non_chest():
    """The app's example gallery shows chest X-rays the bundled guard accepts."""
    examples = sorted((REPO / "assets" / "examples").glob("*.jpg"))
    predictor = Predictor.load(str(BUNDLED_MODEL), "cpu")
    flagged = [
        path.name
        for path, prediction in zip(
            examples, predictor.predict_many([load_image(p) for p in examples]), strict=True
        )
        if prediction.ood is None or prediction.ood.warn
    ]
    assert flagged == []


def test_the_app_refuses_statistics_of_another_segmenter(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """A checkpoint whose whole-image statistics belong to other segmenter weights stops the
    app at start with one line naming the refit (exit 2), not a traceback or a wrong guard."""
    import app

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    config = ModelConfig.load(model / "config.json")
    rng = np.random.default_rng(0)
    stats = fit_feature_stats(rng.normal(size=(40, 6)), np.arange(40) % 2, rng.normal(size=(20, 6)))
    whole = stats.to_dict() | {"segmenter_sha256": "0" * 64}
    config.ood = stats.to_dict() | {"whole_image": whole}
    config.save(model / "config.json")
    for name in ("LUNGCAM_DATA_DIR", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / "data"))
    with pytest.raises(SystemExit) as stop:
        app.main(["--model", str(model), "--device", "cpu", "--port", str(free_port())])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the guard's whole-image statistics") and "refit" in error
    assert len(error.splitlines()) == 1
