"""The words of a verdict: what the screen, the batch CSV and the PDF say of one prediction.

One home for every sentence a prediction becomes: the headline (the top class, or a warning in
its place), the reasons to distrust the scores, the prediction set's line and the heatmap's
share on the lung fields. The numbers behind them are computed elsewhere (``model.ood``,
``model.conformal``, ``model.lung_share``).

    >>> headline(prediction.image, prediction.ood)  # None: headline the top class
    'Not a chest X-ray?'
    >>> lung_line(prediction, "Tuberculosis")
    '62 % of this heatmap lies on the lungs (1.3× a flat map)'
"""

from __future__ import annotations

from collections.abc import Sequence

from imaging.image import LoadedImage
from model.lung_share import off_lungs, shares
from model.ood import OODCheck
from model.prediction import Prediction

NOT_A_CHEST_XRAY = "Not a chest X-ray?"  # the headline instead of a class when the guard warns
NOT_FRONTAL = "Not a frontal chest X-ray?"  # … when the DICOM header says lateral
NO_SETS = "No prediction sets for this model (its config has no conformal section)."
NOT_FOUND = "lung fields not found"
OFF_LUNGS = "the model may be using something other than the lungs: markers, borders, devices"
CROPPED = "The model saw only the lung region (outline it with “Outline the lung fields”)."


def headline(image: LoadedImage, check: OODCheck | None) -> str | None:
    """What to headline instead of a class name, or None when the class may be headlined.

    A DICOM header that says lateral gives ``NOT_FRONTAL`` first (more specific than the
    pixels, and a lateral film has no frontal lung fields for the guard to find); else the
    guard's warning gives ``NOT_A_CHEST_XRAY``; else nothing.
    """
    if any("lateral" in note for note in image.notes):
        return NOT_FRONTAL
    if check is not None and check.warn:
        return NOT_A_CHEST_XRAY
    return None


def guard_sentence(check: OODCheck) -> str:
    """The guard's warning in one sentence, or '' when the image looks like a chest X-ray."""
    if not check.warn:
        return ""
    return (
        "This may not be a frontal chest X-ray — "
        + "; ".join(check.reasons)
        + ". The classifier was trained on chest X-rays only: read its output with care."
    )


def input_warnings(image: LoadedImage, check: OODCheck | None) -> list[str]:
    """Every reason to distrust the class scores of ``image``: the guard's verdict (one
    sentence) and the loader's notes (e.g. a lateral DICOM view). Empty: nothing to warn."""
    warned = [guard_sentence(check)] if check is not None and check.warn else []
    return warned + list(image.notes)


def input_facts(image: LoadedImage, check: OODCheck | None = None) -> str:
    """Non-identifying facts about the upload (size, format, mode) and any warnings."""
    facts = [f"{image.size[0]}×{image.size[1]} px, {image.source_format} ({image.original_mode})"]
    facts += [
        f"{key}: {value}" for key, value in image.metadata.items() if key not in ("format", "mode")
    ]
    warnings = "".join(f"\n\n⚠️ {note}" for note in input_warnings(image, check))
    return " · ".join(facts) + warnings


def set_caption(alpha: float) -> str:
    """ "90 % set" for α = 0.1 (one decimal when needed: "87.5 % set")."""
    return f"{round((1 - alpha) * 100, 1):g} % set"


def describe_set(prediction_set: Sequence[str] | None, alpha: float | None) -> str:
    """The prediction set as one Markdown line, for the screen, the API and the PDF.

    ``"**90 % set:** Bacterial Pneumonia, Viral Pneumonia · **uncertain**"``; ``NO_SETS``
    when the model has no conformal section.
    """
    if prediction_set is None or alpha is None:
        return NO_SETS
    line = f"**{set_caption(alpha)}:** {', '.join(prediction_set)}"
    return line + (" · ⚠️ **uncertain**" if len(prediction_set) > 1 else " · certain")


def percent(share: float) -> str:
    """0.617 → '62 %'."""
    return f"{round(100 * share)} %"


def versus_flat(prediction: Prediction, share: float) -> str:
    """' (1.3× a flat map)': the share against a flat map over what the network saw, which
    scores the lungs' area share there ('' when that is unknown)."""
    flat = prediction.flat_lung_share()
    return f" ({share / flat:.1f}× a flat map)" if flat else ""


def lung_line(prediction: Prediction, class_name: str) -> str:
    """The line beside the overlay: '62 % of this heatmap lies on the lungs' for ``class_name``,
    'Lung fields not found …' without them, '' when no segmenter is loaded."""
    if prediction.lungs is None:
        return ""
    share = prediction.lung_share(prediction.class_index(class_name))
    if share is None:
        return f"{NOT_FOUND.capitalize()}: no on-lung share for this heatmap."
    line = f"{percent(share)} of this heatmap lies on the lungs" + versus_flat(prediction, share)
    if class_name == prediction.top_label and off_lungs(prediction):
        line += f" — ⚠️ {OFF_LUNGS}"
    return line


def lung_warning(prediction: Prediction) -> str:
    """The off-lungs warning for the top class, or '' when its share is high or unknown."""
    if not off_lungs(prediction):
        return ""
    share = percent(prediction.lung_share(prediction.top_index))
    top = prediction.top_label
    return f"Only {share} of the {top} heatmap (the top class) lies on the lungs: {OFF_LUNGS}."


def lung_summary(prediction: Prediction) -> str:
    """Every class's share in one line ('' without a segmenter), for notes and reports."""
    if prediction.lungs is None:
        return ""
    if not prediction.lungs.found:
        return f"Heatmap on the lungs: {NOT_FOUND}."
    cells = [f"{name} {percent(share)}" for name, share in shares(prediction).items()]
    flat = prediction.flat_lung_share()
    baseline = f"; a flat map over what the model saw: {percent(flat)}" if flat else ""
    return "Heatmap on the lungs (share of each class's map): " + " · ".join(cells) + baseline + "."


def lung_notes(prediction: Prediction, mark: str = "⚠️ ") -> list[str]:
    """What the screen and the report add about the lungs: the per-class summary, the crop
    note when the model saw only the lung region, and the off-lungs warning (after ``mark``)."""
    lines = [line for line in (lung_summary(prediction),) if line]
    if prediction.cropped:
        lines.append(CROPPED)
    if text := lung_warning(prediction):
        lines.append(f"{mark}{text}")
    return lines
