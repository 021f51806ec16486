"""LungCAM: what does a chest X-ray classifier look at? (research demo, not a diagnostic device)

The screen only: components and the events that wire them. The handlers live in ``ui/`` (one
module per tab); the work below them in ``model.predictor`` (image → probabilities + every
class's Grad-CAM), ``imaging`` (any upload → grayscale, overlays) and ``review`` (the store).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gradio as gr
from sqlalchemy.exc import SQLAlchemyError

from explain.contrastive import CONFUSABLE
from explain.methods import DEFAULT_METHOD, METHODS, TARGET_LAYERS
from imaging.overlay import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.checkpoint import CheckpointError
from model.predictor import Predictor
from review.agreement import SUMMARY_COLUMNS
from review.auth import parse_auth
from review.store import AGREEMENTS, ROW_COLUMNS, ReviewStore
from serving.runtime import configure_storage, data_dir, limit_malloc_arenas, make_predict
from ui.analyze import AnalyzeHandlers, uncertainty
from ui.common import DISCLAIMER, DISPLAY_FORMAT
from ui.explain import ExplainHandlers
from ui.history import HistoryHandlers
from ui.review import ReviewHandlers

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "100mb"


def build_demo(
    predictor: Predictor, max_batch_size: int = 8, store: ReviewStore | None = None
) -> gr.Blocks:
    """The whole screen, wired to ``predictor``; ``max_batch_size`` requests share a forward.

    Reviews go to ``store`` (default: ``$DATABASE_URL``, else SQLite in the data folder).
    """
    labels = predictor.config.label_names
    store = store or ReviewStore.open(data_dir())
    predict = make_predict(predictor, max_batch_size)
    analysis = AnalyzeHandlers(predict)
    reviews = ReviewHandlers(predict, predictor.config, store)
    explaining = ExplainHandlers(predictor, store.data_dir / "exports")
    past = HistoryHandlers(store, labels)

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
                    prediction_set = gr.Markdown()  # "90 % set: …" and the uncertain badge
                    heatmap = gr.Image(
                        label="Grad-CAM overlay",
                        format=DISPLAY_FORMAT,
                        type="numpy",
                        interactive=False,
                    )
                    lung_text = gr.Markdown()
                    shown_class = gr.Dropdown(labels, value=labels[0], label="Heatmap for class")
                    outline = gr.Checkbox(label="Outline the lung fields (and any lung crop)")
                    with gr.Row():
                        opacity = gr.Slider(
                            0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Opacity"
                        )
                        colormap = gr.Dropdown(
                            sorted(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap"
                        )
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
            agreement_table = gr.Dataframe(
                headers=list(SUMMARY_COLUMNS),
                label="Reviewers agreeing with the top class (Wilson 95 % interval; the class "
                "and reviewer filters apply)",
                interactive=False,
            )
            table = gr.Dataframe(headers=list(ROW_COLUMNS), interactive=False, wrap=True)
            with gr.Row():
                refresh = gr.Button("Refresh")
                export = gr.Button("Export these rows as CSV")
            csv_file = gr.File(label="CSV")
            summary_file = gr.File(label="Agreement summary (CSV)")
        with gr.Tab("Model card"):
            card = ASSETS / "MODEL_CARD.md"
            gr.Markdown(card.read_text() if card.is_file() else "No model card bundled.")

        cached = gr.State()  # the analysed Case: every later action reuses it
        outputs = [confidences, heatmap, shown_class, notes, cached]
        batched = {"concurrency_limit": max_batch_size, "concurrency_id": "predict"}
        analyze_inputs = [upload, opacity, colormap, cached, outline]
        lung_inputs = [cached, shown_class]
        for analyzed in (
            run.click(analysis.analyze, analyze_inputs, outputs, api_name="predict", **batched),
            upload.upload(analysis.analyze, analyze_inputs, outputs, api_name=False, **batched),
        ):
            analyzed.then(uncertainty, cached, prediction_set, api_name=False)
            analyzed.then(analysis.lung_line, lung_inputs, lung_text, api_name=False)
        style = [cached, shown_class, opacity, colormap, outline]
        shown_class.input(analysis.redraw, style, heatmap, api_name=False)
        shown_class.input(analysis.lung_line, lung_inputs, lung_text, api_name=False)
        colormap.input(analysis.redraw, style, heatmap, api_name=False)
        opacity.release(analysis.redraw, style, heatmap, api_name=False)
        outline.input(analysis.redraw, style, heatmap, api_name=False)
        look = [opacity, colormap, contour]
        choice = [cached, method, explain_class, layer]
        hint_events = [method.input, layer.input]
        gr.on(hint_events, explaining.method_hint, [method, layer], hint, api_name=False)
        show.click(
            explaining.explain_one, [*choice, *look], [explained_image, pngs], api_name="explain"
        )
        compare_button.click(
            explaining.compare,
            [cached, compared, explain_class, layer, *look],
            gallery,
            api_name=False,
        )
        contrast_button.click(
            explaining.contrasted,
            [cached, class_a, class_b, *look],
            contrast_image,
            api_name=False,
        )
        faithful.click(explaining.faithfulness, choice, faith_text, api_name=False)

        last_review = gr.State()
        review_inputs = [upload, shown_class, agreement, correct_class, usefulness, wrong_place]
        review_inputs += [note, reviewer, store_image, review_id, cached]
        saved = [review_status, last_review]
        save.click(reviews.save_review, review_inputs, saved, api_name="review")
        report_inputs = [last_review, opacity, colormap, outline]
        report.click(reviews.make_report, report_inputs, report_file, api_name="report")
        filters = [class_filter, agreement_filter, reviewer_filter]
        refreshers = [refresh.click, class_filter.input, agreement_filter.input]
        refreshers += [reviewer_filter.submit, history_tab.select, demo.load]
        gr.on(refreshers, past.history, filters, table, api_name=False)
        gr.on(refreshers, past.agreement, filters, agreement_table, api_name=False)
        exported = export.click(past.export_csv, filters, csv_file, api_name="export_csv")
        exported.then(past.export_summary, filters, summary_file, api_name=False)
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
