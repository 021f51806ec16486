"""A real browser against the running app: Debian's Chromium driven by Playwright.

No browser is downloaded (never ``playwright install``): Playwright launches
``/usr/bin/chromium`` (``$LUNGCAM_CHROMIUM`` overrides) with a fresh profile. The screenshots
land in ``tests/artifacts/`` (git-ignored) for CI to keep. The app serves a tiny random-weight
checkpoint (fast); ``$LUNGCAM_BROWSER_MODEL`` serves another one instead, which is how the
README's screenshots of the bundled model are made::

    LUNGCAM_BROWSER_MODEL=assets/model .venv/bin/python -m pytest -q tests/test_browser.py
    cp tests/artifacts/browser-analyze.png docs/screenshot.png   # and -review, -not-chest
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.conftest import REPO, start_app

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LUNGCAM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """(page, data folder): a fresh Chromium profile on a freshly started app."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        if os.environ.get("LUNGCAM_REQUIRE_ALL"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; install Debian's chromium package")
        pytest.skip(f"Chromium not found at {CHROMIUM}")

    data = tmp_path_factory.mktemp("data")
    env = {"LUNGCAM_DATA_DIR": str(data), "GRADIO_TEMP_DIR": ""}  # "": the default, in data
    model = Path(os.environ.get("LUNGCAM_BROWSER_MODEL") or tiny_checkpoint).resolve()
    process, url = start_app(model, env=env)
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("profile")),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000},  # the screen the layout is made for
            )
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(url)
            yield page, data
            context.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_upload_shows_label_and_heatmap_and_switching_class_redraws(browser_page):
    page, data = browser_page
    example = sorted((REPO / "assets" / "examples").glob("*.jpg"))[0]
    page.locator("input[type=file]").first.set_input_files(str(example))

    label = page.get_by_test_id("label-output-value")
    label.wait_for()
    top = label.inner_text().strip()
    labels = ["Bacterial Pneumonia", "COVID-19", "Normal", "Tuberculosis", "Viral Pneumonia"]
    assert top in labels
    viewer = page.locator(".block", has=page.get_by_text("Film | Grad-CAM")).locator("img")
    expect(viewer).to_have_count(2)  # the film and its overlay, one slider apart
    heatmap = viewer.last
    first_src = heatmap.get_attribute("src")
    assert f"file={data}" in first_src  # Gradio's cache lives in $LUNGCAM_DATA_DIR
    size = heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [224, 224]  # the example's own resolution, not the model's input
    for shown in (label, page.locator("#prediction-set"), heatmap,
                  page.get_by_role("button", name="Save review")):  # fmt: skip
        box = shown.bounding_box()  # all in view at 1400 × 1000, without scrolling
        assert box is not None and box["y"] + box["height"] <= 1000, box
    assert not page.get_by_text("Overlay at the upload's own resolution").is_visible()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)  # let the progress overlays fade before the screenshot
    shot = ARTIFACTS / "browser-analyze.png"
    page.screenshot(path=str(shot), full_page=True)  # the top class, as the README shows it
    assert shot.stat().st_size > 10_000

    other = next(name for name in labels if name != top)
    page.get_by_label("Heatmap for class").click()
    page.get_by_role("option", name=other).click()
    expect(heatmap).not_to_have_attribute("src", first_src, timeout=TIMEOUT_MS)
    assert page.get_by_label("Heatmap for class").input_value() == other


