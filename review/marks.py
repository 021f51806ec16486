"""Reviewers' marks: where they see the finding on the film, checked, and the heatmaps scored
against them.

A mark is a box ``[x0, y0, x1, y1]`` in the film's own pixels (the upload as decoded, x right,
y down; a pixel is inside when its centre is), the convention of ``training.lesions``' expert
boxes. A review has marks, or says "no focal finding", or neither (not marked).

Each save scores the case's heatmaps with ``explain.localization``'s measures, the code that
``python -m training.localize`` scores expert boxes with (CheXlocalize, Saporta et al., Nat.
Mach. Intell. 2022): the pointing game (Zhang et al., IJCV 2018: is the map's peak inside a
mark?) and the share of the map's energy inside the marks, for the class shown and the top
class, each map placed over the film as the app places it (``Prediction.heatmap``), beside a
flat map's score on the same marks.

    boxes = parse_marks('[[120, 80, 260, 240]]', width=512, height=512)
    scores = score_marks(prediction, "Tuberculosis", boxes)
    peak_line(scores)  # "The heatmap's peak lies in your mark."
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Protocol

from explain import localization as loc
from explain.localization import Box

if TYPE_CHECKING:
    from model.prediction import Prediction

MAX_MARKS = 20
# A map's peak lies in the marks when at least half of its tied maxima do (one maximum: it does
# or it does not; a flat map, all tied, scores the marks' area share and misses).
HIT_SHARE = 0.5
FORMAT = "a JSON list of [x0, y0, x1, y1] boxes in the film's pixels, e.g. [[120, 80, 260, 240]]"


def mark_list(value: str | Sequence[Any] | None) -> list[Any]:
    """The items of ``value`` (JSON text or a list; None, "" and "[]" mean no marks), unchecked;
    a ``ValueError`` when it is not a list."""
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"marks must be {FORMAT}; {_clip(value)} is not JSON ({err.msg})"
            ) from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"marks must be {FORMAT}; got {_clip(value)}")
    return list(value)


def parse_marks(
    value: str | Sequence[Any] | None, width: int, height: int, no_finding: bool = False
) -> list[Box]:
    """The marks of ``value`` (see ``mark_list``) on a ``width`` × ``height`` px film, each
    checked; a ``ValueError`` saying what is wrong: not 4 numbers, under one pixel wide or
    high, outside the film, more than ``MAX_MARKS``, or marks sent with ``no_finding``."""
    items = mark_list(value)
    if items and no_finding:
        raise ValueError(
            f"{len(items)} mark(s) sent with 'no focal finding': clear the marks, or untick "
            "'no focal finding'"
        )
    if len(items) > MAX_MARKS:
        raise ValueError(f"{len(items)} marks sent; at most {MAX_MARKS} per review")
    return [_box(item, number, width, height) for number, item in enumerate(items, start=1)]


def _box(item: Any, number: int, width: int, height: int) -> Box:
    numbers = isinstance(item, list | tuple) and len(item) == 4
    if not numbers or not all(isinstance(v, Real) and not isinstance(v, bool) for v in item):
        raise ValueError(f"mark {number} must be 4 numbers [x0, y0, x1, y1]; got {_clip(item)}")
    x0, y0, x1, y1 = (float(v) for v in item)
    shown = marks_text([(x0, y0, x1, y1)])[1:-1]
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"mark {number} {shown} holds a value that is not a finite number")
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(
            f"mark {number} {shown} is under one pixel wide or high: x1 must exceed x0, and y1 "
            "exceed y0, by at least 1"
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"mark {number} {shown} lies outside the {width}×{height} px film (x from 0 to "
            f"{width}, y from 0 to {height})"
        )
    return x0, y0, x1, y1


def _clip(value: Any, length: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= length else text[: length - 1] + "…"


def compact(value: float) -> int | float:
    """A coordinate as written out: whole numbers without ``.0``."""
    return int(value) if float(value).is_integer() else float(value)


def marks_text(boxes: Sequence[Sequence[float]] | None) -> str:
    """Boxes as the JSON text ``parse_marks`` reads back ("" for none)."""
    if not boxes:
        return ""
    return json.dumps([[compact(v) for v in box] for box in boxes])


def peak_inside(hit: float) -> bool:
    """Whether a pointing-game score (share of the map's tied maxima inside) counts as a hit."""
    return hit >= HIT_SHARE


@dataclass(frozen=True)
class MarkScores:
    """One review's heatmaps against its marks: the pointing game's hit (share of the map's
    tied maxima inside the marks) and the share of the map's energy inside them, for the class
    shown and for the top class; ``energy_flat`` is a flat map's score on the same marks (their
    share of the film's area: a flat map's energy share and its expected hit alike)."""

    hit_shown: float
    hit_top: float
    energy_shown: float
    energy_top: float
    energy_flat: float


def score_marks(prediction: Prediction, shown_class: str, boxes: Sequence[Box]) -> MarkScores:
    """The shown class's and the top class's heatmaps of ``prediction`` scored against ``boxes``
    (film pixels), over the whole film as ``training.localize`` scores expert boxes."""
    shape = prediction.image.pixels.shape
    mask = loc.box_mask(boxes, shape)
    shown, top = prediction.class_index(shown_class), prediction.top_index
    maps = {k: prediction.heatmap(k) for k in {shown, top}}
    return MarkScores(
        hit_shown=loc.pointing_hit(maps[shown], mask),
        hit_top=loc.pointing_hit(maps[top], mask),
        energy_shown=loc.energy_share(maps[shown], mask),
        energy_top=loc.energy_share(maps[top], mask),
        energy_flat=loc.energy_share(loc.flat_map(shape), mask),
    )


def peak_line(scores: MarkScores | None) -> str:
    """What the save says about the shown heatmap's peak ("" without marks)."""
    if scores is None:
        return ""
    if peak_inside(scores.hit_shown):
        return "The heatmap's peak lies in your mark."
    return "The heatmap's peak lies outside your marks."


class MarkedReview(Protocol):
    """What the words about a stored review's marks read (``review.schema.Review`` has it)."""

    marks: list[list[float]] | None
    no_finding: bool
    shown_class: str
    predicted_class: str
    hit_shown: float | None
    hit_top: float | None
    energy_shown: float | None
    energy_top: float | None
    energy_flat: float | None


def marks_summary(review: MarkedReview) -> str:
    """The review's marks in words and film pixels (the PDF's "Marks" line)."""
    if review.no_finding:
        return "no focal finding"
    if not review.marks:
        return "none"
    count = len(review.marks)
    drawn = "drawn on the film" if count == 1 else f"{count} boxes, numbered on the film"
    return f"{drawn}; film pixels x0, y0, x1, y1: {marks_text(review.marks)}"


def peak_text(review: MarkedReview) -> str:
    """Whether the shown and the top class's heatmap peaks lie in the marks."""
    shown = f"{_yes(review.hit_shown)} for {review.shown_class} (shown)"
    if review.shown_class == review.predicted_class:
        return shown
    return f"{shown}; {_yes(review.hit_top)} for {review.predicted_class} (top class)"


def energy_text(review: MarkedReview) -> str:
    """The heatmaps' share of energy in the marks, beside a flat map's."""
    parts = [f"{review.energy_shown:.0%} for {review.shown_class}"]
    if review.shown_class != review.predicted_class:
        parts.append(f"{review.energy_top:.0%} for {review.predicted_class}")
    return (
        f"{', '.join(parts)}; a flat map: {review.energy_flat:.0%} (the marks' share of the film)"
    )


def _yes(hit: float | None) -> str:
    return "yes" if hit is not None and peak_inside(hit) else "no"
