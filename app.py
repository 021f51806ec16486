"""LungCAM: what does a chest X-ray classifier look at? (research demo, not a diagnostic device)

The screen: components and the events that wire them. Handlers live in ``ui/`` (one module
per tab), the model behind ``serving.model_process`` (in a process of its own), start-up in
``serving.launch``. This process never imports torch.
"""

from __future__ import annotations

from serving.model_process import ModelProcess, ModelService
from serving.runtime import on_spaces_gpu, stay_offline

if __name__ == "__main__":  # before gradio & co. are imported, here and in the model's process
    stay_offline()
# The model's process imports torch while this one imports gradio (docs/BENCHMARKS.md, "Cold
# start"); not on import, and not on a ZeroGPU Space, whose GPU attaches to this process.
EARLY_MODEL = ModelProcess() if __name__ == "__main__" and not on_spaces_gpu() else None

from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from imaging.overlay import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY, FULL_WINDOW
from review.store import ReviewStore
from serving.access import OwnerFolders
from serving.launch import serve
from serving.runtime import data_dir, make_predict
from ui.analyze import AnalyzeHandlers
from ui.common import (
    DISCLAIMER,
    SCREEN_CSS,
    SHOWN,
    HeadlineLabel,
    legend,
    shown_when_made,
)
from ui.explain import ExplainHandlers, explain_tab
from ui.files import UPLOAD_CSS, UPLOAD_ID, ShownImage, ShownSlider, UploadBox
from ui.history import HistoryHandlers, history_tab
from ui.marks import MarkHandlers
from ui.review import ReviewHandlers, review_form

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLES = sorted((ASSETS / "examples").glob("*.jpg"))
API = {"predict", "overlay_full", "review", "report", "explain", "export_csv", "reopen"}


