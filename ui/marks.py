"""The reviewer's marks on the film: two clicks on opposite corners make a box.

Boxes are kept as JSON text (``[[x0, y0, x1, y1], …]``, the upload's own pixels), the same text
an API caller sends to ``/review``; ``review.marks`` checks them when the review is saved.
"""

from __future__ import annotations

from typing import Any

import cv2
import gradio as gr
import numpy as np

from imaging.image import fit_within
from imaging.overlay import MARK_COLOR, OUTLINE_HALO, draw_marks
from review.marks import MAX_MARKS, mark_list, marks_text
from ui.common import DISPLAY_SIDE, Case, film

NO_MARKS = "No marks: click two opposite corners of each finding on the film."
Corner = tuple[int, int] | None  # the first corner of a box being drawn (film pixels)


def marks_line(boxes: list[list[int]], corner: Corner = None) -> str:
    """What the form says about the marks drawn so far."""
    if corner is not None:
        return f"Corner at ({corner[0]}, {corner[1]}): click the opposite corner."
    if not boxes:
        return NO_MARKS
    listed = " · ".join(f"{n}: ({x0}, {y0})–({x1}, {y1})" for n, (x0, y0, x1, y1) in
                        enumerate(boxes, start=1))  # fmt: skip
    return f"{len(boxes)} mark{'s' * (len(boxes) > 1)} (film pixels) — {listed}"


def marked_film(
    case: Case, boxes: list[list[int]], corner: Corner, window: tuple[float, float]
) -> np.ndarray:
    """The windowed film at display size with the boxes and any first corner drawn."""
    gray = film(case.prediction.image, window)
    scale = gray.shape[1] / case.prediction.image.size[0]
    drawn = draw_marks(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), boxes, scale)
    if corner is not None:
        at = (round(corner[0] * scale), round(corner[1] * scale))
        size = max(6, gray.shape[1] // 80)
        cv2.drawMarker(drawn, at, OUTLINE_HALO, cv2.MARKER_CROSS, size, 4)
        cv2.drawMarker(drawn, at, MARK_COLOR, cv2.MARKER_CROSS, size, 2)
    return drawn


class MarkHandlers:
    """Events of the film the reviewer marks; each returns (film, marks, corner, line)."""

    @staticmethod
    def clicked(
        case: Case | None,
        marks: str,
        corner: Corner,
        level: float,
        width: float,
        event: gr.SelectData,
    ) -> tuple[Any, str, Corner, str]:
        """A click: the first corner of a box, or its opposite corner (the box is kept)."""
        if case is None:
            raise gr.Error("Analyze an image first, then mark the finding on the film.")
        boxes = mark_list(marks)
        size = case.prediction.image.size
        scale = size[0] / fit_within(size, DISPLAY_SIDE)[0]  # shown pixels → film pixels
        x, y = (min(round(v * scale), side - 1) for v, side in zip(event.index, size, strict=True))
        if corner is None:
            if len(boxes) >= MAX_MARKS:
                raise gr.Error(f"At most {MAX_MARKS} marks per review.")
            corner = (x, y)
        elif x == corner[0] or y == corner[1]:
            gr.Warning("A box needs width and height: click the opposite corner.")
        else:
            boxes.append([min(x, corner[0]), min(y, corner[1]), max(x, corner[0]) + 1,
                          max(y, corner[1]) + 1])  # fmt: skip
            corner = None
        return MarkHandlers._shown(case, boxes, corner, (level, width))

    @staticmethod
    def undo(case: Case | None, marks: str, corner: Corner, level: float, width: float):
        """Drop the half-drawn box, else the last box."""
        boxes = mark_list(marks)
        if corner is None and boxes:
            boxes.pop()
        return MarkHandlers._shown(case, boxes, None, (level, width))

    @staticmethod
    def cleared(case: Case | None, level: float, width: float):
        """No marks at all."""
        return MarkHandlers._shown(case, [], None, (level, width))

    @staticmethod
    def redrawn(case: Case | None, marks: str, corner: Corner, level: float, width: float):
        """The same marks on the film through another window."""
        return MarkHandlers._shown(case, mark_list(marks), corner, (level, width))

    @staticmethod
    def _shown(
        case: Case | None, boxes: list[list[int]], corner: Corner, window: tuple[float, float]
    ) -> tuple[Any, str, Corner, str]:
        drawn = None if case is None else marked_film(case, boxes, corner, window)
        return drawn, marks_text(boxes), corner, marks_line(boxes, corner)
