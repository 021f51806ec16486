"""Exports of reviews: a one-page PDF per case (fpdf2), the reviewer's marks drawn on the
film, and CSV of the History tab's rows.

Both are written into the folder the caller names: in the app, a folder of the requester's
own (``serving.access.OwnerFolders``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from explain.verdict import set_caption
from imaging.overlay import DEFAULT_COLORMAP, colorbar, draw_marks
from review.marks import energy_text, marks_summary, peak_text
from review.schema import ROW_COLUMNS, Review

if TYPE_CHECKING:  # fpdf loads with the first report, not at the app's start
    from fpdf import FPDF

FONT = "DejaVu"  # bundled (assets/fonts, with its licence): Unicode notes render everywhere
FONTS = Path(__file__).resolve().parent.parent / "assets" / "fonts"
PAGE_WIDTH_MM = 210
MARGIN_MM = 15
WIDTH_MM = PAGE_WIDTH_MM - 2 * MARGIN_MM
# A cell, or any line of it, starting with one of these is run as a formula by spreadsheets.
CSV_FORMULA_LINE = re.compile(r"(^|\r\n|\r|\n)(?=[=+\-@\t\r])")


@dataclass(frozen=True)
class CaseReport:
    """What one case's PDF shows: the stored review, and the pictures the screen drew for it.

    ``image`` is the film, (H, W) uint8 grayscale; ``overlay`` the heatmap of the class the
    reviewer saw over it, (h, w, 3) uint8 RGB drawn with ``colormap`` at any scale. Either may
    be None (a past case reopened without its image); the review's marks are drawn on both when
    the film is given. ``warning`` (e.g. "Not a chest X-ray?") is headlined above the
    probabilities instead of the class, with ``warnings`` (the reasons) under it.
    ``disclaimer`` is Markdown; ``lungs`` are plain lines about the heatmaps' share on the lung
    fields (``explain.verdict.lung_notes``).
    """

    review: Review
    disclaimer: str
    image: np.ndarray | None = None
    overlay: np.ndarray | None = None
    colormap: str = DEFAULT_COLORMAP
    warning: str | None = None
    warnings: Sequence[str] = ()
    lungs: Sequence[str] = ()


def write_case_report(path: str | Path, case: CaseReport) -> Path:
    """One-page PDF of ``case`` at ``path``: the film and its overlay with the reviewer's
    marks, the probabilities, the review and its heatmap scores, the model."""
    pdf = _new_page()
    _title(pdf, case.disclaimer)
    _pictures(pdf, case)
    _probabilities(pdf, case)
    _review(pdf, case.review)
    _case_and_model(pdf, case)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(out))
    return out


def _new_page() -> FPDF:
    from fpdf import FPDF

    pdf = FPDF(format="A4", unit="mm")
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(auto=True, margin=MARGIN_MM)
    pdf.add_font(FONT, "", FONTS / "DejaVuSans.ttf")
    pdf.add_font(FONT, "B", FONTS / "DejaVuSans-Bold.ttf")
    pdf.add_page()
    return pdf


def _title(pdf: FPDF, disclaimer: str) -> None:
    pdf.set_font(FONT, "B", 16)
    pdf.cell(WIDTH_MM, 9, "LungCAM case review", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 8.5)
    pdf.multi_cell(WIDTH_MM, 4.5, disclaimer, markdown=True, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _pictures(pdf: FPDF, case: CaseReport) -> None:
    """The film and the overlay side by side, the marks on both, the colour bar under the
    overlay."""
    review = case.review
    side = (WIDTH_MM - 6) / 2
    top = pdf.get_y()
    captions = ("Original (grayscale)", f"{review.cam_method} for {review.shown_class}")
    pictures = (case.image, case.overlay)
    for column, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        x = MARGIN_MM + column * (side + 6)
        pdf.set_xy(x, top)
        pdf.set_font(FONT, "B", 9)
        pdf.cell(side, 5, caption)
        if picture is None:
            pdf.set_xy(x, top + 6)
            pdf.set_font(FONT, "", 9)
            pdf.multi_cell(side, 5, "not stored with this review")
            continue
        printed = _marked(_fit(picture), review.marks, case.image)
        pdf.image(printed, x=x, y=top + 6, w=side, h=side, keep_aspect_ratio=True)
    if case.overlay is not None:  # the heatmap's scale, under the overlay
        x = MARGIN_MM + side + 6
        bar = Image.fromarray(colorbar(case.colormap, 256, 8))
        pdf.image(bar, x=x + 10, y=top + side + 7.5, w=side - 20, h=2.5)
        pdf.set_font(FONT, "", 7.5)
        pdf.set_xy(x, top + side + 6.5)
        pdf.cell(10, 4.5, "low")
        pdf.set_xy(x + side - 10, top + side + 6.5)
        pdf.cell(10, 4.5, "high", align="R")
    pdf.set_xy(MARGIN_MM, top + side + 12)


def _probabilities(pdf: FPDF, case: CaseReport) -> None:
    """The warning headline (if any), the calibrated probabilities as bars, the set."""
    review = case.review
    if case.warning:
        pdf.set_font(FONT, "B", 14)
        pdf.set_text_color(170, 30, 30)
        pdf.cell(WIDTH_MM, 8, case.warning, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, "", 8.5)
        for reason in case.warnings:
            pdf.multi_cell(WIDTH_MM, 4.5, reason, new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        _heading(pdf, "Calibrated probabilities (shown anyway; read them with care)")
    else:
        _heading(pdf, "Calibrated probabilities")
    bar_width = WIDTH_MM - 70
    for label, probability in review.probabilities.items():
        pdf.set_font(FONT, "B" if label == review.predicted_class else "", 9)
        pdf.cell(50, 5.5, label)
        pdf.cell(20, 5.5, f"{probability:.1%}", align="R")
        y = pdf.get_y() + 1.2
        pdf.set_fill_color(225, 225, 225)
        pdf.rect(pdf.get_x() + 3, y, bar_width - 3, 3, style="F")
        pdf.set_fill_color(40, 90, 170)
        pdf.rect(pdf.get_x() + 3, y, (bar_width - 3) * probability, 3, style="F")
        pdf.ln(5.5)
    _facts(pdf, [("Conformal prediction set", prediction_set_text(review))])


def _review(pdf: FPDF, review: Review) -> None:
    _heading(pdf, "Review")
    verdict = "agrees with the model" if review.agrees else f"disagrees: {review.correct_class}"
    row = review.as_row()
    facts = [
        ("Reviewer", review.reviewer),
        ("Time (UTC)", row["created_at_utc"]),
        ("Verdict", f"{verdict} (model: {review.predicted_class})"),
        ("Heatmap usefulness", _rating(review.heatmap_usefulness)),
        ("Heatmap in the wrong place", "yes" if review.heatmap_wrong_place else "no"),
        ("Marks", marks_summary(review)),
    ]
    if review.hit_shown is not None:
        facts += [
            ("Heatmap peak in marks", peak_text(review)),
            ("Heatmap energy in marks", energy_text(review)),
        ]
    _facts(pdf, [*facts, ("Note", review.note or "-")])


def _case_and_model(pdf: FPDF, case: CaseReport) -> None:
    review = case.review
    _heading(pdf, "Case and model")
    _facts(
        pdf,
        [
            ("Review id", review.review_id),
            ("Image sha256", review.image_sha256),
            ("Model", f"{review.model_name} · {review.model_version}"),
            ("Checkpoint sha256", review.checkpoint_sha256 or "none (untrained weights)"),
            *(("Lung fields" if i == 0 else "", line) for i, line in enumerate(case.lungs)),
        ],
    )


def prediction_set_text(review: Review) -> str:
    """ "90 % set: A, B (uncertain)" for the PDF; a review without a stored set says so."""
    if review.prediction_set is None or review.set_alpha is None:
        return "none stored (the model had no conformal section, or the review predates sets)"
    badge = "uncertain" if len(review.prediction_set) > 1 else "certain"
    return f"{set_caption(review.set_alpha)}: {', '.join(review.prediction_set)} ({badge})"


def reviews_csv(reviews: Iterable[Review]) -> str:
    """CSV text of ``reviews`` (header = ``ROW_COLUMNS``), RFC 4180: rows end in CRLF, and a
    cell holding a comma, a quote, CR or LF is quoted, so no line break inside a note can
    split its row.

    Each line of a text cell that a spreadsheet would run as a formula gets a leading
    apostrophe (``=``, ``+``, ``-``, ``@``, tab or CR first, also after a line break).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for review in reviews:
        writer.writerow({key: _cell(value) for key, value in review.as_row().items()})
    return buffer.getvalue()


