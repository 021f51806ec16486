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
    view = handlers.analyze(path, 0.45, "jet")
    case, (film, drawn) = view.case, view.viewer
    again = handlers.analyze(path, 0.45, "jet", case)
    assert view.shown_class == case.prediction.top_label  # a plain string, not an update dict
    assert calls == {"predict": 1, "decode": 1}
    assert again.label == view.label and np.array_equal(again.viewer[1], drawn)
    assert again.case is case and case.of(path)
    assert drawn.shape == (*case.prediction.image.pixels.shape, 3)
    np.testing.assert_array_equal(film, case.prediction.image.pixels)  # before: the film
    assert "px" in view.notes and "px" not in view.set_line
    assert view.set_line.count("set") == 1 and "set" not in view.notes  # the set, once
    assert view.lung_line == AnalyzeHandlers.lung_line(case, view.shown_class)
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
    case = handlers.analyze(path, 0.45, "jet").case
    names = case.prediction.label_names
    assert AnalyzeHandlers.redraw(None, names[0], 0.45, "jet") is None
    film, redrawn = AnalyzeHandlers.redraw(case, names[1], 0.8, "viridis")
    assert redrawn.shape == (*case.prediction.image.pixels.shape, 3)
    dark, windowed = AnalyzeHandlers.redraw(case, names[1], 0.8, "viridis", False, 200, 50)
    assert dark.mean() < film.mean() and windowed.mean() < redrawn.mean()  # a brighter level
    with pytest.raises(ValueError, match="choose one of"):
        AnalyzeHandlers.redraw(case, "Nope", 0.45, "jet")
    assert calls == {"predict": 1, "decode": 1}


def test_saving_a_review_reuses_the_analysed_case(counted, predictor, store):
    predict, calls = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet").case
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    status, (saved, prediction) = reviews.save_review(
        path, top, "agree", None, 4, False, "ok", "dr-a", False, None, "", False, case, None
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
        other, top, "agree", None, 3, False, "", "dr-b", False, None, "", False, first, None
    )
    assert calls == {"predict": 1, "decode": 1}
    assert prediction is not first.prediction
    with pytest.raises(gr.Error, match="Save the review first"):
        reviews.make_report(None, 0.45, "jet")


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
    view = handlers.analyze(colour_upload(tmp_path), 0.45, "jet")
    label, notes, case = view.label, view.notes, view.case
    assert case.prediction.ood.warn
    assert isinstance(label, LabelData) and label.label == "Not a chest X-ray?"
    assert label.label not in case.prediction.label_names
    assert label.confidences is None  # the class bars are folded away
    shown, set_line = AnalyzeHandlers.relabel(case, True)
    assert set_line != ui.analyze.SET_HIDDEN
    assert shown.label == "Not a chest X-ray?" and len(shown.confidences) == 5
    posted = HeadlineLabel(num_top_classes=5).postprocess(label)
    assert posted.label == "Not a chest X-ray?"
    assert "⚠️" in notes
    # the prediction set names classes too: folded away with the bars
    assert ui.analyze.uncertainty(case) == ui.analyze.SET_HIDDEN == view.set_line
    assert ui.analyze.uncertainty(case, show_anyway=True) != ui.analyze.SET_HIDDEN
    chest = handlers.analyze(str(lung5_images()[0]), 0.45, "jet")
    assert isinstance(chest.label, dict) and set(chest.label) == set(case.prediction.label_names)
    assert chest.set_line == ui.analyze.uncertainty(chest.case) != ui.analyze.SET_HIDDEN


def test_each_analysis_starts_a_new_case_with_an_empty_form(counted, predictor, store):
    predict, _ = counted
    handlers = AnalyzeHandlers(predict)
    first = handlers.analyze(str(lung5_images()[0]), 0.45, "jet").case
    again = handlers.analyze(str(lung5_images()[0]), 0.45, "jet", first).case
    second = handlers.analyze(str(lung5_images()[1]), 0.45, "jet", first).case
    assert again.review_id == first.review_id != second.review_id
    form = ReviewHandlers.new_case(second, first.review_id)
    agreement, correct, usefulness, wrong, note, keep, review_id, status, pdf, last, owner = form[
        :11
    ]
    assert form[11:] == ("", False)  # no marks, no "no focal finding"
    assert (agreement, correct, usefulness, wrong) == (None, None, None, False)
    assert (note, keep) == ("", False)
    assert review_id == owner == second.review_id and status == "" and last is None
    assert pdf.value is None and pdf.visible is False  # no PDF of the last case, no empty box
    unchanged = ReviewHandlers.new_case(again, first.review_id)  # Analyze pressed again
    assert all(value == gr.skip() for value in unchanged)


