"""Reviewers' marks: each bad mark refused with a clear message and nothing stored, the
heatmaps scored against good ones (explain.localization's measures), the save's status line,
the stored scores, reopening a case with its marks, and History's hit table."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from explain import localization as loc
from imaging.image import LoadedImage
from model.config import ModelConfig
from model.prediction import Prediction
from review.agreement import HIT_COLUMNS
from review.marks import (
    MAX_MARKS,
    MarkScores,
    marks_text,
    parse_marks,
    peak_inside,
    peak_line,
    score_marks,
)
from review.store import pixels_sha256
from tests.review_drafts import LABELS
from tests.test_review_report import store  # noqa: F401 (a fresh SQLite store)
from ui.common import Case
from ui.history import HistoryHandlers
from ui.review import ReviewHandlers

WIDTH, HEIGHT = 160, 120  # not square: a box with x and y swapped lies elsewhere
IN_MARK = "The heatmap's peak lies in your mark."
OUTSIDE = "The heatmap's peak lies outside your marks."


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("  ", []),
        ("[]", []),
        ("[[10, 20, 30.5, 40]]", [(10.0, 20.0, 30.5, 40.0)]),
        ([[0, 0, WIDTH, HEIGHT], (1, 2, 3, 4)], [(0, 0, WIDTH, HEIGHT), (1, 2, 3, 4)]),
        ([[0, 0, 1, 1]] * MAX_MARKS, [(0, 0, 1, 1)] * MAX_MARKS),
    ],
)
def test_good_marks_are_read_as_boxes_in_film_pixels(value, expected):
    assert parse_marks(value, WIDTH, HEIGHT) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[[10, 20, 30, 40]", r"marks must be a JSON list .* is not JSON"),
        ("box at 10, 20", r"is not JSON"),
        ('{"x0": 1}', r"marks must be a JSON list of \[x0, y0, x1, y1\] boxes.*got \{'x0': 1\}"),
        ("5", r"marks must be a JSON list"),
        ("[[10, 20, 30]]", r"mark 1 must be 4 numbers \[x0, y0, x1, y1\]; got \[10, 20, 30\]"),
        ('[[1, 2, 3, 4], ["a", 2, 3, 4]]', r"mark 2 must be 4 numbers"),
        ("[[true, 2, 30, 40]]", r"mark 1 must be 4 numbers"),
        ("[[1, 2, 3, 4, 5]]", r"mark 1 must be 4 numbers"),
        ("[[NaN, 2, 30, 40]]", r"mark 1 .* not a finite number"),
        ("[[30, 20, 10, 40]]", r"mark 1 \[30, 20, 10, 40\] is under one pixel wide or high"),
        ("[[10, 20, 10, 40]]", r"under one pixel wide or high"),
        ("[[10, 40, 30, 20]]", r"under one pixel wide or high"),
        ("[[10, 20, 10.5, 40]]", r"under one pixel wide or high"),
        ("[[-1, 20, 30, 40]]", r"mark 1 \[-1, 20, 30, 40\] lies outside the 160×120 px film"),
        ("[[10, 20, 161, 40]]", r"lies outside the 160×120 px film"),
        ("[[10, 20, 30, 121]]", r"lies outside the 160×120 px film"),
        ("[[0, 0, 120, 160]]", r"lies outside the 160×120 px film"),  # x and y swapped
        (json.dumps([[0, 0, 1, 1]] * (MAX_MARKS + 1)), rf"21 marks sent; at most {MAX_MARKS}"),
    ],
)
def test_each_bad_mark_gets_a_message_saying_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        parse_marks(value, WIDTH, HEIGHT)


def test_marks_and_no_focal_finding_contradict():
    with pytest.raises(ValueError, match="sent with 'no focal finding'"):
        parse_marks("[[1, 2, 30, 40]]", WIDTH, HEIGHT, no_finding=True)
    assert parse_marks("", WIDTH, HEIGHT, no_finding=True) == []


def test_marks_text_reads_back_as_the_same_boxes():
    boxes = [(10.0, 20.0, 30.5, 40.0), (0.0, 0.0, 160.0, 120.0)]
    assert marks_text(boxes) == "[[10, 20, 30.5, 40], [0, 0, 160, 120]]"
    assert parse_marks(marks_text(boxes), WIDTH, HEIGHT) == boxes
    assert marks_text(None) == marks_text([]) == ""


def peaked_prediction(top: tuple[int, int] = (1, 6), other: tuple[int, int] = (4, 1)) -> Prediction:
    """Tuberculosis on top, its raw map peaked at cell ``top`` (row, col) of a 6 × 8 grid;
    COVID-19's peaked at ``other``, far from it; the rest flat."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    cams = np.zeros((len(LABELS), 6, 8), np.float32)
    cams[LABELS.index("Tuberculosis"), top[0], top[1]] = 1.0
    cams[LABELS.index("COVID-19"), other[0], other[1]] = 1.0
    probabilities = np.array([0.05, 0.15, 0.1, 0.6, 0.1], np.float32)
    image = LoadedImage(pixels, "PNG", "L")
    return Prediction(LABELS, probabilities, np.log(probabilities), cams, image)


