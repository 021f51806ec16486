"""The app's handlers without a server: one decode and one prediction per action."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import ui.analyze
from model.predictor import Predictor
from review.store import ReviewStore
from serving.model_process import LocalModel
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

    def load_image(*args):
        calls["decode"] += 1
        return decode(*args)

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
    confidences, drawn, shown, notes, case = handlers.analyze(path, 0.45, "jet")
    again = handlers.analyze(path, 0.45, "jet", case)
    assert shown == case.prediction.top_label  # a plain string, not a Gradio update dict
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
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    status, (saved, prediction) = reviews.save_review(
        path, top, "agree", None, 4, False, "ok", "dr-a", False, None, case, None
    )
    assert calls == {"predict": 1, "decode": 1}  # no second decode, no second prediction
    assert prediction is case.prediction and saved.reviewer == "dr-a" and "Saved" in status
    history = HistoryHandlers(store)
    assert len(history.history("All", "All", "")) == 1
    assert history.history("All", "disagree", "").empty
    assert Path(history.export_csv("All", "All", "dr-a")).is_file()


def test_saving_a_review_of_another_image_analyses_it_once(counted, predictor, store):
    predict, calls = counted
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
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


def predictor_image(index: int):
    from imaging.load import load_image

    return load_image(lung5_images()[index])


def colour_upload(tmp_path: Path) -> str:
    """A colour photo-like image: the guard warns on colour without fitted statistics."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    pixels[..., 0] = 250  # strongly red: saturated
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def test_a_non_chest_image_headlines_the_warning_not_a_class(counted, tmp_path):
    from gradio.components.label import LabelData

    from ui.common import HeadlineLabel

    handlers = AnalyzeHandlers(counted[0])
    label, _, _, notes, case = handlers.analyze(colour_upload(tmp_path), 0.45, "jet")
    assert case.prediction.ood.warn
    assert isinstance(label, LabelData) and label.label == "Not a chest X-ray?"
    assert label.label not in case.prediction.label_names
    assert label.confidences is None  # the class bars are folded away
    shown = AnalyzeHandlers.relabel(case, True)
    assert shown.label == "Not a chest X-ray?" and len(shown.confidences) == 5
    posted = HeadlineLabel(num_top_classes=5).postprocess(label)
    assert posted.label == "Not a chest X-ray?"
    assert "⚠️" in notes
    # the prediction set names classes too: folded away with the bars, in the notes as well
    assert ui.analyze.uncertainty(case) == ui.analyze.SET_HIDDEN and ui.analyze.SET_HIDDEN in notes
    assert ui.analyze.uncertainty(case, show_anyway=True) != ui.analyze.SET_HIDDEN
    chest, _, _, chest_notes, chest_case = handlers.analyze(str(lung5_images()[0]), 0.45, "jet")
    assert isinstance(chest, dict) and set(chest) == set(case.prediction.label_names)
    assert ui.analyze.uncertainty(chest_case) != ui.analyze.SET_HIDDEN
    assert ui.analyze.SET_HIDDEN not in chest_notes


def test_each_analysis_starts_a_new_case_with_an_empty_form(counted, predictor, store):
    predict, _ = counted
    handlers = AnalyzeHandlers(predict)
    first = handlers.analyze(str(lung5_images()[0]), 0.45, "jet")[4]
    again = handlers.analyze(str(lung5_images()[0]), 0.45, "jet", first)[4]
    second = handlers.analyze(str(lung5_images()[1]), 0.45, "jet", first)[4]
    assert again.review_id == first.review_id != second.review_id
    form = ReviewHandlers.new_case(second, first.review_id)
    agreement, correct, usefulness, wrong, note, keep, review_id, status, pdf, last, owner = form
    assert (agreement, correct, usefulness, wrong) == (None, None, None, False)
    assert (note, keep) == ("", False)
    assert review_id == owner == second.review_id and status == "" and pdf is None and last is None
    unchanged = ReviewHandlers.new_case(again, first.review_id)  # Analyze pressed again
    assert all(value == gr.skip() for value in unchanged)


def test_saving_twice_stores_one_review_and_no_rating_until_given(counted, predictor, store):
    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet")[4]
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    args = (path, top, "agree", None, None, False, "ok", "dr-a", False, "", case, None)
    first, (saved, _) = reviews.save_review(*args)
    second, _ = reviews.save_review(*args)
    assert first.startswith("Saved") and second.startswith("Already saved")
    assert saved.review_id == case.review_id
    assert len(store.list()) == 1
    assert store.list()[0].heatmap_usefulness is None  # not rated: nothing stored as if chosen


def test_validation_names_every_missing_field_at_once(counted, predictor, store):
    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet")[4]
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    with pytest.raises(gr.Error) as raised:
        reviews.save_review(path, None, None, None, None, False, "", "", False, "", case, None)
    message = str(raised.value)
    assert "choose agree/disagree" in message and "give a reviewer name" in message


def test_explain_defaults_follow_the_prediction(predictor):
    case = Case("x.png", predictor.predict(predictor_image(0)))
    probabilities = case.prediction.confidences()
    ranked = sorted(probabilities, key=lambda k: -probabilities[k])
    assert ExplainHandlers.defaults(case) == (ranked[0], ranked[0], ranked[1])


