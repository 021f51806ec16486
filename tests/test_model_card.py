"""The model card speaks for the bundled weights: same version, same measured test figures."""

import json

from tests.conftest import BUNDLED_MODEL, REPO

CARD = (REPO / "assets" / "MODEL_CARD.md").read_text()
METRICS = json.loads((REPO / "docs" / "evaluation" / "metrics.json").read_text())


def test_card_names_the_bundled_weights_and_says_not_for_diagnosis():
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())["lungcam"]
    assert config["version"] in CARD and config["weights_sha256"][:12] in CARD
    assert config["version"] in METRICS["model"]  # the evaluation is of these weights
    assert "not for diagnosis" in CARD.lower()


def test_card_figures_are_those_of_the_evaluation():
    for key in ("accuracy", "macro_f1", "macro_auroc", "bacterial_vs_viral_auroc"):
        assert f"{METRICS[key]:.3f}" in CARD, key
    for name, scores in METRICS["calibrated"]["per_class"].items():
        row = f"| {name} | {scores['support']} | {scores['sensitivity']:.3f} |"
        assert row in CARD, name
    for calibration in ("uncalibrated", "calibrated"):
        assert f"{METRICS[calibration]['ece']:.3f}" in CARD
