"""How much of each class's heatmap lies on the lung fields, in words and CSV cells.

One wording for the screen, ``/predict``'s notes, the batch CLI's CSV and the PDF report
(issue 13). The figure is ``Prediction.lung_share(k)``: the share of class k's Grad-CAM
energy inside the segmenter's lung mask (``model.lungs.heatmap_share_on_lungs``); it is
``None`` when the segmenter found no lung fields, which is said in words, never as 0 %.

    >>> share_line(prediction, "Tuberculosis")
    '62 % of this heatmap lies on the lungs (1.3× a flat map)'
"""

from __future__ import annotations

from model.prediction import Prediction

# Below this share of the top class's heatmap on the lungs, the screen warns: the map lies
# "mostly outside" the lungs. (A map spread evenly over the film scores the lungs' area share,
# 25–49 % on lung5 test films, docs/SEGMENTER.md; evaluation reports the distribution.)
LOW_LUNG_SHARE = 0.5
NOT_FOUND = "lung fields not found"
OFF_LUNGS = "the model may be using something other than the lungs: markers, borders, devices"
CROPPED = "The model saw only the lung region (outline it with “Outline the lung fields”)."


def percent(share: float) -> str:
    """0.617 → '62 %'."""
    return f"{round(100 * share)} %"


def shares(prediction: Prediction) -> dict[str, float | None]:
    """Every class's on-lung share (None: no lung fields found or no segmenter)."""
    return {name: prediction.lung_share(k) for k, name in enumerate(prediction.label_names)}


def off_lungs(prediction: Prediction) -> bool:
    """Whether the top class's heatmap lies mostly outside the lungs (< ``LOW_LUNG_SHARE``)."""
    share = prediction.lung_share(prediction.top_index)
    return share is not None and share < LOW_LUNG_SHARE


def warning(prediction: Prediction) -> str:
    """The off-lungs warning for the top class, or '' when its share is high or unknown."""
    if not off_lungs(prediction):
        return ""
    share = percent(prediction.lung_share(prediction.top_index))
    top = prediction.top_label
    return f"Only {share} of the {top} heatmap (the top class) lies on the lungs: {OFF_LUNGS}."


def share_line(prediction: Prediction, class_name: str) -> str:
    """The line beside the overlay: '62 % of this heatmap lies on the lungs' for ``class_name``,
    'Lung fields not found …' without them, '' when no segmenter is loaded."""
    if prediction.lungs is None:
        return ""
    share = prediction.lung_share(prediction.class_index(class_name))
    if share is None:
        return f"{NOT_FOUND.capitalize()}: no on-lung share for this heatmap."
    line = f"{percent(share)} of this heatmap lies on the lungs" + versus_flat(prediction, share)
    if class_name == prediction.top_label and share < LOW_LUNG_SHARE:
        line += f" — ⚠️ {OFF_LUNGS}"
    return line


def versus_flat(prediction: Prediction, share: float) -> str:
    """' (1.3× a flat map)': the share against a flat map over what the network saw, which
    scores the lungs' area share there ('' when that is unknown)."""
    flat = prediction.flat_lung_share()
    return f" ({share / flat:.1f}× a flat map)" if flat else ""


def summary(prediction: Prediction) -> str:
    """Every class's share in one line ('' without a segmenter), for notes and reports."""
    if prediction.lungs is None:
        return ""
    if not prediction.lungs.found:
        return f"Heatmap on the lungs: {NOT_FOUND}."
    cells = [f"{name} {percent(share)}" for name, share in shares(prediction).items()]
    flat = prediction.flat_lung_share()
    baseline = f"; a flat map over what the model saw: {percent(flat)}" if flat else ""
    return "Heatmap on the lungs (share of each class's map): " + " · ".join(cells) + baseline + "."


def notes(prediction: Prediction, mark: str = "⚠️ ") -> list[str]:
    """What the screen and the report add about the lungs: the per-class summary, the crop
    note when the model saw only the lung region, and the off-lungs warning (after ``mark``)."""
    lines = [line for line in (summary(prediction),) if line]
    if prediction.cropped:
        lines.append(CROPPED)
    if text := warning(prediction):
        lines.append(f"{mark}{text}")
    return lines


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
