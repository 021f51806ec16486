"""LungCAM: what does a chest X-ray classifier look at? (research demo, not a diagnostic device)

The screen only: components and the events that wire them. The handlers live in ``ui/`` (one
module per tab); the work below them in ``model.predictor`` (image → probabilities + every
class's Grad-CAM, in a process of its own: ``serving.model_process``), ``imaging`` (any upload →
grayscale, overlays) and ``review`` (the store). This process never imports torch.
"""

from __future__ import annotations

from serving.model_process import (
    LocalModel,
    ModelProcess,
    ModelService,
    ModelUnavailable,
    load_predictor,
)
from serving.runtime import on_spaces_gpu, stay_offline

if __name__ == "__main__":  # before gradio & co. are imported, here and in the model's process
    stay_offline()

# `python app.py`: the model's process starts here and imports torch while this one imports
# gradio below (docs/BENCHMARKS.md, "Cold start"). Not when app.py is imported, and not on a
# ZeroGPU Space, whose GPU attaches to calls made in this process.
EARLY_MODEL = ModelProcess() if __name__ == "__main__" and not on_spaces_gpu() else None

import argparse
import os
from functools import partial
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware import Middleware

from explain.choices import CONFUSABLE, DEFAULT_METHOD, METHODS, TARGET_LAYERS
from imaging.overlay import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY
from review.agreement import SUMMARY_COLUMNS
from review.auth import DEFAULT_HOST, LoginGuard, parse_auth, reviews_off_reason
from review.store import AGREEMENTS, USEFULNESS, ReviewStore
from serving.access import FileGate, OwnerFolders, http_login
from serving.runtime import configure_storage, data_dir, limit_malloc_arenas, make_predict
from ui.analyze import AnalyzeHandlers, uncertainty
from ui.common import DISCLAIMER, DISPLAY_FORMAT, HeadlineLabel, legend
from ui.explain import ExplainHandlers
from ui.files import UPLOAD_CSS, UPLOAD_ID, ShownGallery, ShownImage, UploadBox
from ui.history import SHORT_COLUMNS, TITLES, HistoryHandlers
from ui.review import ReviewHandlers

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "100mb"


