"""Per-case PDF (rendered with poppler's pdftoppm, read back with pdftotext) and CSV export."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imaging.load import load_image
from imaging.overlay import MARK_COLOR, overlay
from review.marks import MarkScores
from review.report import CaseReport, reviews_csv, write_case_report, write_reviews_csv
from review.store import ROW_COLUMNS, ReviewStore, pixels_sha256
from tests.conftest import lung5_images
from tests.review_drafts import make_draft

DISCLAIMER = "**Research demo — not a diagnostic device.** Not medical advice."


def _poppler(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("LUNGCAM_REQUIRE_ALL"):
            pytest.fail(f"{tool} (poppler-utils) is missing and LUNGCAM_REQUIRE_ALL is set")
        pytest.skip(f"{tool} (poppler-utils) is not installed")
    return found


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    opened = ReviewStore.open(tmp_path / "data")
    yield opened
    opened.close()


def _case(size: tuple[int, int] | None) -> np.ndarray:
    pixels = load_image(lung5_images("test")[3]).pixels
    return pixels if size is None else np.asarray(Image.fromarray(pixels).resize(size))


def _heatmap(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-(((x - w / 3) / (w / 6)) ** 2 + ((y - h / 2) / (h / 6)) ** 2))


@pytest.mark.parametrize(
    ("size", "changes"),
    [
        (None, {}),
        ((300, 900), {"agreement": "disagree", "correct_class": "Normal", "note": "Ünïcode — ok"}),
        ((2400, 1800), {"heatmap_wrong_place": True, "note": "long note " * 60}),
    ],
)
def test_pdf_first_page_shows_images_probabilities_review_and_disclaimer(
    store, tmp_path, size, changes
):
    pdftoppm, pdftotext = _poppler("pdftoppm"), _poppler("pdftotext")
    pixels = _case(size)
    drawn = overlay(pixels, _heatmap(pixels), 0.5, "jet")
    review, _ = store.add(make_draft(image_sha256=pixels_sha256(pixels), **changes))
    pdf = write_case_report(tmp_path / "case.pdf", CaseReport(review, DISCLAIMER, pixels, drawn))

    subprocess.run(
        [
            pdftoppm,
            "-png",
            "-r",
            "40",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf),
            str(tmp_path / "page"),
        ],
        check=True,
    )
    page = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(int)
    ink = (page.min(axis=2) < 200).mean()
    colour = (page.max(axis=2) - page.min(axis=2) > 80).mean()  # the jet overlay
    assert 0.05 < ink < 0.8, f"page looks blank or solid: {ink:.3f} of pixels are ink"
    assert colour > 0.01, f"no coloured overlay on the page ({colour:.4f})"

    text = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    for needed in (
        "not a diagnostic device",
        "Grad-CAM for Tuberculosis",
        "60.0%",
        "dr-a",
        "densenet201",
        "lung5-v1",
        review.review_id,
        review.image_sha256,  # whole, on one line: a wrapped hash cannot be compared
        "low",
        "high",  # the heatmap's colour bar
    ):
        assert needed in text, f"{needed!r} missing from the PDF text"
    verdict = "disagrees: Normal" if changes.get("agreement") == "disagree" else "agrees"
    assert verdict in text
    wrong = "yes" if changes.get("heatmap_wrong_place") else "no"
    assert f"wrong place {wrong}" in " ".join(text.split())
    if "Ünïcode" in changes.get("note", ""):
        assert "Ünïcode — ok" in text


def test_csv_has_every_column_the_filtered_rows_and_no_live_formulas(store, tmp_path):
    store.add(make_draft(review_id="a", note='=HYPERLINK("http://x")', reviewer="dr-a"))
    store.add(make_draft(review_id="b", note="plain, with comma", reviewer="dr-b"))
    rows = list(csv.DictReader(io.StringIO(reviews_csv(store.list(reviewer="dr-b")))))
    assert [r["review_id"] for r in rows] == ["b"]
    assert rows[0]["note"] == "plain, with comma" and rows[0]["agreement"] == "agree"

    every = list(csv.DictReader(io.StringIO(reviews_csv(store.list()))))
    assert tuple(every[0]) == ROW_COLUMNS
    assert {r["review_id"]: r["note"] for r in every}["a"] == '\'=HYPERLINK("http://x")'


FORMULA_STARTS = ("=", "+", "-", "@", "\t")


@pytest.mark.parametrize(
    ("note", "escaped"),
    [
        ("ok\r=1+1", "ok\r'=1+1"),
        ("ok\n=1+1", "ok\n'=1+1"),
        ("ok\r\n=1+1", "ok\r\n'=1+1"),
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("a\r+b\n-c\r\n@d", "a\r'+b\n'-c\r\n'@d"),
        ("\r=1", "'\r'=1"),
        ('plain, "quoted"', 'plain, "quoted"'),
    ],
)
def test_csv_line_breaks_never_split_a_row_nor_start_a_formula(store, note, escaped):
    """A bare CR, LF or CRLF in a note stays inside its quoted cell, and no line of any cell
    starts like a formula (the spreadsheet reading it may split the cell at any of them)."""
    store.add(make_draft(review_id="a", note=note))
    text = reviews_csv(store.list())
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 2 and rows[0] == list(ROW_COLUMNS)
    assert rows[1][ROW_COLUMNS.index("note")] == escaped
    assert rows[1][ROW_COLUMNS.index("review_id")] == "a"
    lines = re.split(r"\r\n|\r|\n", text)
    starts = [line for line in lines if line.lstrip('"').startswith(FORMULA_STARTS)]
    assert starts == []


def test_csv_file_is_named_by_content_inside_the_folder(store, tmp_path):
    store.add(make_draft(review_id="a"))
    first = write_reviews_csv(tmp_path / "exports", store.list())
    again = write_reviews_csv(tmp_path / "exports", store.list())
    empty = write_reviews_csv(tmp_path / "exports", [])
    assert first == again != empty and first.parent == tmp_path / "exports"
    assert empty.read_text().strip() == ",".join(ROW_COLUMNS)
    assert Path(first).read_text().count("\n") == 2


@pytest.mark.parametrize("found", [True, False])
def test_pdf_states_the_heatmaps_share_on_the_lungs(store, tmp_path, found):
    """The report handler puts every class's on-lung share (or "lung fields not found") and the
    off-lungs warning into the PDF."""
    from explain import verdict
    from imaging.image import LoadedImage
    from model.config import ModelConfig
    from model.lungs import LungMask
    from model.prediction import Prediction
    from ui.review import ReviewHandlers

    pdftotext = _poppler("pdftotext")
    pixels = _case((200, 200))
    labels = list(make_draft().probabilities)
    cams = np.zeros((5, 8, 8), np.float32)
    cams[:, :, 4:] = 1.0  # every class looks at the right half; the "lungs" are the left half
    mask = np.zeros(pixels.shape, bool)
    mask[:, :100] = found
    probabilities = np.array(list(make_draft().probabilities.values()))
    image = LoadedImage(pixels, "PNG", "L")
    lungs = LungMask(mask, found, 0.5, 2)
    prediction = Prediction(labels, probabilities, np.log(probabilities), cams, image, lungs=lungs)
    review, _ = store.add(make_draft(image_sha256=pixels_sha256(pixels)))
    handlers = ReviewHandlers(lambda image: prediction, ModelConfig, store)
    pdf = handlers.make_report((review, prediction), 0.45, "jet", True)
    text = " ".join(
        subprocess.run(
            [pdftotext, pdf, "-"], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert "Lung fields" in text
    if found:
        share = verdict.percent(prediction.lung_share(3))
        assert f"Tuberculosis {share}" in text and "Heatmap on the lungs" in text
        assert "Warning: Only" in text and "markers, borders, devices" in text
    else:
        assert "lung fields not found" in text and "Warning" not in text


def test_pdf_headlines_the_warning_and_labels_never_touch_values(store, tmp_path):
    pdftotext = _poppler("pdftotext")
    pixels = _case(None)
    drawn = overlay(pixels, _heatmap(pixels), 0.5, "jet")
    review, _ = store.add(make_draft(image_sha256=pixels_sha256(pixels), heatmap_usefulness=None))
    reasons = ["This may not be a frontal chest X-ray — the upload is in colour."]
    warned = CaseReport(review, DISCLAIMER, pixels, drawn, "jet", "Not a chest X-ray?", reasons)
    pdf = write_case_report(tmp_path / "w.pdf", warned)
    text = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "Not a chest X-ray?" in text and "upload is in colour" in text
    assert text.index("Not a chest X-ray?") < text.index("Calibrated probabilities")
    assert "not rated" in text
    for line in text.splitlines():  # a label and its value stay at least two spaces apart
        for label in ("Heatmap in the wrong place", "Checkpoint sha256", "Image sha256"):
            if label in line:
                assert line.split(label, 1)[1].startswith("  "), line
    reopened = write_case_report(tmp_path / "r.pdf", CaseReport(review, DISCLAIMER))
    assert reopened.read_bytes().startswith(b"%PDF")


def _render(pdf: Path, out: Path, dpi: int = 100) -> np.ndarray:
    pdftoppm = _poppler("pdftoppm")
    subprocess.run(
        [pdftoppm, "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out)],
        check=True,
    )
    return np.asarray(Image.open(out.with_suffix(".png")).convert("RGB")).astype(int)


def _mark_coloured(page: np.ndarray) -> np.ndarray:
    """Pixels of the marks' colour (``imaging.overlay.MARK_COLOR``, cyan) on a rendered page."""
    red, green, blue = page[..., 0], page[..., 1], page[..., 2]
    target = np.array(MARK_COLOR)
    near = np.abs(page - target).max(axis=2) < 70
    return near & (green - red > 120) & (blue - red > 120)


