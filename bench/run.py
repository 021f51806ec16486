"""Benchmark: bare forward vs predict + all five Grad-CAMs vs pytorch-grad-cam's and captum's loops.

All figures come from one process on the same input, timed in interleaved rounds and
reported as medians, so the ratios hold on a noisy machine. On CUDA the predictor (and the
bare forward it is compared with) use channels_last, and bf16 autocast with ``--bf16``; the
two libraries run as they ship, in float32. ``--check-amp`` compares bf16 outputs with float32
ones on the bundled examples.

    python -m bench.run [--model PATH] [--size 224] [--batch 1] [--rounds 15] [--device cuda]
                        [--bf16 | --fp32] [--compile] [--check-amp]
                        [--skip-libraries] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from imaging.image import LoadedImage
from imaging.load import load_image
from model.config import ModelConfig
from model.network import create_network
from model.predictor import Predictor

CONTENDERS = ("bare_forward_ms", "predict_all_cams_ms", "pytorch_grad_cam_5_ms", "captum_5_ms")


def time_ms(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1000


def hardware(device: torch.device) -> str:
    """The device in words, for the tables in docs/BENCHMARKS.md."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def sync_for(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def random_images(predictor: Predictor, count: int, seed: int = 0) -> list[LoadedImage]:
    """``count`` random gray images at the model's input size."""
    height, width = predictor.config.image_size
    rng = np.random.default_rng(seed)
    return [
        LoadedImage(rng.integers(0, 256, (height, width), dtype=np.uint8), "bench", "L")
        for _ in range(count)
    ]


def predict_all_cams(predictor: Predictor, images: list[LoadedImage]) -> None:
    """What "predict + all five CAMs" times: ``predict_many`` + every class's heatmap at the
    image's size."""
    for prediction in predictor.predict_many(images):
        for k in range(len(prediction.label_names)):
            prediction.heatmap(k)


def interleaved_medians(
    contenders: dict[str, Callable[[], object]],
    sync: Callable[[], None],
    rounds: int,
    warmup: int = 3,
) -> dict[str, float]:
    """Median ms per call of each contender, timed in interleaved rounds after ``warmup``."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + rounds):
        for name, fn in contenders.items():
            elapsed = time_ms(fn, sync)
            if round_index >= warmup:
                samples[name].append(elapsed)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def measure(
    predictor: Predictor, rounds: int, batch_size: int = 1, libraries: bool = True, warmup: int = 3
) -> dict[str, float]:
    """Median ms per call of each contender on a batch of ``batch_size``, interleaved rounds."""
    images = random_images(predictor, batch_size)
    batch = predictor.batch(images)
    model = predictor.model
    num_classes = predictor.config.num_classes
    amp_dtype = predictor.cam.autocast_dtype

    def bare() -> None:
        amp = torch.autocast(
            batch.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        )
        with torch.inference_mode(), amp:
            model(batch)

    contenders: dict[str, Callable[[], object]] = {
        "bare_forward_ms": bare,
        "predict_all_cams_ms": lambda: predict_all_cams(predictor, images),
    }
    with contextlib.ExitStack() as stack:
        if libraries:
            layer = model.get_submodule(predictor.config.target_layer)
            grad_cam = stack.enter_context(GradCAM(model, [layer]))
            captum_cam = LayerGradCam(model, layer)

            def grad_cam_loop() -> None:
                for k in range(num_classes):
                    grad_cam(batch, [ClassifierOutputTarget(k)] * batch_size)

            def captum_loop() -> None:
                for k in range(num_classes):
                    captum_cam.attribute(batch, target=k, relu_attributions=True).detach().cpu()

            contenders["pytorch_grad_cam_5_ms"] = grad_cam_loop
            contenders["captum_5_ms"] = captum_loop
        result = interleaved_medians(contenders, sync_for(predictor.device), rounds, warmup)
    for name in contenders:
        if name != "bare_forward_ms":
            result[name.replace("_ms", "_ratio")] = round(
                result[name] / result["bare_forward_ms"], 3
            )
    result["ours_images_per_s"] = round(batch_size * 1000 / result["predict_all_cams_ms"], 2)
    result["batch_size"] = batch_size
    return result


def amp_agreement(spec: str | None, device: str, folder: Path) -> dict[str, float]:
    """Autocast vs float32 on the same device, on the bundled examples: how far apart?"""
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    fast = Predictor.load(spec, device, amp=True).predict_many(images)
    exact = Predictor.load(spec, device, amp=False).predict_many(images)
    pairs = list(zip(fast, exact, strict=True))
    correlations = [
        np.corrcoef(a.raw_cams[k].ravel(), b.raw_cams[k].ravel())[0, 1]
        for a, b in pairs
        for k in range(len(a.label_names))
        if b.raw_cams[k].std() > 0 and a.raw_cams[k].std() > 0
    ]
    return {
        "images": len(images),
        "max_abs_probability_diff": float(
            max(np.abs(a.probabilities - b.probabilities).max() for a, b in pairs)
        ),
        "top_label_agreement": float(np.mean([a.top_index == b.top_index for a, b in pairs])),
        "min_cam_correlation": float(min(correlations)),
        "median_cam_correlation": float(np.median(correlations)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: random weights at --size)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default=None)
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 autocast on the trunk")
    precision.add_argument("--fp32", action="store_true", help="float32 (the default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trunk")
    parser.add_argument("--skip-libraries", action="store_true", help="ours and bare only")
    parser.add_argument("--check-amp", action="store_true", help="autocast vs fp32 outputs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.check_amp:
        examples = Path(__file__).resolve().parent.parent / "assets" / "examples"
        print(json.dumps(amp_agreement(args.model, args.device or "cuda", examples), indent=2))
        return
    options = {"amp": args.bf16, "compile": args.compile}
    if args.model:
        predictor = Predictor.load(args.model, args.device, **options)
    else:
        config = ModelConfig(input_size=(3, args.size, args.size))
        device = torch.device(args.device or "cpu")
        predictor = Predictor(create_network(config), config, device, **options)
    result = measure(predictor, args.rounds, args.batch, libraries=not args.skip_libraries)
    precision = str(predictor.cam.autocast_dtype or torch.float32).removeprefix("torch.")
    result["device"] = f"{predictor.device} ({hardware(predictor.device)})"
    speedup = " + compile" if args.compile else ""
    result["precision"] = precision + speedup
    print(
        f"device: {result['device']}; input {predictor.config.image_size}, "
        f"batch {args.batch}, trunk {result['precision']}"
    )
    print(f"{'contender':<28}{'median ms':>12}{'× bare forward':>16}")
    for name in CONTENDERS:
        if name in result:
            ratio = result[name] / result["bare_forward_ms"]
            print(f"{name:<28}{result[name]:>12.1f}{ratio:>16.2f}")
    print(f"predict + all CAMs: {result['ours_images_per_s']:.1f} images/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