def test_saving_twice_stores_one_review_and_no_rating_until_given(counted, predictor, store):
    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet").case
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    args = (path, top, "agree", None, None, False, "ok", "dr-a", False, "", "", False, case, None)
    first, (saved, _) = reviews.save_review(*args)
    second, _ = reviews.save_review(*args)
    assert first.startswith("Saved") and second.startswith("Already saved")
    assert saved.review_id == case.review_id
    assert len(store.list()) == 1
    assert store.list()[0].heatmap_usefulness is None  # not rated: nothing stored as if chosen


def test_validation_names_every_missing_field_at_once(counted, predictor, store):
    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet").case
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    with pytest.raises(gr.Error) as raised:
        reviews.save_review(
            path, None, None, None, None, False, "", "", False, "", "", False, case, None
        )
    message = str(raised.value)
    assert "choose agree/disagree" in message and "give a reviewer name" in message


def test_history_has_readable_titles_fewer_columns_and_reopens_a_case(counted, predictor, store):
    from ui.history import SHORT_COLUMNS, TITLES

    predict, _ = counted
    path = str(lung5_images()[2])
    case = AnalyzeHandlers(predict).analyze(path, 0.45, "jet").case
    reviews = ReviewHandlers(predict, lambda: predictor.config, store)
    top = case.prediction.top_label
    reviews.save_review(
        path, top, "agree", None, 4, False, "n", "dr-a", True, "", "", False, case, None
    )
    history = HistoryHandlers(store)
    short = history.history("All", "All", "")
    assert list(short.columns) == [TITLES[c] for c in SHORT_COLUMNS] and len(short) == 1
    assert "Time (UTC)" in short.columns and "created_at_utc" not in short.columns
    assert len(history.history("All", "All", "", True).columns) == len(TITLES) == 25
    pdf, image, marks, no_finding = history.reopen(case.review_id)
    assert (marks, no_finding) == ("", False)
    assert Path(pdf).read_bytes().startswith(b"%PDF") and Path(image).is_file()
    with pytest.raises(gr.Error, match="No review"):
        history.reopen("nope")


def test_reviews_and_exports_refuse_when_switched_off(counted, predictor, store):
    predict, _ = counted
    reason = "Reviews, History and exports are switched off"
    reviews = ReviewHandlers(predict, lambda: predictor.config, store, reason)
    with pytest.raises(gr.Error, match="switched off"):
        reviews.save_review(
            None, None, "agree", None, 3, False, "", "x", False, "", "", False, None, None
        )
    history = HistoryHandlers(store, disabled=reason)
    with pytest.raises(gr.Error, match="switched off"):
        history.export_csv("All", "All", "")
    assert history.history("All", "All", "").empty


def test_a_failed_analysis_clears_every_output_of_the_last_case(predictor, store):
    """A good film, then a broken file: nothing of the film stays on screen (the headline,
    viewer, marks, notes, lung share, Explain views and the review form with its PDF). One
    handler returns every output of a case; each clearing handler returns exactly as many
    values as it has outputs."""
    import app

    demo = app.build_demo(LocalModel(predictor), store=store)
    fns = list(demo.fns.values())
    analyses = [f for f in fns if getattr(f.fn, "__name__", "") == "analyze"]
    assert len(analyses) == 2  # the Analyze button and an upload; an example clicked
    assert len(analyses[0].targets) == 2
    shown = analyses[0].fn(str(lung5_images()[0]), 0.45, "jet", None, False, False, 128, 256)
    assert len(shown) == len(analyses[0].outputs)
    (fresh,) = [f for f in fns if f.trigger_after == analyses[0]._id and f.trigger_only_on_success]
    assert len(fresh.fn(shown.case, None, 128, 256)) == len(fresh.outputs)  # the rest
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
    case = handlers.analyze(str(lung5_images()[0]), 0.45, "jet").case
    broken = tmp_path / "Doe_Jane_MRN-7731.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(gr.Error) as err:
        handlers.analyze(str(broken), 0.45, "jet", case)
    assert str(err.value.message).startswith("upload.png: ")
    assert "Doe" not in err.value.message and "MRN" not in err.value.message