MARKED = MarkScores(hit_shown=1.0, hit_top=0.0, energy_shown=0.55, energy_top=0.2, energy_flat=0.1)


def test_pdf_draws_the_marks_on_the_film_and_the_overlay(store, tmp_path):
    """The reviewer's box is drawn in the marks' colour where it is on the film (its shape
    kept), on both pictures, and the PDF lists the marks and the heatmap's scores."""
    pixels = _case((400, 300))  # wider than high: x and y cannot be swapped unnoticed
    drawn = overlay(pixels, _heatmap(pixels), 0.5, "inferno")  # inferno holds no cyan
    box = (40.0, 60.0, 240.0, 160.0)
    sha = pixels_sha256(pixels)
    plain, _ = store.add(make_draft(image_sha256=sha))
    marked, _ = store.add(make_draft(image_sha256=sha, marks=[box], scores=MARKED))
    pages = {}
    for name, review in (("plain", plain), ("marked", marked)):
        report = CaseReport(review, DISCLAIMER, pixels, drawn, "inferno")
        pages[name] = _render(write_case_report(tmp_path / f"{name}.pdf", report), tmp_path / name)
    middle = pages["plain"].shape[1] // 2
    before, after = _mark_coloured(pages["plain"]), _mark_coloured(pages["marked"])
    assert not before[:, :middle].any(), "the plain film has no mark colour"
    for half in (slice(0, middle), slice(middle, None)):  # the film, then the overlay
        added = after[:, half] & ~before[:, half]
        assert added.sum() > 200, f"no mark drawn ({added.sum()} px)"
        rows, cols = np.nonzero(added)
        aspect = (cols.max() - cols.min()) / (rows.max() - rows.min())
        assert aspect == pytest.approx((box[2] - box[0]) / (box[3] - box[1]), rel=0.15)
    text = " ".join(
        subprocess.run(
            [_poppler("pdftotext"), str(tmp_path / "marked.pdf"), "-"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    )
    assert "Marks drawn on the film; film pixels x0, y0, x1, y1: [[40, 60, 240, 160]]" in text
    assert "Heatmap peak in marks yes for Tuberculosis (shown)" in text
    assert "55% for Tuberculosis; a flat map: 10%" in text


def test_pdf_of_a_review_without_marks_says_none_or_no_finding(store, tmp_path):
    pdftotext = _poppler("pdftotext")
    for review_id, no_finding, expected in (("a", False, "Marks none"), ("b", True, "no focal")):
        review, _ = store.add(make_draft(review_id=review_id, no_finding=no_finding))
        pdf = write_case_report(tmp_path / f"{review_id}.pdf", CaseReport(review, DISCLAIMER))
        out = subprocess.run([pdftotext, str(pdf), "-"], check=True, capture_output=True, text=True)
        text = " ".join(out.stdout.split())
        assert expected in text and "Heatmap peak in marks" not in text


def test_csv_holds_the_marks_quoted_and_the_scores(store):
    boxes = [(10.0, 20.0, 110.5, 140.0), (0.0, 0.0, 5.0, 5.0)]
    store.add(make_draft(review_id="m", marks=boxes, scores=MARKED))
    store.add(make_draft(review_id="n", no_finding=True))
    text = reviews_csv(store.list())
    assert '"[[10, 20, 110.5, 140], [0, 0, 5, 5]]"' in text  # commas inside: one quoted cell
    rows = {row["review_id"]: row for row in csv.DictReader(io.StringIO(text))}
    marked, none = rows["m"], rows["n"]
    assert json.loads(marked["marks"]) == [list(box) for box in boxes]
    assert (marked["no_focal_finding"], none["no_focal_finding"]) == ("False", "True")
    assert float(marked["hit_shown"]) == MARKED.hit_shown
    assert float(marked["energy_flat"]) == MARKED.energy_flat
    assert none["marks"] == none["hit_shown"] == none["energy_top"] == ""
