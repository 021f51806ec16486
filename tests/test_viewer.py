"""The film viewer: display size, the full-resolution overlay, the display window, and marks
drawn on the film by clicks (``ui.marks``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from imaging.load import load_image
from imaging.overlay import FULL_WINDOW, MARK_COLOR, apply_window
from model.predictor import Predictor
from review.marks import MAX_MARKS, mark_list, parse_marks
from tests.conftest import lung5_images
from ui.analyze import AnalyzeHandlers
from ui.common import Case
from ui.marks import NO_MARKS, MarkHandlers


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(str(tiny_checkpoint), "cpu")


@pytest.fixture(scope="module")
def large_case(predictor: Predictor, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A 2048 × 1536 film: shown at 1024 × 768, so one shown pixel is two of the film's."""
    path = tmp_path_factory.mktemp("film") / "large.png"
    Image.open(lung5_images()[0]).convert("L").resize((2048, 1536)).save(path)
    return Case(str(path), predictor.predict(load_image(str(path))))


def click(case: Case, marks: str, corner, x: int, y: int):
    return MarkHandlers.clicked(case, marks, corner, *FULL_WINDOW, SimpleNamespace(index=[x, y]))


def test_two_clicks_make_a_box_in_the_films_own_pixels(large_case):
    shown, marks, corner, line = click(large_case, "", None, 300, 100)
    assert marks == "" and corner == (600, 200) and "opposite corner" in line
    assert shown.shape == (768, 1024, 3)
    shown, marks, corner, line = click(large_case, marks, corner, 100, 250)  # any two corners
    assert corner is None and mark_list(marks) == [[200, 200, 601, 501]]
    assert "1 mark " in line and "(200, 200)–(601, 501)" in line
    assert parse_marks(marks, 2048, 1536)  # what the review accepts
    edge = shown[100:251, 99:102].reshape(-1, 3)  # the box's left side, at display scale
    assert (edge == MARK_COLOR).all(axis=1).any()
    assert not (shown[400:, 600:] == MARK_COLOR).all(axis=2).any()  # nothing elsewhere


def test_undo_clear_and_a_box_without_area(large_case, monkeypatch):
    warned = []
    monkeypatch.setattr(gr, "Warning", warned.append)
    _, marks, corner, _ = click(large_case, "", None, 10, 10)
    _, marks, corner, _ = click(large_case, marks, corner, 10, 40)  # no width: not a box
    assert warned and corner == (20, 20) and marks == ""
    _, marks, corner, _ = click(large_case, marks, corner, 40, 40)
    _, marks, corner, _ = click(large_case, marks, corner, 500, 500)
    _, marks, corner, _ = click(large_case, marks, corner, 600, 600)
    _, marks, corner, _ = click(large_case, marks, corner, 700, 700)
    assert len(mark_list(marks)) == 2 and corner is not None
    _, marks, corner, _ = MarkHandlers.undo(large_case, marks, corner, *FULL_WINDOW)
    assert len(mark_list(marks)) == 2 and corner is None  # the half-drawn box went first
    _, marks, corner, line = MarkHandlers.undo(large_case, marks, corner, *FULL_WINDOW)
    assert json.loads(marks) == [[20, 20, 81, 81]] and line.startswith("1 mark ")
    _, marks, corner, line = MarkHandlers.cleared(large_case, *FULL_WINDOW)
    assert marks == "" and corner is None and line == NO_MARKS


def test_marks_need_a_case_and_stop_at_the_maximum(large_case):
    with pytest.raises(gr.Error, match="Analyze an image first"):
        click(None, "", None, 1, 1)
    full = json.dumps([[2 * i, 0, 2 * i + 1, 1] for i in range(MAX_MARKS)])
    with pytest.raises(gr.Error, match=f"At most {MAX_MARKS}"):
        click(large_case, full, None, 5, 5)


def test_the_window_stretches_level_plus_minus_half_width_over_black_to_white():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert apply_window(gray, *FULL_WINDOW) is gray
    windowed = apply_window(gray, 100, 50)
    assert windowed[gray == 75].item() == 0 and windowed[gray == 125].item() == 255
    assert windowed[gray == 100].item() in (127, 128)
    assert (windowed[gray < 75] == 0).all() and (windowed[gray > 125] == 255).all()
    with pytest.raises(ValueError, match="width"):
        apply_window(gray, 100, 0)


def test_overlay_is_display_size_and_full_resolution_is_a_png_away(predictor, tmp_path):
    """A 2048 × 1536 upload: overlay and original at most 1024 px a side (aspect kept), the
    same picture as the full-resolution overlay scaled down; that one is a PNG at 2048 × 1536."""
    from PIL import Image

    from ui.common import DISPLAY_SIDE, draw

    film = Image.open(lung5_images()[0]).convert("L").resize((2048, 1536))
    path = tmp_path / "large.png"
    film.save(path)
    handlers = AnalyzeHandlers(predictor.predict, tmp_path / "exports")
    view = handlers.analyze(str(path), 0.45, "jet")
    (original, drawn), shown, case = view.viewer, view.shown_class, view.case
    assert drawn.shape == (DISPLAY_SIDE * 3 // 4, DISPLAY_SIDE, 3)
    assert original.shape == (DISPLAY_SIDE * 3 // 4, DISPLAY_SIDE)
    assert AnalyzeHandlers.fresh(case, None).mark_film.shape == original.shape  # to mark
    marked = MarkHandlers.redrawn(case, "", None, 128, 256)[0]
    assert marked.shape == (DISPLAY_SIDE * 3 // 4, DISPLAY_SIDE, 3)
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