def write_reviews_csv(folder: str | Path, reviews: Iterable[Review]) -> Path:
    """Write ``reviews_csv`` to ``folder/reviews-<content hash>.csv`` and return the path.

    Naming by content means two users exporting at once never overwrite each other's file and
    repeated identical exports reuse one file.
    """
    text = reviews_csv(reviews)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    out = Path(folder) / f"reviews-{digest}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8", newline="")
    return out


def _cell(value: object) -> object:
    if isinstance(value, str):
        return CSV_FORMULA_LINE.sub(r"\1'", value)
    return value


def _fit(picture: np.ndarray, longest: int = 1024) -> np.ndarray:
    # Keep the PDF small: a 3000 px radiograph is downscaled for print.
    image = Image.fromarray(picture)
    image.thumbnail((longest, longest))
    return np.asarray(image)


def _marked(
    picture: np.ndarray, marks: list[list[float]] | None, film: np.ndarray | None
) -> Image.Image:
    """``picture`` (any scale of ``film``) with the marks (film pixels) drawn, as RGB."""
    if not marks or film is None:
        return Image.fromarray(picture)
    rgb = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2)
    return Image.fromarray(draw_marks(rgb, marks, picture.shape[1] / film.shape[1]))


def _rating(score: int | None) -> str:
    return "not rated" if score is None else f"{score} / 5"


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(2)
    pdf.set_font(FONT, "B", 11)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")


KEY_WIDTH_MM = 55


def _facts(pdf: FPDF, facts: list[tuple[str, str]]) -> None:
    # Keys get their own column, never overlapped by the value; a 64-hex-digit hash is set
    # in a smaller font so it stays on one line (a wrapped hash cannot be copied or compared).
    for key, value in facts:
        pdf.set_font(FONT, "B", 9)
        if pdf.get_string_width(key) > KEY_WIDTH_MM - 2:
            raise ValueError(f"PDF label {key!r} is wider than its {KEY_WIDTH_MM} mm column")
        pdf.cell(KEY_WIDTH_MM, 5, key)
        text = str(value)
        size = 9.0
        pdf.set_font(FONT, "", size)
        if re.fullmatch(r"[0-9a-f]{16,64}", text):
            while size > 5 and pdf.get_string_width(text) > WIDTH_MM - KEY_WIDTH_MM - 1:
                size -= 0.5
                pdf.set_font(FONT, "", size)
        pdf.multi_cell(WIDTH_MM - KEY_WIDTH_MM, 5, text, new_x="LMARGIN", new_y="NEXT")
