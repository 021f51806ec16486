"""The shortcut audit: exact pixels of the image edits, and the per-source breakdown."""

import numpy as np
import pytest

from training.audit import (
    VARIANTS,
    border_only,
    breakdown,
    central_box,
    centre_only,
    equalised,
    format_audit,
    shortcut_audit,
)
from training.data import ImageRecord

NAMES = ["a", "b", "c"]


def _ramp(height=10, width=10):
    return (np.arange(height * width) % 256).astype(np.uint8).reshape(height, width)


@pytest.mark.parametrize(
    ("shape", "rows", "cols"),
    [((10, 10), (1, 8), (1, 8)), ((20, 10), (3, 17), (1, 8)), ((100, 200), (15, 85), (30, 170))],
)
def test_central_box_covers_70_percent_of_each_side(shape, rows, cols):
    r, c = central_box(shape)
    assert (r.start, r.stop, c.start, c.stop) == (*rows, *cols)


def test_border_only_fills_the_centre_with_the_image_mean():
    image = _ramp()  # values 0..99, mean 49.5 → 50 (rounded half to even is 50 too)
    out = border_only(image)
    expected = image.copy()
    expected[1:8, 1:8] = 50
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and image[4, 4] == 44  # the input is not modified


def test_centre_only_fills_the_outside_with_the_image_mean():
    image = np.zeros((10, 10), np.uint8)
    image[0, :] = 255  # mean = 25.5 → 26
    image[4, 4] = 7
    out = centre_only(image)
    expected = np.full((10, 10), 26, np.uint8)
    expected[1:8, 1:8] = 0
    expected[4, 4] = 7
    np.testing.assert_array_equal(out, expected)


def test_border_and_centre_partition_the_image():
    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    mean = np.uint8(np.rint(image.mean()))
    border, centre = border_only(image), centre_only(image)
    keep_centre = centre != mean
    keep_border = border != mean
    np.testing.assert_array_equal(
        np.where(keep_centre, centre, border)[keep_centre | keep_border],
        image[keep_centre | keep_border],
    )


def test_equalised_spreads_two_levels_to_the_extremes():
    image = np.full((4, 4), 100, np.uint8)
    image[:2] = 120
    np.testing.assert_array_equal(np.unique(equalised(image)), [0, 255])
    assert equalised(image)[0, 0] == 255 and equalised(image)[3, 3] == 0


@pytest.mark.parametrize("edit", [border_only, centre_only, equalised])
def test_edits_reject_colour_or_float_arrays(edit):
    with pytest.raises(ValueError, match="uint8 grayscale"):
        edit(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 grayscale"):
        edit(np.zeros((8, 8), np.float32))


def test_breakdown_per_class_accuracy_auroc_and_calls():
    labels = np.array([0, 0, 1, 1])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]]
    )  # 0 1 1 1
    block = breakdown(labels, probs, NAMES)
    assert block["n"] == 4 and block["accuracy"] == 0.75
    # AUROC a: positives .6 .2 vs negatives .3 .1 → 3 of 4 pairs; b: .6 .8 vs .3 .7 → 3 of 4
    assert block["classes"]["a"] == {"n": 2, "accuracy": 0.5, "auroc": 0.75}
    assert block["classes"]["b"] == {"n": 2, "accuracy": 1.0, "auroc": 0.75}
    assert "c" not in block["classes"]  # absent from the group
    assert block["macro_auroc"] == pytest.approx(0.75)
    assert block["called"] == {"a": 0.25, "b": 0.75, "c": 0.0}


def test_one_class_source_has_accuracy_but_no_auroc():
    block = breakdown(np.array([2, 2]), np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]), NAMES)
    assert block["classes"] == {"c": {"n": 2, "accuracy": 0.5, "auroc": None}}
    assert block["macro_auroc"] is None and block["called"]["a"] == 0.5


def test_shortcut_audit_structure_and_report():
    records = [
        ImageRecord(f"{i}.png", label, f"p{i}", source)
        for i, (label, source) in enumerate([(0, "s1"), (1, "s1"), (2, "s2"), (2, "s2")])
    ]
    rng = np.random.default_rng(0)
    logits = {name: rng.normal(size=(4, 3)) for name in VARIANTS}
    audit = shortcut_audit(logits, records, NAMES, temperature=2.0)
    assert list(audit["overall"]) == list(VARIANTS) and set(audit["variants"]) == set(VARIANTS)
    assert set(audit["per_source"]) == {"s1", "s2"}
    s2 = audit["per_source"]["s2"]["border_only"]
    assert s2["n"] == 2 and list(s2["classes"]) == ["c"] and s2["classes"]["c"]["auroc"] is None
    assert sum(audit["per_source"]["s1"]["clean"]["called"].values()) == pytest.approx(1.0)
    report = format_audit(audit, NAMES)
    assert "all sources" in report and "s2 [c]" in report and "border_only" in report