def _colour_photo(folder: Path) -> Path:
    pixels = np.zeros((160, 160, 3), np.uint8)
    pixels[..., 0], pixels[40:120, 40:120, 2] = 230, 200  # a saturated colour picture
    path = folder / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_walk_two_cases_one_review_each_and_a_non_chest_headline(browser_page, tmp_path):
    page, _ = browser_page
    page.reload()
    labels = ["Bacterial Pneumonia", "COVID-19", "Normal", "Tuberculosis", "Viral Pneumonia"]
    label = page.get_by_test_id("label-output-value")

    # A: an example thumbnail is analysed on click; review it.
    gallery = page.locator(".block", has=page.get_by_text("Examples (lung5 test split)"))
    gallery.locator("img").first.click()
    expect(label).to_have_text(re.compile("|".join(map(re.escape, labels))), timeout=TIMEOUT_MS)
    expect(page.get_by_text("low", exact=True).first).to_be_visible(
        timeout=TIMEOUT_MS
    )  # the colour bar
    page.get_by_label("agree", exact=True).check()
    page.get_by_label("Note").fill("case A")
    page.get_by_label("Reviewer name", exact=False).fill("dr-browser")
    page.get_by_role("button", name="Save review").click()
    expect(page.get_by_text("Saved: review")).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Save review").click()  # twice: refused, not duplicated
    expect(page.get_by_text("Already saved")).to_be_visible(timeout=TIMEOUT_MS)

    # B: a new upload is a new case: empty form, no "Saved" line, no PDF of A.
    gallery.locator("img").last.click()
    expect(page.get_by_text("Already saved")).to_have_count(0, timeout=TIMEOUT_MS)
    expect(page.get_by_label("Note")).to_have_value("", timeout=TIMEOUT_MS)
    assert not page.get_by_label("agree", exact=True).is_checked()
    page.get_by_role("button", name="PDF report").click()
    expect(page.get_by_text("Save the review first").first).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_label("agree", exact=True).check()
    page.get_by_role("button", name="Save review").click()
    saved_b = page.get_by_text("Saved: review")
    expect(saved_b).to_be_visible(timeout=TIMEOUT_MS)
    review_b = re.search(r"review (\w+)", saved_b.inner_text()).group(1)
    page.get_by_role("button", name="PDF report").click()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)
    try:
        report_block = page.locator(".block", has=page.get_by_text("Case report (PDF)")).first
        expect(report_block).to_contain_text(f"review-{review_b}", timeout=TIMEOUT_MS)
    finally:
        page.screenshot(path=str(ARTIFACTS / "browser-review.png"), full_page=True)

    # A colour picture: the headline is the warning, not a class.
    page.get_by_label("Clear").first.click()  # empty the upload box, then upload
    page.locator("input[type=file]").first.set_input_files(str(_colour_photo(tmp_path)))
    expect(label).to_have_text("Not a chest X-ray?", timeout=TIMEOUT_MS)
    expect(page.get_by_text("hidden with the class scores").first).to_be_visible(
        timeout=TIMEOUT_MS
    )  # the prediction set is folded away with the bars
    expect(page.get_by_text("Saved: review")).to_have_count(0, timeout=TIMEOUT_MS)
    for close in page.locator(".toast-close").all():  # B's "save first" toast, long answered
        close.click()
    page.wait_for_timeout(1000)  # let the progress overlays fade before the screenshot
    page.screenshot(path=str(ARTIFACTS / "browser-not-chest.png"), full_page=True)


def test_a_broken_file_after_a_good_film_empties_every_output_with_one_error(
    browser_page, tmp_path
):
    page, data = browser_page
    page.reload()
    label = page.get_by_test_id("label-output-value")
    viewer = page.locator(".block", has=page.get_by_text("Film | Grad-CAM")).locator("img")
    facts = page.get_by_text("224×224 px")  # the notes' first line
    upload = page.locator("#lungcam-upload")

    example = sorted((REPO / "assets" / "examples").glob("*.jpg"))[0]
    page.locator("input[type=file]").first.set_input_files(str(example))
    expect(label).to_have_count(1, timeout=TIMEOUT_MS)
    expect(viewer).to_have_count(2, timeout=TIMEOUT_MS)  # the film and its overlay
    expect(facts.first).to_be_visible(timeout=TIMEOUT_MS)
    assert example.stem not in upload.inner_text()  # the box never shows a file's own name
    page.get_by_label("agree", exact=True).check()
    page.get_by_label("Note").fill("good film")
    page.get_by_label("Reviewer name", exact=False).fill("dr-browser")
    page.get_by_role("button", name="Save review").click()
    expect(page.get_by_text("Saved: review")).to_be_visible(timeout=TIMEOUT_MS)

    broken = tmp_path / "Doe_Jane_MRN-7731.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    upload.get_by_label("Clear").click()  # how the box takes another file
    upload.locator("input[type=file]").set_input_files(str(broken))
    toasts = page.locator(".toast-body")
    expect(toasts.first).to_contain_text("upload.png: ", timeout=TIMEOUT_MS)
    page.wait_for_timeout(2000)  # any second toast (e.g. a clearing handler's) shows by now
    messages = [text for text in toasts.all_inner_texts() if text.strip()]
    try:
        assert len(messages) == 1 and "not a readable image" in messages[0], messages
        assert "Doe" not in messages[0] and "MRN" not in messages[0]
        expect(label).to_have_count(0)
        expect(viewer).to_have_count(0)
        expect(facts).to_have_count(0)
        expect(page.get_by_text("Saved: review")).to_have_count(0)
        expect(page.get_by_label("Note")).to_have_value("")
        assert "Doe" not in upload.inner_text()
        assert not [p for p in (data / "gradio").rglob("*") if "Doe" in p.name]
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-broken-file.png"), full_page=True)