def build_demo(
    model: ModelService,
    max_batch_size: int = 8,
    store: ReviewStore | None = None,
    reviews_off: str = "",
    folders: OwnerFolders | None = None,
) -> gr.Blocks:
    """The whole screen, wired to ``model``; ``max_batch_size`` requests share a forward.

    Reviews go to ``store`` (default: ``$DATABASE_URL``, else SQLite in the data folder).
    ``reviews_off`` (why, or "") switches reviews, History and exports off with a banner.
    Reports and exports go into each requester's folder of ``folders`` (default: in Gradio's
    cache), which ``serving.access.FileGate`` serves to its owner only.
    """
    config = model.config
    labels = config.label_names
    store = store or ReviewStore.open(data_dir())
    predict = make_predict(model, max_batch_size)
    analysis = AnalyzeHandlers(predict, store.data_dir / "exports")
    folders = folders or OwnerFolders(get_upload_folder())
    reviews = ReviewHandlers(predict, lambda: model.config, store, reviews_off, folders)
    explaining = ExplainHandlers(model, store.data_dir / "exports")
    past = HistoryHandlers(store, labels, reviews_off, folders)

    with gr.Blocks(title="LungCAM", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# LungCAM — where does the chest X-ray classifier look?")
        gr.Markdown(DISCLAIMER)
        if not config.trained:
            gr.Markdown("## ⚠️ This model is UNTRAINED (random weights): its outputs mean nothing.")
        if reviews_off:
            gr.Markdown(f"### 🔒 {reviews_off}", elem_id="reviews-off")
        with gr.Tab("Analyze"):
            with gr.Row():
                with gr.Column():
                    upload = UploadBox(
                        label="Chest X-ray (PNG, JPEG, DICOM …)", type="filepath", elem_id=UPLOAD_ID
                    )
                    run = gr.Button("Analyze", variant="primary")
                    examples = sorted((ASSETS / "examples").glob("*.jpg"))
                    example_gallery = gr.Gallery(
                        [(str(p), p.stem.split("-")[0].title()) for p in examples],
                        label="Examples from the lung5 test split (click one to analyse it)",
                        columns=5,
                        height="auto",
                        allow_preview=False,
                        visible=bool(examples),
                    )
                    notes = gr.Markdown()
                    original = ShownImage(
                        label="Original", format=DISPLAY_FORMAT, type="numpy", interactive=False
                    )
                with gr.Column():
                    confidences = HeadlineLabel(
                        label="Calibrated confidence", num_top_classes=len(labels)
                    )
                    prediction_set = gr.Markdown()  # "90 % set: …" and the uncertain badge
                    show_anyway = gr.Checkbox(
                        label="Show the class scores anyway (when the image may not be a "
                        "chest X-ray)"
                    )
                    heatmap = ShownImage(
                        label="Grad-CAM overlay",
                        format=DISPLAY_FORMAT,
                        type="numpy",
                        interactive=False,
                    )
                    lung_text = gr.Markdown()
                    scale = gr.HTML(legend(DEFAULT_COLORMAP))
                    with gr.Row():
                        full_button = gr.Button("Full-resolution overlay (PNG)", size="sm")
                        full_file = gr.File(label="Overlay at the upload's own resolution")
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
                        usefulness = gr.Radio(
                            list(USEFULNESS),
                            value=None,
                            label="Heatmap usefulness (1 useless … 5 very useful; optional)",
                        )
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
            model_line = gr.Markdown("Model: loading…")
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
                        value=config.target_layer,
                        label="Target layer (earlier blocks: finer maps)",
                    )
                    explain_class = gr.Dropdown(labels, value=labels[0], label="Class")
                    contour = gr.Checkbox(label="Outline the top-10 % activation region")
                    hint = gr.Markdown()
                    with gr.Row():
                        show = gr.Button("Explain", variant="primary")
                        faithful = gr.Button("Faithfulness (ROAD, ~10 s)")
                        cancel = gr.Button("Cancel Score-CAM", variant="stop")
                    faith_text = gr.Markdown()
                with gr.Column():
                    explained_image = ShownImage(
                        label="Overlay", format=DISPLAY_FORMAT, type="numpy", interactive=False
                    )
                    explain_scale = gr.HTML(legend(DEFAULT_COLORMAP))
                    pngs = gr.File(label="Heatmap and overlay (PNG)", file_count="multiple")
            compared = gr.CheckboxGroup(
                list(METHODS), value=["Grad-CAM", "Grad-CAM++", "LayerCAM"], label="2–4 methods"
            )
            compare_button = gr.Button("Compare side by side")
            gallery = ShownGallery(label="Same image and class", columns=4, format=DISPLAY_FORMAT)
            with gr.Row():
                class_a = gr.Dropdown(labels, value=CONFUSABLE[2], label="Why class A …")
                class_b = gr.Dropdown(labels, value=CONFUSABLE[1], label="… rather than class B")
                contrast_button = gr.Button("Contrast A vs B")
            contrast_image = ShownImage(
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
                all_columns = gr.Checkbox(label="All columns")
            table = gr.Dataframe(
                headers=[TITLES[c] for c in SHORT_COLUMNS], interactive=False, wrap=True
            )
            agreement_table = gr.Dataframe(
                headers=list(SUMMARY_COLUMNS),
                label="Reviewers agreeing with the top class (Wilson 95 % interval; the class "
                "and reviewer filters apply)",
                interactive=False,
            )
            with gr.Row():
                refresh = gr.Button("Refresh")
                export = gr.Button("Export these rows as CSV")
            csv_file = gr.File(label="CSV")
            summary_file = gr.File(label="Agreement summary (CSV)")
            gr.Markdown("Click a row, then reopen its case: the PDF, and the image if stored.")
            with gr.Row():
                reopen_id = gr.Textbox(label="Review id to reopen")
                reopen = gr.Button("Reopen case")
            with gr.Row():
                reopened_pdf = gr.File(label="Case report (PDF)")
                reopened_image = gr.Image(label="Stored image", type="filepath", interactive=False)
        with gr.Tab("Model card"):
            card = ASSETS / "MODEL_CARD.md"
            gr.Markdown(card.read_text() if card.is_file() else "No model card bundled.")

        cached = gr.State()  # the analysed Case: every later action reuses it
        form_case = gr.State()  # the review id of the case the review form belongs to
        last_review = gr.State()
        outputs = [confidences, heatmap, shown_class, notes, cached]
        form = [agreement, correct_class, usefulness, wrong_place, note, store_image, review_id]
        form += [review_status, report_file, last_review, form_case]
        batched = {"concurrency_limit": max_batch_size, "concurrency_id": "predict"}
        analyze_inputs = [upload, opacity, colormap, cached, show_anyway, outline]
        lung_inputs = [cached, shown_class]

        explained = [explained_image, pngs, gallery, contrast_image, faith_text]
        explain_classes = [explain_class, class_a, class_b]
        last_case = [*outputs, original, prediction_set, lung_text, full_file]
        last_case += [*explain_classes, *explained, *form]
        clear_last_case = partial(AnalyzeHandlers.cleared, len(last_case))

        def after_analysis(event) -> None:
            # Each new case: the original beside the overlay, the prediction set and the lung
            # share, the Explain tab's classes set to this image's and its views emptied, the
            # review form cleared; an error clears every output of the last case.
            event.success(analysis.original, cached, original, api_name=False)
            event.success(uncertainty, [cached, show_anyway], prediction_set, api_name=False)
            event.success(analysis.lung_line, lung_inputs, lung_text, api_name=False)
            event.success(explaining.defaults, cached, explain_classes, api_name=False)
            event.success(reviews.new_case, [cached, form_case], form, api_name=False)
            event.success(
                partial(AnalyzeHandlers.cleared, len(explained)), None, explained, api_name=False
            )
            event.then(lambda: None, None, full_file, api_name=False)  # not the last case's
            event.failure(clear_last_case, None, last_case, api_name=False)

        after_analysis(
            run.click(analysis.analyze, analyze_inputs, outputs, api_name="predict", **batched)
        )
        after_analysis(
            upload.upload(analysis.analyze, analyze_inputs, outputs, api_name=False, **batched)
        )
        upload.clear(clear_last_case, None, last_case, api_name=False)
        pick = AnalyzeHandlers.example_picker([str(p) for p in examples])
        picked = example_gallery.select(pick, None, upload, api_name=False)
        after_analysis(
            picked.success(analysis.analyze, analyze_inputs, outputs, api_name=False, **batched)
        )
        show_anyway.input(analysis.relabel, [cached, show_anyway], confidences, api_name=False)
        show_anyway.input(uncertainty, [cached, show_anyway], prediction_set, api_name=False)
        full_inputs = [cached, shown_class, opacity, colormap, outline]
        full_button.click(analysis.full_resolution, full_inputs, full_file, api_name="overlay_full")
        style = [cached, shown_class, opacity, colormap, outline]
        shown_class.input(analysis.redraw, style, heatmap, api_name=False)
        shown_class.input(analysis.lung_line, lung_inputs, lung_text, api_name=False)
        colormap.input(analysis.redraw, style, heatmap, api_name=False)
        colormap.input(legend, colormap, [scale], api_name=False)
        colormap.input(legend, colormap, [explain_scale], api_name=False)
        opacity.release(analysis.redraw, style, heatmap, api_name=False)
        outline.input(analysis.redraw, style, heatmap, api_name=False)
        look = [opacity, colormap, contour]
        choice = [cached, method, explain_class, layer]
        hint_events = [method.input, layer.input]
        gr.on(hint_events, explaining.method_hint, [method, layer], hint, api_name=False)
        # Score-CAM takes minutes on CPU: its own queue, one at a time, and a Cancel button;
        # every other method runs in the "explain" queue and never waits behind it.
        fast = {"concurrency_id": "explain"}
        slow = {"concurrency_id": "score-cam", "concurrency_limit": 1}
        one = [explained_image, pngs]
        show.click(explaining.explain_one, [*choice, *look], one, api_name="explain", **fast)
        slow_one = partial(explaining.explain_one, slow=True)
        slow_events = [
            show.click(slow_one, [*choice, *look], one, api_name="explain_score_cam", **slow)
        ]
        compared_inputs = [cached, compared, explain_class, layer, *look]
        compare_button.click(explaining.compare, compared_inputs, gallery, api_name=False, **fast)
        slow_compare = partial(explaining.compare, slow=True)
        slow_events.append(
            compare_button.click(slow_compare, compared_inputs, gallery, api_name=False, **slow)
        )
        contrast_button.click(
            explaining.contrasted,
            [cached, class_a, class_b, *look],
            contrast_image,
            api_name=False,
            **fast,
        )
        faithful.click(explaining.faithfulness, choice, faith_text, api_name=False, **fast)
        slow_faith = partial(explaining.faithfulness, slow=True)
        slow_events.append(faithful.click(slow_faith, choice, faith_text, api_name=False, **slow))
        cancel.click(None, None, None, cancels=slow_events, api_name=False)

        review_inputs = [upload, shown_class, agreement, correct_class, usefulness, wrong_place]
        review_inputs += [note, reviewer, store_image, review_id, cached]
        saved = [review_status, last_review]
        save.click(reviews.save_review, review_inputs, saved, api_name="review")
        report_inputs = [last_review, opacity, colormap, outline]
        report.click(reviews.make_report, report_inputs, report_file, api_name="report")
        demo.load(model.describe, None, model_line, api_name=False)  # once the weights are in
        filters = [class_filter, agreement_filter, reviewer_filter]
        refreshers = [refresh.click, class_filter.input, agreement_filter.input]
        refreshers += [reviewer_filter.submit, history_tab.select, demo.load, all_columns.input]
        gr.on(refreshers, past.history, [*filters, all_columns], table, api_name=False)
        gr.on(refreshers, past.agreement, filters, agreement_table, api_name=False)
        exported = export.click(past.export_csv, filters, csv_file, api_name="export_csv")
        exported.then(past.export_summary, filters, summary_file, api_name=False)
        table.select(HistoryHandlers.picked, table, reopen_id, api_name=False)
        reopen.click(past.reopen, reopen_id, [reopened_pdf, reopened_image], api_name="reopen")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the LungCAM app.")
    parser.add_argument(
        "--model",
        help="checkpoint folder, .pt/.pth, or hf-hub:org/name "
        "(default: $LUNGCAM_MODEL, else the bundled model)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST,
        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; on any "
        "other address reviews and exports stay off unless $LUNGCAM_AUTH turns on a login)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="concurrent requests per forward (1: off)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model trunk (on CUDA: reduce-overhead, i.e. CUDA graphs)",
    )
    args = parser.parse_args(argv)
    limit_malloc_arenas()
    configure_storage()
    options = {"compile": args.compile}
    try:
        if EARLY_MODEL is None and on_spaces_gpu():
            model: ModelService = LocalModel(load_predictor(args.model, args.device, **options))
        else:
            model = EARLY_MODEL or ModelProcess()
            model.load(args.model, args.device, **options)
    except ModelUnavailable as err:
        parser.exit(2, f"error: {err}\n")
    try:
        auth = parse_auth()  # $LUNGCAM_AUTH: required on any public host that stores reviews
        store = ReviewStore.open(data_dir())
    except (OSError, ValueError, SQLAlchemyError) as err:
        parser.exit(2, f"error: {err}\n")
    reviews_off = reviews_off_reason(args.host, auth)
    if reviews_off:
        print(f"warning: {reviews_off}", flush=True)
    folders = OwnerFolders(get_upload_folder())  # in Gradio's cache: the data folder's
    folders.reset()
    try:  # the screen needs the config: read from a checkpoint folder, else from the weights
        demo = build_demo(model, args.max_batch_size, store, reviews_off, folders)
    except ModelUnavailable as err:  # e.g. no such checkpoint
        parser.exit(2, f"error: {err}\n")
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        auth=None if auth is None else http_login(LoginGuard(auth)),  # locks out guessing
        app_kwargs={"middleware": [Middleware(FileGate, folders=folders, data=store.data_dir)]},
        css=UPLOAD_CSS,
        allowed_paths=[str(store.data_dir / "exports")],
        prevent_thread_lock=True,  # serve while the weights load: requests wait for them
    )
    try:
        model.wait_loaded()
    except ModelUnavailable as err:  # e.g. statistics fitted for another segmenter
        demo.close()
        parser.exit(2, f"error: {err}\n")
    demo.block_thread()


if __name__ == "__main__":
    main()
