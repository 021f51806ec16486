"""Per-case PDF (rendered with poppler's pdftoppm, read back with pdftotext) and CSV export."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imaging.load import load_image
from imaging.overlay import overlay
from review.report import reviews_csv, write_case_report, write_reviews_csv
from review.store import ROW_COLUMNS, ReviewStore, pixels_sha256
from tests.conftest import lung5_images
from tests.test_review_store import make_draft

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
    pdf = write_case_report(tmp_path / "case.pdf", review, pixels, drawn, DISCLAIMER)

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
    from imaging.image import LoadedImage
    from model import lung_share
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
        share = lung_share.percent(prediction.lung_share(3))
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
    pdf = write_case_report(
        tmp_path / "w.pdf", review, pixels, drawn, DISCLAIMER, "Not a chest X-ray?", reasons
    )
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
    reopened = write_case_report(tmp_path / "r.pdf", review, None, None, DISCLAIMER)
    assert reopened.read_bytes().startswith(b"%PDF")
