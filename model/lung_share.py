"""How much of each class's heatmap lies on the lung fields, and the batch CSV's cells of it.

The figure is ``Prediction.lung_share(k)``: the share of class k's Grad-CAM energy inside the
segmenter's lung mask (``model.lungs.heatmap_share_on_lungs``); it is ``None`` when the
segmenter found no lung fields, which ``explain.verdict`` says in words, never as 0 %.
"""

from __future__ import annotations

from model.prediction import Prediction

# Below this share of the top class's heatmap on the lungs, the screen warns: the map lies
# "mostly outside" the lungs. (A map spread evenly over the film scores the lungs' area share,
# 25–49 % on lung5 test films, docs/SEGMENTER.md; evaluation reports the distribution.)
LOW_LUNG_SHARE = 0.5


def shares(prediction: Prediction) -> dict[str, float | None]:
    """Every class's on-lung share (None: no lung fields found or no segmenter)."""
    return {name: prediction.lung_share(k) for k, name in enumerate(prediction.label_names)}


def off_lungs(prediction: Prediction) -> bool:
    """Whether the top class's heatmap lies mostly outside the lungs (< ``LOW_LUNG_SHARE``)."""
    share = prediction.lung_share(prediction.top_index)
    return share is not None and share < LOW_LUNG_SHARE


def csv_header(label_names: list[str]) -> list[str]:
    """The batch CLI's lung columns: ``lungs_found``, then ``lung_share_<class>`` per class."""
    return ["lungs_found", *(f"lung_share_{name}" for name in label_names)]


def csv_cells(prediction: Prediction | None, classes: int) -> list[str]:
    """``csv_header``'s cells: 'yes'/'no' ('' without a segmenter or a prediction), shares to
    4 decimals ('' when not found)."""
    if prediction is None or prediction.lungs is None:
        return [""] * (1 + classes)
    found = prediction.lungs.found
    values = shares(prediction).values()
    return ["yes" if found else "no", *("" if s is None else f"{s:.4f}" for s in values)]
