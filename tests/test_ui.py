"""The app's handlers without a server: one decode and one prediction per action."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import ui.analyze
from model.predictor import Predictor
from review.store import ReviewStore
from tests.conftest import lung5_images
from ui.analyze import AnalyzeHandlers
from ui.common import Case
from ui.explain import ExplainHandlers
from ui.history import HistoryHandlers
from ui.review import ReviewHandlers


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(str(tiny_checkpoint), "cpu")


@pytest.fixture
def counted(predictor, monkeypatch):
    """The predictor's ``predict`` and the handlers' ``load_image``, each with a call count."""
    calls = {"predict": 0, "decode": 0}
    decode = ui.analyze.load_image

    def predict(image):
        calls["predict"] += 1
        return predictor.predict(image)

    def load_image(path):
        calls["decode"] += 1
        return decode(path)

    monkeypatch.setattr(ui.analyze, "load_image", load_image)
    return predict, calls


@pytest.fixture
def store(tmp_path, monkeypatch) -> ReviewStore:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return ReviewStore.open(tmp_path)


def test_upload_then_analyze_decodes_and_predicts_once(counted):
    predict, calls = counted
    handlers = AnalyzeHandlers(predict)
    path = str(lung5_images()[0])
    confidences, drawn, _, notes, case = handlers.analyze(path, 0.45, "jet")
    again = handlers.analyze(path, 0.45, "jet", case)
    assert calls == {"predict": 1, "decode": 1}
    assert again[0] == confidences and np.array_equal(again[1], drawn)
    assert again[4] is case and case.of(path)
    assert drawn.shape == (*case.prediction.image.pixels.shape, 3)
    assert "px" in notes
    handlers.analyze(str(lung5_images()[1]), 0.45, "jet", case)  # another file: a new analysis
    assert calls == {"predict": 2, "decode": 2}


def test_analyze_without_upload_or_with_a_bad_file_says_why(counted, tmp_path):
    handlers = AnalyzeHandlers(counted[0])
    with pytest.raises(gr.Error, match="Upload a chest X-ray"):
        handlers.analyze(None, 0.45, "jet")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty"):
        handlers.analyze(str(empty), 0.45, "jet")


def test_redraw_uses_the_cached_case_only(counted):
    predict, calls = counted
    handlers = AnalyzeHandlers(predict)
    path = str(lung5_images()[0])
    case = handlers.analyze(path, 0.45, "jet")[4]
    names = case.prediction.label_names
    assert AnalyzeHandlers.redraw(None, names[0], 0.45, "jet") is None
    redrawn = AnalyzeHandlers.redraw(case, names[1], 0.8, "viridis")
    assert redrawn.shape == (*case.prediction.image.pixels.shape, 3)
    with pytest.raises(ValueError, match="choose one of"):
        AnalyzeHandlers.redraw(case, "Nope", 0.45, "jet")
    assert calls == {"predict": 1, "decode": 1}


def test_saving_a_review_reuses_the_analysed_case(counted, predictor, store):
    predict, calls = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet")[4]
    reviews = ReviewHandlers(predict, predictor.config, store)
    top = case.prediction.top_label
    status, (saved, prediction) = reviews.save_review(
        path, top, "agree", None, 4, False, "ok", "dr-a", False, None, case, None
    )
    assert calls == {"predict": 1, "decode": 1}  # no second decode, no second prediction
    assert prediction is case.prediction and saved.reviewer == "dr-a" and "Saved" in status
    history = HistoryHandlers(store)
    assert len(history.history("All", "All", "")) == 1
    assert history.history("All", "disagree", "") == []
    assert Path(history.export_csv("All", "All", "dr-a")).is_file()


def test_saving_a_review_of_another_image_analyses_it_once(counted, predictor, store):
    predict, calls = counted
    reviews = ReviewHandlers(predict, predictor.config, store)
    first = Case(str(lung5_images()[0]), predictor.predict(predictor_image(0)))
    other = str(lung5_images()[3])
    top = predictor.config.label_names[0]
    _, (_, prediction) = reviews.save_review(
        other, top, "agree", None, 3, False, "", "dr-b", False, None, first, None
    )
    assert calls == {"predict": 1, "decode": 1}
    assert prediction is not first.prediction
    with pytest.raises(gr.Error, match="Save the review first"):
        reviews.make_report(None, 0.45, "jet")


def test_explain_needs_an_analysed_case_and_names_bad_choices(predictor, tmp_path):
    handlers = ExplainHandlers(predictor, tmp_path)
    with pytest.raises(gr.Error, match="Analyze an image first"):
        handlers.faithfulness(None, "Grad-CAM", "Normal", predictor.config.target_layer)
    case = Case("x.png", predictor.predict(predictor_image(0)))
    with pytest.raises(gr.Error, match="unknown class 'Nope'"):
        handlers.contrasted(case, "Nope", "Normal", 0.45, "jet", False)
    drawn, pngs = handlers.explain_one(
        case, "Grad-CAM", "Normal", predictor.config.target_layer, 0.45, "jet", True
    )
    assert drawn.shape == (*case.prediction.image.pixels.shape, 3) and len(pngs) == 2


def predictor_image(index: int):
    from imaging.load import load_image

    return load_image(lung5_images()[index])
