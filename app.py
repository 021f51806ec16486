"""LungCAM: what does a chest X-ray classifier look at? (research demo, not a diagnostic device)

The screen only. The work is in ``model.predictor`` (image → probabilities + every class's
Grad-CAM), ``model.imageio`` (any upload → grayscale) and ``explain.overlay`` (drawing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gradio as gr
import numpy as np

from explain.overlay import COLORMAPS, overlay
from model.checkpoint import CheckpointError
from model.imageio import ImageInputError, LoadedImage, load_image
from model.predictor import Prediction, Predictor

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "100mb"
DISCLAIMER = (
    "**Research demo — not a diagnostic device.** Outputs are not medical advice and must not "
    "guide patient care. The model was trained on a small public dataset whose classes come "
    "from different hospitals, so it may have learned the source instead of the disease."
)


def describe_input(image: LoadedImage) -> str:
    """Non-identifying facts about the upload and any warnings, as Markdown."""
    facts = [f"{image.size[0]}×{image.size[1]} px, {image.source_format} ({image.original_mode})"]
    facts += [
        f"{key}: {value}" for key, value in image.metadata.items() if key not in ("format", "mode")
    ]
    warnings = "".join(f"\n\n⚠️ {note}" for note in image.notes)
    return " · ".join(facts) + warnings


def build_demo(predictor: Predictor) -> gr.Blocks:
    """The whole screen, wired to ``predictor``."""
    labels = predictor.config.label_names

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
        prediction = predictor.predict(image)
        top = prediction.top_label
        return (
            prediction.confidences(),
            draw(prediction, top, opacity, colormap),
            gr.update(value=top),
            describe_input(image),
            prediction,
        )

    def redraw(prediction: Prediction | None, class_name: str, opacity: float, colormap: str):
        if prediction is None:
            return None
        return draw(prediction, class_name, opacity, colormap)

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
                        label="Grad-CAM overlay", format="png", type="numpy", interactive=False
                    )
                    shown_class = gr.Dropdown(labels, value=labels[0], label="Heatmap for class")
                    with gr.Row():
                        opacity = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Opacity")
                        colormap = gr.Dropdown(sorted(COLORMAPS), value="jet", label="Colormap")
            gr.Markdown(f"Model: `{predictor.description}` · device: `{predictor.device}`")
        with gr.Tab("Model card"):
            card = ASSETS / "MODEL_CARD.md"
            gr.Markdown(card.read_text() if card.is_file() else "No model card bundled.")

        cached = gr.State()
        outputs = [confidences, heatmap, shown_class, notes, cached]
        run.click(analyze, [upload, opacity, colormap], outputs, api_name="predict")
        upload.upload(analyze, [upload, opacity, colormap], outputs, api_name=False)
        style = [cached, shown_class, opacity, colormap]
        shown_class.input(redraw, style, heatmap, api_name=False)
        colormap.input(redraw, style, heatmap, api_name=False)
        opacity.release(redraw, style, heatmap, api_name=False)
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
    args = parser.parse_args(argv)
    try:
        predictor = Predictor.load(args.model, args.device)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    demo = build_demo(predictor)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True
    )


if __name__ == "__main__":
    main()