@pytest.mark.slow
def test_score_cam_requests_go_to_their_own_queue_only(predictor, tmp_path):
    handlers = ExplainHandlers(LocalModel(predictor), tmp_path)
    case = Case("x.png", predictor.predict(predictor_image(0)))
    layer = "features.denseblock1"  # 256 channels: the quickest Score-CAM
    look = (0.45, "jet", False)
    assert handlers.explain_one(case, "Score-CAM", "Normal", layer, *look) == (
        gr.skip(),
        gr.skip(),
    )
    assert handlers.explain_one(case, "Grad-CAM", "Normal", layer, *look, slow=True) == (
        gr.skip(),
        gr.skip(),
    )
    drawn, _ = handlers.explain_one(case, "Score-CAM", "Normal", layer, *look, slow=True)
    assert drawn.shape[:2] == case.prediction.image.pixels.shape
    assert layer in handlers.score_cam_runs  # the next estimate is this run's time
    assert "last run" in handlers.method_hint("Score-CAM", layer)


def test_history_has_readable_titles_fewer_columns_and_reopens_a_case(counted, predictor, store):
    from ui.history import SHORT_COLUMNS, TITLES

    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet")[4]
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    reviews.save_review(path, top, "agree", None, 4, False, "n", "dr-a", True, "", case, None)
    history = HistoryHandlers(store)
    short = history.history("All", "All", "")
    assert list(short.columns) == [TITLES[c] for c in SHORT_COLUMNS] and len(short) == 1
    assert "Time (UTC)" in short.columns and "created_at_utc" not in short.columns
    assert len(history.history("All", "All", "", True).columns) == len(TITLES) == 18
    pdf, image = history.reopen(case.review_id)
    assert Path(pdf).read_bytes().startswith(b"%PDF") and Path(image).is_file()
    with pytest.raises(gr.Error, match="No review"):
        history.reopen("nope")


def test_reviews_and_exports_refuse_when_switched_off(counted, predictor, store):
    predict, _ = counted
    reason = "Reviews, History and exports are switched off"
    reviews = ReviewHandlers(predict, lambda: predictor.config, store, reason)
    with pytest.raises(gr.Error, match="switched off"):
        reviews.save_review(None, None, "agree", None, 3, False, "", "x", False, "", None, None)
    history = HistoryHandlers(store, disabled=reason)
    with pytest.raises(gr.Error, match="switched off"):
        history.export_csv("All", "All", "")
    assert history.history("All", "All", "").empty


def test_overlay_is_display_size_and_full_resolution_is_a_png_away(predictor, tmp_path):
    """A 2048 × 1536 upload: overlay and original at most 1024 px a side (aspect kept), the
    same picture as the full-resolution overlay scaled down; that one is a PNG at 2048 × 1536."""
    from PIL import Image

    from ui.common import DISPLAY_SIDE, draw

    film = Image.open(lung5_images()[0]).convert("L").resize((2048, 1536))
    path = tmp_path / "large.png"
    film.save(path)
    handlers = AnalyzeHandlers(predictor.predict, tmp_path / "exports")
    _, drawn, shown, _, case = handlers.analyze(str(path), 0.45, "jet")
    assert drawn.shape == (DISPLAY_SIDE * 3 // 4, DISPLAY_SIDE, 3)
    assert AnalyzeHandlers.original(case).shape == (DISPLAY_SIDE * 3 // 4, DISPLAY_SIDE)
    full_path = handlers.full_resolution(case, shown, 0.45, "jet", True)
    assert Path(full_path).parent.parent == tmp_path / "exports"
    full = np.asarray(Image.open(full_path).convert("RGB"))
    assert full.shape == (1536, 2048, 3)
    np.testing.assert_array_equal(full, draw(case.prediction, shown, 0.45, "jet", True, None))
    small = np.asarray(Image.fromarray(full).resize((DISPLAY_SIDE, DISPLAY_SIDE * 3 // 4)))
    outlined = draw(case.prediction, shown, 0.45, "jet", True)
    assert np.abs(small.astype(int) - outlined.astype(int)).mean() < 8  # same picture, smaller
    with pytest.raises(gr.Error, match="Analyse"):
        handlers.full_resolution(None, shown, 0.45, "jet")


def test_a_failed_analysis_clears_every_output_of_the_last_case(predictor, store):
    """A good film, then a broken file: nothing of the film stays on screen (the headline,
    overlays, notes, lung share, Explain views and the review form with its PDF), and each
    clearing handler returns exactly as many values as it has outputs."""
    import app

    demo = app.build_demo(LocalModel(predictor), store=store)
    fns = list(demo.fns.values())
    analyses = [f for f in fns if getattr(f.fn, "__name__", "") == "analyze"]
    assert len(analyses) == 3  # the Analyze button, an upload, an example clicked
    for analysis in analyses:
        after = [f for f in fns if f.trigger_after == analysis._id]
        written = {block._id for f in after if not f.trigger_only_on_failure for block in f.outputs}
        written |= {block._id for block in analysis.outputs}
        cleared = set()
        for failure in (f for f in after if f.trigger_only_on_failure):
            values = failure.fn(*[None] * len(failure.inputs))
            assert len(values) == len(failure.outputs)
            assert all(value is None for value in values)
            cleared |= {block._id for block in failure.outputs}
        assert written <= cleared


def test_a_broken_upload_after_a_good_one_names_the_problem_not_the_file(counted, tmp_path):
    handlers = AnalyzeHandlers(counted[0])
    case = handlers.analyze(str(lung5_images()[0]), 0.45, "jet")[4]
    broken = tmp_path / "Doe_Jane_MRN-7731.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(gr.Error) as err:
        handlers.analyze(str(broken), 0.45, "jet", case)
    assert str(err.value.message).startswith("upload.png: ")
    assert "Doe" not in err.value.message and "MRN" not in err.value.message
