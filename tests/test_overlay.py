"""Overlays: top-region contour and PNG export."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imaging.overlay import draw_box, draw_contour, draw_outline, export_pngs, overlay, top_region


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


@pytest.mark.parametrize("colormap", ["jet", "inferno", "cividis"])
def test_lung_outline_changes_the_contour_and_nothing_else(colormap):
    gray = np.full((120, 160), 90, np.uint8)
    plain = overlay(gray, _blob(120, 160), 0.6, colormap)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 20:70] = True  # one "lung", away from the image's edges
    outlined = draw_outline(plain, mask)
    changed = np.any(outlined != plain, axis=2)
    ring = np.zeros_like(mask)
    ring[27:93, 17:73] = True
    ring[33:87, 23:67] = False  # the contour ± 3 px
    assert changed[30, 40] and changed[89, 40] and changed[60, 20] and changed[60, 69]
    assert not changed[~ring].any() and changed[ring].mean() > 0.5
    # white line in a black halo: both colours appear on any colormap
    assert (outlined[changed] == 255).all(axis=1).any() and (outlined[changed] == 0).all(
        axis=1
    ).any()
    assert outlined is not plain and (plain == overlay(gray, _blob(120, 160), 0.6, colormap)).all()
    boxed = draw_box(plain, (20, 30, 70, 90))
    np.testing.assert_array_equal(boxed, outlined)
    with pytest.raises(ValueError, match="differ in size"):
        draw_outline(plain, mask[:60])