def _peak(model: Path, film: Path) -> tuple[str, tuple[int, int, int, int]]:
    """(top class, box): the box round the served model's top-class heatmap's peak on
    ``film`` (round all its tied maxima: a coarse map has a plateau)."""
    from imaging.load import load_image
    from model.predictor import Predictor

    prediction = Predictor.load(str(model), "cpu").predict(load_image(str(film)))
    heat = prediction.heatmap(prediction.top_index)
    ys, xs = np.nonzero(heat >= heat.max())
    return prediction.top_label, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def test_walk_mark_the_finding_save_history_hit_pdf_box_then_the_next_case_is_empty(
    browser_page, tiny_checkpoint, tmp_path
):
    """Analyse A → draw a box round the heatmap's peak on the film → save → the status and
    History say the peak lies in the mark → the PDF shows the box → analyse B → no marks."""
    from tests.test_review_report import _mark_coloured, _render

    page, _ = browser_page
    page.reload()
    examples = sorted((REPO / "assets" / "examples").glob("*.jpg"))
    model = Path(os.environ.get("LUNGCAM_BROWSER_MODEL") or tiny_checkpoint).resolve()
    top, (x0, y0, x1, y1) = _peak(model, examples[0])
    page.locator("input[type=file]").first.set_input_files(str(examples[0]))
    expect(page.get_by_test_id("label-output-value")).to_have_text(top, timeout=TIMEOUT_MS)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("tab", name="Mark the finding").click()
    film = page.locator(".block", has=page.get_by_text("Click two opposite corners")).locator("img")
    expect(film).to_have_count(1, timeout=TIMEOUT_MS)
    natural = film.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    box = film.bounding_box()
    for corner_x, corner_y in ((x0 - 2, y0 - 2), (x1 + 2, y1 + 2)):
        at_x = min(max(corner_x, 0), natural[0] - 1) + 0.5
        at_y = min(max(corner_y, 0), natural[1] - 1) + 0.5
        film.click(position={"x": at_x * box["width"] / natural[0],
                             "y": at_y * box["height"] / natural[1]})  # fmt: skip
        page.wait_for_timeout(500)
    expect(page.get_by_text("1 mark (film pixels)")).to_be_visible(timeout=TIMEOUT_MS)
    marked_src = film.get_attribute("src")
    a_film = Image.open(io.BytesIO(page.request.get(marked_src).body()))
    assert _mark_coloured(np.asarray(a_film.convert("RGB")).astype(int)).any()  # A's box
    page.get_by_label("agree", exact=True).check()
    page.get_by_label("Reviewer name", exact=False).fill("dr-marks")
    page.get_by_role("button", name="Save review").click()
    status = page.get_by_text("Saved: review")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        expect(status).to_be_visible(timeout=TIMEOUT_MS)
        assert "The heatmap's peak lies in your mark." in status.inner_text()
    finally:
        page.screenshot(path=str(ARTIFACTS / "browser-marks.png"))

    page.get_by_role("button", name="PDF report").click()
    report = page.locator(".block", has=page.get_by_text("Case report (PDF)")).first
    link = report.locator("a").first
    expect(link).to_have_attribute("href", re.compile("review-"), timeout=TIMEOUT_MS)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(page.request.get(link.get_attribute("href")).body())
    assert _mark_coloured(_render(pdf, tmp_path / "report")).sum() > 50  # the box is drawn

    page.get_by_role("tab", name="History").click()
    label = page.get_by_text("Heatmap peaks in the reviewers' marks")
    hits = page.locator(".block", has=label).last  # the table's own block
    # 1 marked review, its shown heatmap's peak in the mark: 1 hit, a rate of 1
    overall = re.compile(r"all marked reviews\s+shown class\s+1\s+1\s+1\b")
    expect(hits).to_contain_text(overall, timeout=TIMEOUT_MS)

    page.get_by_role("tab", name="Analyze").click()
    page.get_by_label("Clear").first.click()
    page.locator("input[type=file]").first.set_input_files(str(examples[-1]))
    expect(page.get_by_text("No marks: click two opposite corners")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    expect(page.get_by_text("The heatmap's peak lies in your mark.")).to_have_count(0)
    form = page.locator("#review-form")
    assert not form.get_by_label("agree", exact=True).is_checked()
    expect(form.get_by_label("Note")).to_have_value("")
    page.get_by_role("tab", name="Mark the finding").click()
    expect(film).to_have_count(1, timeout=TIMEOUT_MS)
    expect(film).not_to_have_attribute("src", marked_src, timeout=TIMEOUT_MS)
    b_film = Image.open(io.BytesIO(page.request.get(film.get_attribute("src")).body()))
    assert not _mark_coloured(np.asarray(b_film.convert("RGB")).astype(int)).any()  # no box
