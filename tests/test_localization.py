"""Heatmaps against lesion boxes: the measures of ``explain.localization`` on synthetic maps
(pointing game, energy, IoU, the flat baselines, the location prior, bootstrap intervals)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from explain import localization as loc
from model.crop import CropBox
from training.localize import PRIOR

SHAPE = (100, 100)
BOX = (20.0, 30.0, 50.0, 60.0)  # pixel centres 20.5 … 49.5: 30 × 30 = 900 pixels


def test_box_mask_counts_a_pixel_when_its_centre_is_inside():
    mask = loc.box_mask([(0.4, 0.4, 1.6, 1.6)], (3, 3))
    assert mask.tolist() == [[True, True, False], [True, True, False], [False] * 3]
    assert loc.box_mask([BOX], SHAPE).sum() == 900


def test_a_map_peaked_inside_the_box_hits_with_the_known_energy_and_iou():
    mask = loc.box_mask([BOX], SHAPE)
    heat = np.full(SHAPE, 0.1, np.float32)
    heat[mask] = 1.0
    heat[45, 35] = 1.5  # the single maximum, inside
    inside = 899 * 1.0 + 1.5
    scores = loc.score_map(heat, mask)
    assert scores["hit"] == 1.0
    assert scores["energy"] == pytest.approx(inside / (inside + 0.1 * 9100), rel=1e-6)
    assert scores["iou_otsu"] == 1.0  # Otsu separates the box from the floor
    assert scores["iou_top20"] == pytest.approx(0.09)  # the floor ties at the 80th percentile
    heat[5, 5] = 2.0  # now the maximum lies outside
    assert loc.score_map(heat, mask)["hit"] == 0.0


def test_a_gaussian_peaked_in_the_box_beats_every_flat_measure():
    mask = loc.box_mask([BOX], SHAPE)
    ys, xs = np.mgrid[0:100, 0:100] + 0.5
    heat = np.exp(-((xs - 35) ** 2 + (ys - 45) ** 2) / (2 * 8.0**2)).astype(np.float32)
    scores = loc.score_map(heat, mask)
    flat = loc.score_map(loc.flat_map(SHAPE), mask)
    assert scores["hit"] == 1.0
    assert all(scores[m] > flat[m] for m in loc.MEASURES)


def test_a_flat_map_scores_the_boxs_area_share_everywhere():
    mask = loc.box_mask([BOX], SHAPE)
    scores = loc.score_map(loc.flat_map(SHAPE), mask)
    assert scores == pytest.approx({m: 0.09 for m in loc.MEASURES})


def test_tied_maxima_count_fractionally():
    mask = loc.box_mask([BOX], SHAPE)
    heat = np.zeros(SHAPE, np.float32)
    for row, col in ((40, 30), (5, 5), (90, 90), (5, 90)):  # one of four maxima inside
        heat[row, col] = 1.0
    assert loc.pointing_hit(heat, mask) == 0.25


def test_a_flat_crop_map_scores_the_boxs_share_of_the_crop():
    crop = CropBox(10, 20, 70, 80)  # 60 × 60; the box lies inside it
    heat = loc.flat_crop_map(SHAPE, crop)
    mask = loc.box_mask([BOX], SHAPE)
    assert heat.sum() == 3600
    assert loc.pointing_hit(heat, mask) == pytest.approx(900 / 3600)
    assert loc.energy_share(heat, mask) == pytest.approx(900 / 3600)


@pytest.mark.parametrize("kind", ["uniform", "peaked", "plateau", "float64", "two-valued"])
def test_otsu_threshold_equals_scikit_images(kind):
    rng = np.random.default_rng(len(kind))
    values = {
        "uniform": rng.random((64, 80), dtype=np.float32),
        "peaked": rng.random((50, 50)).astype(np.float32) ** 4,
        "plateau": np.where(rng.random((40, 40)) < 0.7, 0.0, rng.random((40, 40))),
        "float64": rng.normal(0.3, 0.1, (30, 70)),
        "two-valued": np.repeat([0.2, 0.9], 50).reshape(10, 10),
    }[kind]
    assert loc.numpy_otsu(values) == float(threshold_otsu(values))
    assert loc.otsu_threshold(values) == float(threshold_otsu(values))


def test_without_scikit_image_the_numpy_otsu_stands_in(monkeypatch):
    values = np.random.default_rng(1).random((40, 40)) ** 2
    monkeypatch.setitem(sys.modules, "skimage.filters", None)  # as if not installed
    assert loc.otsu_threshold(values) == float(threshold_otsu(values))


def test_otsu_of_a_constant_map_is_its_value_and_its_mask_keeps_everything():
    assert loc.numpy_otsu(np.full((4, 4), 0.3)) == pytest.approx(0.3)
    assert loc.otsu_mask(np.full((4, 4), 0.3)).all()


def test_bad_maps_and_empty_masks_are_refused():
    mask = loc.box_mask([BOX], SHAPE)
    with pytest.raises(ValueError, match="same 2-D shape"):
        loc.score_map(np.ones((10, 10)), mask)
    with pytest.raises(ValueError, match="NaN"):
        loc.score_map(np.full(SHAPE, np.nan), mask)
    with pytest.raises(ValueError, match="empty"):
        loc.score_map(np.ones(SHAPE), np.zeros(SHAPE, bool))


def test_the_location_prior_averages_films_in_their_crop_frames():
    crops = [CropBox(0, 0, 100, 100), CropBox(50, 50, 150, 150)]
    films = [[(0, 0, 50, 50)], [(50, 50, 100, 100)]]  # the same upper-left quarter of each crop
    framed = [
        [loc.to_crop_frame(b, c) for b in boxes] for boxes, c in zip(films, crops, strict=True)
    ]
    prior = loc.location_prior(framed, grid=8)
    assert prior[:4, :4].tolist() == [[1.0] * 4] * 4 and prior[4:, :].sum() == 0
    half = loc.location_prior([framed[0], [(0.5, 0.5, 1.0, 1.0)]], grid=8)
    assert half[0, 0] == half[7, 7] == 0.5
    placed = loc.place_prior(prior, (200, 200), CropBox(100, 100, 200, 200))
    assert placed[:100].sum() == 0 and placed[100:140, 100:140].min() == 1.0  # bilinear at the edge


def test_bootstrap_interval_holds_the_mean_and_a_constant_is_exact():
    values = np.random.default_rng(0).random(40)
    low, high = loc.bootstrap_interval(values, resamples=500)
    assert low < values.mean() < high
    assert loc.summarise([0.25] * 5)["ci95"] == [0.25, 0.25]
    assert loc.summarise([]) == {"n": 0, "mean": None, "ci95": None}


def test_lift_over_the_prior_is_paired_per_film():
    films = [
        {"map": dict.fromkeys(loc.MEASURES, v), PRIOR: dict.fromkeys(loc.MEASURES, p)}
        for v, p in ((0.9, 0.5), (0.3, 0.2), (0.6, 0.6))
    ]
    report = loc.group_report(films, PRIOR, resamples=200)
    assert report["map"]["scores"]["hit"]["mean"] == pytest.approx(0.6)
    assert report["map"]["lift_over_prior"]["energy"]["mean"] == pytest.approx(0.5 / 3)
    assert report[PRIOR]["lift_over_prior"] is None
