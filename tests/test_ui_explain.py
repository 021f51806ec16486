"""The Explain tab's handlers on the analysed case: bad choices, defaults, Score-CAM's slot."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from imaging.load import load_image
from model.predictor import Predictor
from serving.model_process import LocalModel
from tests.conftest import lung5_images
from ui.common import Case
from ui.explain import ExplainHandlers


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(str(tiny_checkpoint), "cpu")


def predictor_image(index: int):
    return load_image(lung5_images()[index])


def test_explain_needs_an_analysed_case_and_names_bad_choices(predictor, tmp_path):
    handlers = ExplainHandlers(LocalModel(predictor), tmp_path)
    with pytest.raises(gr.Error, match="Analyze an image first"):
        handlers.faithfulness(None, "Grad-CAM", "Normal", predictor.config.target_layer)
    case = Case("x.png", predictor.predict(predictor_image(0)))
    with pytest.raises(gr.Error, match="unknown class 'Nope'"):
        handlers.contrasted(case, "Nope", "Normal", 0.45, "jet", False)
    drawn, pngs = handlers.explain_one(
        case, "Grad-CAM", "Normal", predictor.config.target_layer, 0.45, "jet", True
    )
    assert drawn.shape == (*case.prediction.image.pixels.shape, 3) and len(pngs) == 2


def test_explain_defaults_follow_the_prediction(predictor):
    case = Case("x.png", predictor.predict(predictor_image(0)))
    probabilities = case.prediction.confidences()
    ranked = sorted(probabilities, key=lambda k: -probabilities[k])
    assert ExplainHandlers.defaults(case) == (ranked[0], ranked[0], ranked[1])


@pytest.mark.slow
def test_score_cam_runs_one_at_a_time_and_never_holds_up_other_methods(predictor, tmp_path):
    handlers = ExplainHandlers(LocalModel(predictor), tmp_path)
    case = Case("x.png", predictor.predict(predictor_image(0)))
    layer = "features.denseblock1"  # 256 channels: the quickest Score-CAM
    look = (0.45, "jet", False)
    with handlers.score_cam:  # another request's Score-CAM is running
        with pytest.raises(gr.Error, match="one run at a time"):
            handlers.explain_one(case, "Score-CAM", "Normal", layer, *look)
        with pytest.raises(gr.Error, match="one run at a time"):
            handlers.compare(case, ["Grad-CAM", "Score-CAM"], "Normal", layer, *look)
        drawn, _ = handlers.explain_one(case, "Grad-CAM", "Normal", layer, *look)
        assert layer not in handlers.score_cam_runs
    drawn, _ = handlers.explain_one(case, "Score-CAM", "Normal", layer, *look)
    assert drawn.shape[:2] == case.prediction.image.pixels.shape
    assert layer in handlers.score_cam_runs  # the next estimate is this run's time
    assert "last run" in handlers.method_hint("Score-CAM", layer)
