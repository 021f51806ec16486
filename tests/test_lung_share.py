"""The heatmap's share on the lung fields as the app says it: the line beside the overlay,
/predict's notes, the off-lungs warning, "lung fields not found", the outline and the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explain import verdict
from imaging.load import load_image
from model import lung_share
from model.crop import CropBox
from model.lungs import LungMask
from model.ood import NO_LUNGS_REASON
from model.prediction import Prediction
from model.predictor import Predictor
from tests.conftest import lung5_images
from ui.analyze import AnalyzeHandlers
from ui.common import draw

LABELS = ["Bacterial Pneumonia", "COVID-19", "Normal", "Tuberculosis", "Viral Pneumonia"]
SIDE = 128  # under SHARE_GRID, so the share is computed at the image's own size


def _upload(tmp_path: Path, name: str = "film.png") -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / name)
    return str(tmp_path / name)


def _cams() -> np.ndarray:
    """Class 0 lives on the left half, class 1 on the right half, the others everywhere."""
    cams = np.ones((5, 8, 8), np.float32)
    cams[0, :, 4:] = cams[1, :, :4] = 0.0
    cams[2:] = np.random.default_rng(1).random((3, 8, 8))
    return cams


def _lungs(found: bool = True) -> LungMask:
    """A known mask: the left half of the image (what a stub segmenter would answer)."""
    mask = np.zeros((SIDE, SIDE), bool)
    if found:
        mask[:, : SIDE // 2] = True
    return LungMask(mask, found, float(mask.mean()), 1 if found else 0)


def _predict(top: int, lungs: LungMask | None, box: CropBox | None = None):
    def predict(image):
        probabilities = np.full(5, 0.1)
        probabilities[top] = 0.6
        return Prediction(
            LABELS, probabilities, np.log(probabilities), _cams(), image, box=box, lungs=lungs
        )

    return predict


def _expected(prediction: Prediction, k: int) -> float:
    heat = prediction.heatmap(k)
    return float(heat[:, : SIDE // 2].sum() / heat.sum())


@pytest.mark.parametrize("top", [0, 1])
def test_the_screen_says_the_known_share_and_warns_only_below_half(tmp_path, top):
    handlers = AnalyzeHandlers(_predict(top, _lungs()))
    view = handlers.analyze(_upload(tmp_path), 0.45, "jet")
    notes, case = view.notes, view.case
    left, right = _expected(case.prediction, 0), _expected(case.prediction, 1)
    assert left > 0.85 and right < 0.15  # the map's smear over the midline is all that leaks

    line = handlers.lung_line(case, LABELS[0])
    assert line.startswith(f"{round(100 * left)} % of this heatmap lies on the lungs")
    assert handlers.lung_line(case, LABELS[1]).startswith(f"{round(100 * right)} % of this")
    assert (
        f"{LABELS[0]} {round(100 * left)} %" in notes
        and f"{LABELS[1]} {round(100 * right)} %" in notes
    )
    warned = verdict.OFF_LUNGS in notes
    assert warned == (top == 1) == lung_share.off_lungs(case.prediction)
    assert (verdict.OFF_LUNGS in handlers.lung_line(case, LABELS[top])) == (top == 1)
    assert verdict.OFF_LUNGS not in handlers.lung_line(case, LABELS[1 - top])
    assert lung_share.csv_cells(case.prediction, 5)[:3] == ["yes", f"{left:.4f}", f"{right:.4f}"]


def test_warning_threshold_is_the_named_constant(tmp_path, monkeypatch):
    handlers = AnalyzeHandlers(_predict(0, _lungs()))
    case = handlers.analyze(_upload(tmp_path), 0.45, "jet").case
    share = case.prediction.lung_share(0)
    monkeypatch.setattr(lung_share, "LOW_LUNG_SHARE", share + 0.01)
    assert lung_share.off_lungs(case.prediction) and verdict.lung_warning(case.prediction)
    monkeypatch.setattr(lung_share, "LOW_LUNG_SHARE", share - 0.01)
    assert not lung_share.off_lungs(case.prediction) and not verdict.lung_warning(case.prediction)


def test_no_lung_fields_found_is_said_not_scored(tmp_path):
    handlers = AnalyzeHandlers(_predict(1, _lungs(found=False)))
    view = handlers.analyze(_upload(tmp_path), 0.45, "jet", None, False, True)
    confidences, drawn, notes, case = view.label, view.viewer[1], view.notes, view.case
    assert len(confidences) == 5 and drawn.shape == (SIDE, SIDE, 3)
    assert "lung fields not found" in notes and " % " not in notes.split("Heatmap")[-1]
    assert verdict.OFF_LUNGS not in notes
    for name in LABELS:
        assert handlers.lung_line(case, name).startswith("Lung fields not found")
    assert lung_share.csv_cells(case.prediction, 5) == ["no", "", "", "", "", ""]
    # the outline checkbox has nothing to draw
    np.testing.assert_array_equal(drawn, handlers.redraw(case, LABELS[1], 0.45, "jet", False)[1])


def test_without_a_segmenter_nothing_is_claimed(tmp_path):
    handlers = AnalyzeHandlers(_predict(0, None))
    view = handlers.analyze(_upload(tmp_path), 0.45, "jet")
    notes, case = view.notes, view.case
    assert "lung" not in notes.lower() and handlers.lung_line(case, LABELS[0]) == ""
    assert handlers.lung_line(None, LABELS[0]) == ""
    assert lung_share.csv_cells(case.prediction, 5) == [""] * 6
    assert lung_share.csv_cells(None, 5) == [""] * 6


def test_outline_draws_the_lung_contour_and_the_crop_box(tmp_path):
    box = CropBox(16, 8, 112, 120)
    handlers = AnalyzeHandlers(_predict(0, _lungs(), box))
    view = handlers.analyze(_upload(tmp_path), 0.45, "jet")
    notes, case = view.notes, view.case
    assert case.prediction.cropped and verdict.CROPPED in notes
    plain = draw(case.prediction, LABELS[0], 0.45, "jet")
    outlined = handlers.redraw(case, LABELS[0], 0.45, "jet", True)[1]
    changed = np.any(outlined != plain, axis=2)
    assert changed[60, 63] and changed[60, 16] and changed[8, 60]  # mask edge, box sides
    assert not changed[60, 40] and not changed[60, 90] and not changed[2, 120]


def test_real_segmenter_end_to_end(tiny_checkpoint, tmp_path):
    """The bundled segmenter (loaded by default) on a real film and on a flat gray image."""
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    assert predictor.segmenter is not None
    handlers = AnalyzeHandlers(predictor.predict)
    view = handlers.analyze(str(lung5_images()[3]), 0.45, "jet")
    notes, case = view.notes, view.case
    assert case.prediction.lungs.found
    share = case.prediction.lung_share(case.prediction.top_index)
    line = handlers.lung_line(case, case.prediction.top_label)
    assert line.startswith(f"{round(100 * share)} % of this heatmap lies on the lungs")
    assert "Heatmap on the lungs (share of each class's map)" in notes

    Image.fromarray(np.full((300, 280), 128, np.uint8)).save(tmp_path / "flat.png")
    view = handlers.analyze(str(tmp_path / "flat.png"), 0.45, "jet", None, False, True)
    notes, case = view.notes, view.case
    assert not case.prediction.lungs.found and "lung fields not found" in notes
    assert NO_LUNGS_REASON in notes  # the guard counts it (no fitted statistics here)
    assert load_image(str(tmp_path / "flat.png")).size == (280, 300)


@pytest.mark.parametrize(
    ("box", "flat"),
    [(None, 0.5), (CropBox(0, 0, SIDE // 2, SIDE), 1.0), (CropBox(32, 0, SIDE, SIDE), 1 / 3)],
)
def test_the_share_is_read_against_a_flat_map_over_what_the_model_saw(tmp_path, box, flat):
    """A flat map over the crop scores the lungs' share of the crop; a map on the lungs
    reads as that many times a flat map."""
    image = load_image(_upload(tmp_path))
    prediction = _predict(0, _lungs(), box)(image)
    assert prediction.flat_lung_share() == pytest.approx(flat, abs=0.02)
    share = prediction.lung_share(0)
    line = verdict.lung_line(prediction, LABELS[0])
    assert line.endswith(f"({share / prediction.flat_lung_share():.1f}× a flat map)")
    assert f"a flat map over what the model saw: {round(100 * flat)} %" in verdict.lung_summary(
        prediction
    )
    assert _predict(0, _lungs(found=False))(image).flat_lung_share() is None