def around_peak(prediction: Prediction, class_name: str, half: int = 12) -> tuple:
    """A box of ``2 × half`` px around the maximum of ``class_name``'s map over the film."""
    heat = prediction.heatmap(prediction.class_index(class_name))
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (int(col) - half, int(row) - half, int(col) + half, int(row) + half)


CORNER = (WIDTH - 20.0, HEIGHT - 20.0, WIDTH, HEIGHT)  # far from both peaks


def test_a_mark_around_the_peak_hits_and_one_in_a_corner_does_not():
    prediction = peaked_prediction()
    box = around_peak(prediction, "Tuberculosis")
    hit = score_marks(prediction, "Tuberculosis", [box])
    assert (hit.hit_shown, hit.hit_top) == (1.0, 1.0)  # shown = top here
    assert hit.energy_shown == hit.energy_top > hit.energy_flat
    mask = loc.box_mask([box], (HEIGHT, WIDTH))
    assert hit.energy_flat == pytest.approx(mask.mean())  # the box's share of the film
    tb = prediction.heatmap(prediction.class_index("Tuberculosis"))
    assert hit.energy_shown == pytest.approx(loc.energy_share(tb, mask))
    miss = score_marks(prediction, "Tuberculosis", [CORNER])
    assert (miss.hit_shown, miss.hit_top) == (0.0, 0.0)
    assert miss.energy_shown < miss.energy_flat
    assert peak_line(hit) == IN_MARK and peak_line(miss) == OUTSIDE and peak_line(None) == ""


def test_the_shown_and_the_top_class_are_scored_each_on_its_own_map():
    prediction = peaked_prediction()
    on_covid = score_marks(prediction, "COVID-19", [around_peak(prediction, "COVID-19")])
    assert (on_covid.hit_shown, on_covid.hit_top) == (1.0, 0.0)
    assert on_covid.energy_shown > on_covid.energy_flat > on_covid.energy_top
    both = [around_peak(prediction, "COVID-19"), around_peak(prediction, "Tuberculosis")]
    assert score_marks(prediction, "COVID-19", both).hit_top == 1.0  # any mark counts


def test_a_flat_map_ties_everywhere_and_its_peak_is_not_in_a_small_mark():
    prediction = peaked_prediction()
    prediction.raw_cams[:] = 0.0  # every pixel ties for the maximum
    scores = score_marks(prediction, "Tuberculosis", [CORNER])
    assert scores.hit_shown == pytest.approx(scores.energy_flat)  # the marks' area share
    assert not peak_inside(scores.hit_shown)


@pytest.fixture
def handlers(store) -> ReviewHandlers:  # noqa: F811
    return ReviewHandlers(lambda image: peaked_prediction(), ModelConfig, store)


def save(handlers: ReviewHandlers, case: Case | None, marks: str, no_finding: bool = False):
    """``/review`` as the screen sends it: the case on screen, its top class's map shown."""
    return handlers.save_review(
        None, "Tuberculosis", "agree", None, 4, False, "", "dr-a", True, None, marks,
        no_finding, case,
    )  # fmt: skip


def test_a_save_scores_the_marks_says_where_the_peak_lies_and_stores_it(handlers):
    inside = Case("a.png", peaked_prediction())
    box = around_peak(inside.prediction, "Tuberculosis")
    status, (saved, _) = save(handlers, inside, json.dumps([box]))
    assert status.startswith("Saved: review") and status.endswith(IN_MARK)
    stored = handlers.store.get(saved.review_id)
    assert stored.marks == [list(box)] and not stored.no_finding
    expected = score_marks(inside.prediction, "Tuberculosis", [box])
    got = MarkScores(
        stored.hit_shown, stored.hit_top, stored.energy_shown, stored.energy_top, stored.energy_flat
    )
    assert got == pytest.approx(expected)

    outside = Case("b.png", peaked_prediction())
    status, (saved, _) = save(handlers, outside, json.dumps([CORNER]))
    assert status.endswith(OUTSIDE) and handlers.store.get(saved.review_id).hit_shown == 0.0
    status, (saved, _) = save(handlers, Case("c.png", peaked_prediction()), "")
    assert IN_MARK not in status and OUTSIDE not in status
    assert handlers.store.get(saved.review_id).marks is None and saved.hit_shown is None


