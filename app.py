"""LungCAM: what does a chest X-ray classifier look at? (research demo, not a diagnostic device)

The screen only. The work is in ``model.predictor`` (image → probabilities + every class's
Grad-CAM), ``imaging.load`` (any upload → grayscale) and ``imaging.overlay`` (drawing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gradio as gr
import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from explain.contrastive import CONFUSABLE
from explain.methods import DEFAULT_METHOD, METHODS, TARGET_LAYERS
from explain.views import (
    contrast_overlay,
    faithfulness_line,
    method_hint,
    method_overlay,
    side_by_side,
)
from imaging.image import ImageInputError, LoadedImage
from imaging.load import load_image
from imaging.overlay import COLORMAPS, overlay
from model.checkpoint import CheckpointError
from model.ood import OODCheck, describe
from model.predictor import Prediction, Predictor
from review.auth import parse_auth
from review.report import write_case_report, write_reviews_csv
from review.store import AGREEMENTS, ROW_COLUMNS, ReviewStore, draft_from_prediction
from serving.runtime import configure_storage, data_dir, limit_malloc_arenas, make_predict

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "100mb"
# Overlays are shown at the upload's own resolution; as PNG a 2048² overlay took ~740 ms to
# encode against 12 ms as JPEG (docs/BENCHMARKS.md). Lossless PNGs: Explain tab downloads.
DISPLAY_FORMAT = "jpeg"
TQDM = gr.Progress(track_tqdm=True)  # shows Score-CAM's own tqdm progress bar
DISCLAIMER = (
    "**Research demo — not a diagnostic device.** Outputs are not medical advice and must not "
    "guide patient care. The model was trained on a small public dataset whose classes come "
    "from different hospitals, so it may have learned the source instead of the disease."
)


def describe_input(image: LoadedImage, ood: OODCheck | None = None) -> str:
    """Non-identifying facts about the upload and any warnings (incl. not-a-chest-X-ray)."""
    facts = [f"{image.size[0]}×{image.size[1]} px, {image.source_format} ({image.original_mode})"]
    facts += [
        f"{key}: {value}" for key, value in image.metadata.items() if key not in ("format", "mode")
    ]
    notes = [*image.notes, describe(ood)] if ood and ood.warn else image.notes
    warnings = "".join(f"\n\n⚠️ {note}" for note in notes)
    return " · ".join(facts) + warnings


def build_demo(
    predictor: Predictor, max_batch_size: int = 8, store: ReviewStore | None = None
) -> gr.Blocks:
    """The whole screen, wired to ``predictor``; ``max_batch_size`` requests share a forward.

    Reviews go to ``store`` (default: ``$DATABASE_URL``, else SQLite in the data folder).
    """
    labels = predictor.config.label_names
    store = store or ReviewStore.open(data_dir())
    exports = store.data_dir / "exports"
    predict = make_predict(predictor, max_batch_size)

    def draw(prediction: Prediction, class_name: str, opacity: float, colormap: str) -> np.ndarray:
        index = labels.index(class_name)
        return overlay(prediction.image.pixels, prediction.heatmap(index), opacity, colormap)

    def analyze(path: str | None, opacity: float, colormap: str):
        if path is None:
            raise gr.Error("Upload a chest X-ray (PNG, JPEG or DICOM) first.")
        try:
            image = load_image(path)
        except ImageInputError as err:
            raise gr.Error(str(err)) from err
        prediction = predict(image)
        top = prediction.top_label
        return (
            prediction.confidences(),
            draw(prediction, top, opacity, colormap),
            gr.update(value=top),
            describe_input(image, prediction.ood),
            prediction,
        )

    def redraw(prediction: Prediction | None, class_name: str, opacity: float, colormap: str):
        if prediction is None:
            return None
        return draw(prediction, class_name, opacity, colormap)

    def reviewed_prediction(path: str | None, cached: Prediction | None) -> Prediction:
        # The cached prediction when it is of the image sent; a fresh one for API callers.
        if path is None:
            if cached is None:
                raise gr.Error("Upload a chest X-ray (or send one with the review) first.")
            return cached
        image = load_image(path)
        if cached is not None and np.array_equal(cached.image.pixels, image.pixels):
            return cached
        return predict(image)

    def save_review(
        image: str | None,
        shown_class: str | None,
        agreement: str | None,
        correct_class: str | None,
        heatmap_usefulness: float,
        heatmap_wrong_place: bool,
        note: str | None,
        reviewer: str | None,
        store_image: bool,
        review_id: str | None,
        cached: Prediction | None,
        request: gr.Request,
    ):
        try:
            prediction = reviewed_prediction(image, cached)
            draft = draft_from_prediction(
                prediction,
                predictor.config,
                shown_class=shown_class,
                agreement=agreement,
                correct_class=correct_class,
                heatmap_usefulness=heatmap_usefulness,
                heatmap_wrong_place=heatmap_wrong_place,
                note=note,
                reviewer=request.username or reviewer or "",
                review_id=review_id,
            )
            saved, created = store.add(draft, prediction.image.pixels if store_image else None)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        verb = "Saved" if created else "Already saved (same review_id)"
        return f"{verb}: review `{saved.review_id}` by {saved.reviewer}.", (saved, prediction)

    def make_report(last: tuple | None, opacity: float, colormap: str) -> str:
        if last is None:
            raise gr.Error("Save the review first: the report includes it.")
        review, prediction = last
        drawn = draw(prediction, review.shown_class, opacity, colormap)
        path = exports / f"review-{review.review_id}.pdf"
        return str(write_case_report(path, review, prediction.image.pixels, drawn, DISCLAIMER))

    def filtered(class_name: str, agreement: str, reviewer: str):
        return store.list(
            predicted_class=None if class_name == "All" else class_name,
            agrees=None if agreement == "All" else agreement == "agree",
            reviewer=(reviewer or "").strip() or None,
        )

    def history(class_name: str, agreement: str, reviewer: str) -> list[list]:
        return [list(r.as_row().values()) for r in filtered(class_name, agreement, reviewer)]

    def export_csv(class_name: str, agreement: str, reviewer: str) -> str:
        return str(write_reviews_csv(exports, filtered(class_name, agreement, reviewer)))

    def explained(view, prediction: Prediction | None, *choices):
        # Any Explain-tab view of the cached prediction; bad choices become gr.Error.
        if prediction is None:
            raise gr.Error("Analyze an image first (Analyze tab).")
        try:
            return view(predictor, prediction, *choices)
        except ValueError as err:
            raise gr.Error(str(err)) from err

    def explain_one(
        prediction, method, class_name, layer, opacity, colormap, contour, progress=TQDM
    ):
        look = (opacity, colormap, contour, exports / "heatmaps")
        return explained(method_overlay, prediction, method, class_name, layer, *look)

    def compare(prediction, methods, class_name, layer, opacity, colormap, contour, progress=TQDM):
        look = (opacity, colormap, contour)
        return explained(side_by_side, prediction, methods, class_name, layer, *look)

    def contrasted(prediction, class_a, class_b, opacity, colormap, contour):
        look = (opacity, colormap, contour)
        return explained(contrast_overlay, prediction, class_a, class_b, *look)

    def faithfulness(prediction, method, class_name, layer, progress=TQDM):
        return explained(faithfulness_line, prediction, method, class_name, layer)

    def method_hint_of(method_name: str, target_layer: str) -> str:
        return method_hint(predictor, method_name, target_layer)

    with gr.Blocks(title="LungCAM", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# LungCAM — where does the chest X-ray classifier look?")
        gr.Markdown(DISCLAIMER)
        if not predictor.config.trained:
            gr.Markdown("## ⚠️ This model is UNTRAINED (random weights): its outputs mean nothing.")
        with gr.Tab("Analyze"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Chest X-ray (PNG, JPEG, DICOM …)", type="filepath")
                    run = gr.Button("Analyze", variant="primary")
                    examples = sorted((ASSETS / "examples").glob("*.jpg"))
                    if examples:
                        gr.Examples(
                            [[str(p)] for p in examples],
                            inputs=[upload],
                            label="Examples from the lung5 test split",
                        )
                    notes = gr.Markdown()
                with gr.Column():
                    confidences = gr.Label(
                        label="Calibrated confidence", num_top_classes=len(labels)
                    )
                    heatmap = gr.Image(
                        label="Grad-CAM overlay",
                        format=DISPLAY_FORMAT,
                        type="numpy",
                        interactive=False,
                    )
                    shown_class = gr.Dropdown(labels, value=labels[0], label="Heatmap for class")
                    with gr.Row():
                        opacity = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Opacity")
                        colormap = gr.Dropdown(sorted(COLORMAPS), value="jet", label="Colormap")
                    with gr.Group():
                        gr.Markdown("### Your review of this case")
                        agreement = gr.Radio(list(AGREEMENTS), label="Agree with the top class?")
                        correct_class = gr.Dropdown(
                            labels, value=None, label="Correct class (read only when you disagree)"
                        )
                        usefulness = gr.Slider(1, 5, value=3, step=1, label="Heatmap usefulness")
                        wrong_place = gr.Checkbox(label="Heatmap looks at the wrong place")
                        note = gr.Textbox(label="Note", lines=2)
                        reviewer = gr.Textbox(label="Reviewer name (ignored when logged in)")
                        store_image = gr.Checkbox(
                            label="Store the image too (otherwise only its sha256 is kept)"
                        )
                        review_id = gr.Textbox(visible=False, label="review_id")
                        with gr.Row():
                            save = gr.Button("Save review", variant="primary")
                            report = gr.Button("PDF report")
                        review_status = gr.Markdown()
                        report_file = gr.File(label="Case report (PDF)")
            gr.Markdown(f"Model: `{predictor.description}` · device: `{predictor.device}`")
        with gr.Tab("Explain"):
            gr.Markdown(
                "Other CAM methods, finer layers, side-by-side and contrastive views and a "
                "faithfulness score for the analyzed image. Opacity and colormap: Analyze tab."
            )
            with gr.Row():
                with gr.Column():
                    method = gr.Dropdown(list(METHODS), value=DEFAULT_METHOD, label="Method")
                    layer = gr.Dropdown(
                        list(TARGET_LAYERS),
                        value=predictor.config.target_layer,
                        label="Target layer (earlier blocks: finer maps)",
                    )
                    explain_class = gr.Dropdown(labels, value=labels[0], label="Class")
                    contour = gr.Checkbox(label="Outline the top-10 % activation region")
                    hint = gr.Markdown()
                    with gr.Row():
                        show = gr.Button("Explain", variant="primary")
                        faithful = gr.Button("Faithfulness (ROAD, ~10 s)")
                    faith_text = gr.Markdown()
                with gr.Column():
                    explained_image = gr.Image(
                        label="Overlay", format=DISPLAY_FORMAT, type="numpy", interactive=False
                    )
                    pngs = gr.File(label="Heatmap and overlay (PNG)", file_count="multiple")
            compared = gr.CheckboxGroup(
                list(METHODS), value=["Grad-CAM", "Grad-CAM++", "LayerCAM"], label="2–4 methods"
            )
            compare_button = gr.Button("Compare side by side")
            gallery = gr.Gallery(label="Same image and class", columns=4, format=DISPLAY_FORMAT)
            with gr.Row():
                class_a = gr.Dropdown(labels, value=CONFUSABLE[2], label="Why class A …")
                class_b = gr.Dropdown(labels, value=CONFUSABLE[1], label="… rather than class B")
                contrast_button = gr.Button("Contrast A vs B")
            contrast_image = gr.Image(
                label="Where the image speaks for A rather than B",
                format=DISPLAY_FORMAT,
                type="numpy",
                interactive=False,
            )
        with gr.Tab("History") as history_tab:
            with gr.Row():
                class_filter = gr.Dropdown(["All", *labels], value="All", label="Predicted class")
                agreement_filter = gr.Radio(["All", *AGREEMENTS], value="All", label="Agreement")
                reviewer_filter = gr.Textbox(label="Reviewer (exact name; empty = all)")
            table = gr.Dataframe(headers=list(ROW_COLUMNS), interactive=False, wrap=True)
            with gr.Row():
                refresh = gr.Button("Refresh")
                export = gr.Button("Export these rows as CSV")
            csv_file = gr.File(label="CSV")
        with gr.Tab("Model card"):
            card = ASSETS / "MODEL_CARD.md"
            gr.Markdown(card.read_text() if card.is_file() else "No model card bundled.")

        cached = gr.State()
        outputs = [confidences, heatmap, shown_class, notes, cached]
        batched = {"concurrency_limit": max_batch_size, "concurrency_id": "predict"}
        run.click(analyze, [upload, opacity, colormap], outputs, api_name="predict", **batched)
        upload.upload(analyze, [upload, opacity, colormap], outputs, api_name=False, **batched)
        style = [cached, shown_class, opacity, colormap]
        shown_class.input(redraw, style, heatmap, api_name=False)
        colormap.input(redraw, style, heatmap, api_name=False)
        opacity.release(redraw, style, heatmap, api_name=False)
        look = [opacity, colormap, contour]
        choice = [cached, method, explain_class, layer]
        gr.on([method.input, layer.input], method_hint_of, [method, layer], hint, api_name=False)
        show.click(explain_one, [*choice, *look], [explained_image, pngs], api_name="explain")
        compare_button.click(
            compare, [cached, compared, explain_class, layer, *look], gallery, api_name=False
        )
        contrast_button.click(
            contrasted, [cached, class_a, class_b, *look], contrast_image, api_name=False
        )
        faithful.click(faithfulness, choice, faith_text, api_name=False)

        last_review = gr.State()
        review_inputs = [upload, shown_class, agreement, correct_class, usefulness, wrong_place]
        review_inputs += [note, reviewer, store_image, review_id, cached]
        save.click(save_review, review_inputs, [review_status, last_review], api_name="review")
        report.click(make_report, [last_review, opacity, colormap], report_file, api_name="report")
        filters = [class_filter, agreement_filter, reviewer_filter]
        refreshers = [refresh.click, class_filter.input, agreement_filter.input]
        refreshers += [reviewer_filter.submit, history_tab.select, demo.load]
        gr.on(refreshers, history, filters, table, api_name=False)
        export.click(export_csv, filters, csv_file, api_name="export_csv")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the LungCAM app.")
    parser.add_argument(
        "--model",
        help="checkpoint folder, .pt/.pth, or hf-hub:org/name "
        "(default: $LUNGCAM_MODEL, else the bundled model)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="concurrent requests per forward (1: off)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model trunk")
    args = parser.parse_args(argv)
    limit_malloc_arenas()
    configure_storage()
    try:
        predictor = Predictor.load(args.model, args.device, compile=args.compile)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        auth = parse_auth()  # $LUNGCAM_AUTH: required on any public host that stores reviews
        store = ReviewStore.open(data_dir())
    except (OSError, ValueError, SQLAlchemyError) as err:
        parser.exit(2, f"error: {err}\n")
    demo = build_demo(predictor, args.max_batch_size, store)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        auth=auth,
        allowed_paths=[str(store.data_dir / "exports")],
    )


if __name__ == "__main__":
    main()