def build_demo(
    model: ModelService,
    max_batch_size: int = 8,
    store: ReviewStore | None = None,
    reviews_off: str = "",
    folders: OwnerFolders | None = None,
) -> gr.Blocks:
    """The whole screen on ``model``; ``max_batch_size`` requests share a forward. Reviews go
    to ``store`` (default: ``$DATABASE_URL``, else SQLite in the data folder); ``reviews_off``
    (why, or "") switches them off; files go to their requester's folder of ``folders``."""
    labels = model.config.label_names
    store = store or ReviewStore.open(data_dir())
    folders = folders or OwnerFolders(get_upload_folder())
    predict = make_predict(model, max_batch_size)
    analysis = AnalyzeHandlers(predict, store.data_dir / "exports")
    reviews = ReviewHandlers(predict, lambda: model.config, store, reviews_off, folders)
    explaining = ExplainHandlers(model, store.data_dir / "exports")
    history = HistoryHandlers(store, labels, reviews_off, folders)

    with gr.Blocks(title="LungCAM", delete_cache=(3600, 3600)) as demo:
        case = gr.State()  # the analysed Case: every later action reuses it
        corner = gr.State()  # the first corner of a mark being drawn
        form_case = gr.State()  # the review id of the case the review form belongs to
        last_review = gr.State()
        gr.Markdown(f"### LungCAM — where does the chest X-ray classifier look?\n{DISCLAIMER}")
        if not model.config.trained:
            gr.Markdown("## ⚠️ This model is UNTRAINED (random weights): its outputs mean nothing.")
        if reviews_off:
            gr.Markdown(f"### 🔒 {reviews_off}", elem_id="reviews-off")
        with gr.Tab("Analyze"), gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=220):
                upload = UploadBox(label="Chest X-ray (PNG, JPEG, DICOM …)", elem_id=UPLOAD_ID)
                run = gr.Button("Analyze", variant="primary")
                examples = gr.Gallery(
                    [(str(p), p.stem.split("-")[0].title()) for p in EXAMPLES],
                    label="Examples (lung5 test split)",
                    columns=2,
                    height=330,
                    object_fit="cover",
                    allow_preview=False,
                    visible=bool(EXAMPLES),
                )
                notes = gr.Markdown()
                model_line = gr.Markdown("Model: loading…")
            with gr.Column(scale=5):
                with gr.Tabs():
                    with gr.Tab("Film | heatmap"):
                        viewer = ShownSlider(
                            label="Film | Grad-CAM (drag the divider; wheel zooms, drag pans)",
                            max_height=600,
                            **SHOWN,
                        )
                    with gr.Tab("Mark the finding"):
                        mark_film = ShownImage(label="Click two opposite corners of a box", **SHOWN)
                        with gr.Row():
                            undo_mark = gr.Button("Undo last mark", size="sm")
                            clear_marks = gr.Button("Clear marks", size="sm")
                scale = gr.HTML(legend(DEFAULT_COLORMAP))
                with gr.Row():
                    shown_class = gr.Dropdown(labels, value=labels[0], label="Heatmap for class")
                    colormap = gr.Dropdown(
                        sorted(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap"
                    )
                    opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Opacity")
                with gr.Row():
                    level = gr.Slider(
                        0, 255, value=FULL_WINDOW[0], step=1, label="Brightness (level)"
                    )
                    width = gr.Slider(
                        16, 256, value=FULL_WINDOW[1], step=1, label="Contrast (width)"
                    )
                    outline = gr.Checkbox(label="Outline the lung fields (and any crop)")
                full_button = gr.Button("Full-resolution overlay (PNG)", size="sm")
                full_file = gr.File(label="Overlay at the upload's own resolution", visible=False)
            with gr.Column(scale=5, min_width=420):
                confidences = HeadlineLabel(
                    label="Calibrated confidence", num_top_classes=len(labels)
                )
                set_line = gr.Markdown(elem_id="prediction-set")
                lung_line = gr.Markdown()
                show_anyway = gr.Checkbox(
                    visible=False,
                    label="Show the class scores even if this may not be a chest X-ray",
                )
                form = review_form(labels)
        layer = model.config.target_layer
        explain = explain_tab(explaining, labels, layer, case, opacity, colormap)
        history_tab(history, labels, demo)
        with gr.Tab("Model card"):
            card = ASSETS / "MODEL_CARD.md"
            gr.Markdown(card.read_text() if card.is_file() else "No model card bundled.")

        window = [level, width]
        form_reset = [*form.fields, form.status, form.report_file, last_review, form_case]
        form_reset += [form.marks, form.no_finding]
        case_view = [confidences, viewer, shown_class, notes, set_line, lung_line, case]
        fresh_case = [mark_film, corner, form.marks_line, full_file, show_anyway]
        fresh_case += [*explain.classes, *explain.views, *form_reset]
        every_output = [*case_view, *fresh_case]

        def fresh(case, owner, level, width):
            """The rest of the screen for a newly analysed case: the last case's views and
            marks gone, the Explain tab on this case's classes, the review form cleared."""
            blank = AnalyzeHandlers.cleared(len(explain.views))
            analysed = AnalyzeHandlers.fresh(case, owner, level, width)
            return (*analysed, *ExplainHandlers.defaults(case), *blank,
                    *reviews.new_case(case, owner))  # fmt: skip

        def clear_case():
            return AnalyzeHandlers.cleared(len(every_output))

        example = AnalyzeHandlers.example_picker([str(p) for p in EXAMPLES])
        analysis_inputs = [upload, opacity, colormap, case, show_anyway, outline, *window]
        batched = {"concurrency_limit": max_batch_size, "concurrency_id": "predict"}
        for analyzed in (
            gr.on([run.click, upload.upload], analysis.analyze, analysis_inputs, case_view,
                  api_name="predict", **batched),
            examples.select(example, None, upload).success(analysis.analyze, analysis_inputs,
                                                          case_view, **batched),
        ):  # fmt: skip
            analyzed.success(fresh, [case, form_case, *window], fresh_case)
            analyzed.failure(clear_case, None, every_output)
        upload.clear(clear_case, None, every_output)
        show_anyway.input(AnalyzeHandlers.relabel, [case, show_anyway], [confidences, set_line])
        style = [case, shown_class, opacity, colormap, outline, *window]
        restyled = [shown_class.input, colormap.input, opacity.release, outline.input]
        gr.on([*restyled, level.release, width.release], AnalyzeHandlers.redraw, style, viewer)
        shown_class.input(AnalyzeHandlers.lung_line, [case, shown_class], lung_line)
        colormap.input(lambda name: (legend(name),) * 2, colormap, [scale, explain.scale])
        full = full_button.click(
            analysis.full_resolution, style[:5], full_file, api_name="overlay_full"
        )
        full.success(shown_when_made, full_file, full_file)

        marking = [mark_film, form.marks, corner, form.marks_line]
        marked = [case, form.marks, corner, *window]
        mark_film.select(MarkHandlers.clicked, marked, marking)
        undo_mark.click(MarkHandlers.undo, marked, marking)
        clear_marks.click(MarkHandlers.cleared, [case, *window], marking)
        gr.on([level.release, width.release], MarkHandlers.redrawn, marked, marking)
        review_inputs = [upload, shown_class, *form.answers, case]
        saved = [form.status, last_review]
        form.save.click(reviews.save_review, review_inputs, saved, api_name="review")
        report_inputs = [last_review, opacity, colormap, outline]
        reported = form.report.click(
            reviews.make_report, report_inputs, form.report_file, api_name="report"
        )
        reported.success(shown_when_made, form.report_file, form.report_file)

        demo.load(model.describe, None, model_line)  # once the weights are in
    for event in demo.fns.values():  # the screen's other events are not an API
        if event.api_name not in API:
            event.api_visibility = "private"
    return demo


def main(argv: list[str] | None = None) -> None:
    """Serve the app (``python app.py --help``)."""
    serve(build_demo, argv, EARLY_MODEL, css=UPLOAD_CSS + SCREEN_CSS)


if __name__ == "__main__":
    main()