def test_no_focal_finding_is_stored_without_scores(handlers):
    status, (saved, _) = save(handlers, Case("a.png", peaked_prediction()), "[]", True)
    stored = handlers.store.get(saved.review_id)
    assert stored.no_finding and stored.marks is None and stored.hit_shown is None
    assert "peak" not in status


@pytest.mark.parametrize(
    ("marks", "no_finding", "message"),
    [
        ("[[10, 20, 30]]", False, "mark 1 must be 4 numbers"),
        ("[[30, 20, 10, 40]]", False, "under one pixel wide or high"),
        ("[[0, 0, 200, 40]]", False, "outside the 160×120 px film"),
        (json.dumps([[0, 0, 5, 5]] * (MAX_MARKS + 1)), False, "at most 20"),
        ("[[1, 2, 30, 40]]", True, "with 'no focal finding'"),
        ("not json", False, "is not JSON"),
    ],
)
def test_a_bad_mark_is_a_clear_error_and_nothing_is_stored(handlers, marks, no_finding, message):
    with pytest.raises(gr.Error, match=message):
        save(handlers, Case("a.png", peaked_prediction()), marks, no_finding)
    assert handlers.store.list() == [] and not (handlers.store.data_dir / "images").exists()


@pytest.mark.parametrize(("marks", "no_finding"), [("[[1, 2, 30, 40]]", False), ("", True)])
def test_a_mark_on_a_case_never_analysed_says_so(handlers, marks, no_finding):
    with pytest.raises(gr.Error, match="Marks need the analysed film"):
        save(handlers, None, marks, no_finding)
    with pytest.raises(gr.Error, match="Upload a chest X-ray"):  # unmarked: the usual message
        save(handlers, None, "")
    assert handlers.store.list() == []


def test_reopening_returns_the_marks_and_draws_them_into_the_pdf(handlers):
    case = Case("a.png", peaked_prediction())
    box = around_peak(case.prediction, "Tuberculosis")
    _, (saved, _) = save(handlers, case, json.dumps([box]))
    _, (unmarked, _) = save(handlers, Case("b.png", peaked_prediction()), "", True)
    history = HistoryHandlers(handlers.store, LABELS)
    pdf, image, marks, no_finding = history.reopen(saved.review_id)
    assert parse_marks(marks, WIDTH, HEIGHT) == [box] and no_finding is False
    assert Path(pdf).read_bytes().startswith(b"%PDF") and Path(image).is_file()
    assert history.reopen(unmarked.review_id)[2:] == ("", True)
    assert pixels_sha256(case.prediction.image.pixels) == saved.image_sha256


def test_a_new_case_clears_the_marks(handlers):
    first, second = Case("a.png", peaked_prediction()), Case("b.png", peaked_prediction())
    form = ReviewHandlers.new_case(second, first.review_id)
    assert form[-2:] == ("", False) and form[-3] == second.review_id
    assert all(value == gr.skip() for value in ReviewHandlers.new_case(second, second.review_id))
    assert len(ReviewHandlers.new_case(second, second.review_id)) == len(form)


def test_history_tabulates_the_hits_for_its_filters(handlers):
    for box_of in ("Tuberculosis", None, "Tuberculosis"):
        case = Case("x.png", peaked_prediction())
        box = around_peak(case.prediction, box_of) if box_of else CORNER
        save(handlers, case, json.dumps([box]))
    save(handlers, Case("y.png", peaked_prediction()), "")  # unmarked: not counted
    history = HistoryHandlers(handlers.store, LABELS)
    table = history.heatmap_hits("All", "All", "")
    assert list(table.columns) == list(HIT_COLUMNS)
    overall = table[(table.group == "all marked reviews") & (table.heatmap == "shown class")]
    assert overall[["marked", "hits"]].values.tolist() == [[3, 2]]
    assert history.heatmap_hits("All", "All", "nobody")["marked"].max() == 0
    assert history.heatmap_hits("All", "disagree", "")["marked"].max() == 0
    off = HistoryHandlers(handlers.store, LABELS, disabled="Reviews are switched off")
    assert off.heatmap_hits("All", "All", "").empty
