"""Overlays: top-region contour and PNG export."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imaging.overlay import draw_contour, export_pngs, overlay, top_region


def _blob(height: int = 60, width: int = 80) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return np.exp(-((ys - 20) ** 2 + (xs - 50) ** 2) / 60.0).astype(np.float32)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3])
def test_top_region_holds_that_share_of_pixels_around_the_peak(fraction):
    mask = top_region(_blob(), fraction)
    assert mask.mean() == pytest.approx(fraction, abs=0.01)
    assert mask[20, 50] and not mask[59, 0]


def test_contour_is_drawn_only_on_the_region_border():
    gray = np.zeros((60, 80), np.uint8)
    plain = overlay(gray, _blob(), 0.0, "viridis")
    outlined = overlay(gray, _blob(), 0.0, "viridis", contour=True)
    changed = np.any(outlined != plain, axis=2)
    assert 0 < changed.sum() < 0.1 * changed.size
    assert not changed[20, 50]  # the peak itself stays uncovered
    assert np.all(outlined[changed] == 255)
    with pytest.raises(ValueError, match="differ in size"):
        draw_contour(plain, _blob(30, 30))
    with pytest.raises(ValueError, match="fraction must be in"):
        top_region(_blob(), 1.0)


def test_pngs_round_trip(tmp_path):
    heat = _blob()
    drawn = overlay(np.full((60, 80), 128, np.uint8), heat, 0.5, "cividis")
    heat_path, overlay_path = export_pngs(heat, drawn, tmp_path / "new", "case")
    saved_heat = np.asarray(Image.open(heat_path))
    assert saved_heat.shape == (60, 80)
    np.testing.assert_array_equal(saved_heat, np.uint8(np.round(heat * 255)))
    np.testing.assert_array_equal(np.asarray(Image.open(overlay_path).convert("RGB")), drawn)
    assert overlay_path.name == "case-overlay.png"
