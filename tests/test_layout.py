"""The layout stays a stack: no import circles, no import from a lower floor to a higher one."""

from bench.layout import arrows_up, circles, imports, measure
from tests.conftest import REPO


def test_no_import_circles():
    assert circles(imports(REPO)) == []


def test_no_arrows_back_up():
    assert arrows_up(imports(REPO)) == []


def test_every_folder_has_a_floor():
    graph = imports(REPO)
    assert {"imaging.load", "model.predictor", "ui.analyze", "app"} <= set(graph)
    assert "app" in measure(REPO)["per_folder"] or "app.py" in measure(REPO)["per_folder"]


def test_a_circle_and_an_arrow_up_are_found():
    graph = {"model.a": {"imaging.b"}, "imaging.b": {"model.a"}}
    assert circles(graph) == [["imaging.b", "model.a"]]
    assert arrows_up(graph) == ["imaging.b -> model.a"]
