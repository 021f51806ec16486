"""Benchmark: bare forward vs predict + all five Grad-CAMs vs pytorch-grad-cam's loop.

All figures come from one process on the same input, timed in interleaved rounds and
reported as medians, so the ratios hold on a noisy machine.

    python bench/run.py [--model PATH] [--size 224] [--rounds 15] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from model.config import ModelConfig
from model.imageio import LoadedImage
from model.network import create_network
from model.predictor import Predictor


def time_ms(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1000


def measure(predictor: Predictor, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each contender over ``rounds`` interleaved rounds."""
    height, width = predictor.config.image_size
    rng = np.random.default_rng(0)
    image = LoadedImage(rng.integers(0, 256, (height, width), dtype=np.uint8), "bench", "L")
    batch = predictor.preprocess(image.pixels)[None].to(predictor.device)
    model = predictor.model
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    layer = model.get_submodule(predictor.config.target_layer)
    grad_cam = GradCAM(model, [layer])

    def bare() -> None:
        with torch.inference_mode():
            model(batch)

    def ours() -> None:
        prediction = predictor.predict(image)
        for k in range(predictor.config.num_classes):
            prediction.heatmap(k, (width, height))

    def library_loop() -> None:
        for k in range(predictor.config.num_classes):
            grad_cam(batch, [ClassifierOutputTarget(k)])

    contenders = {
        "bare_forward_ms": bare,
        "predict_all_cams_ms": ours,
        "pytorch_grad_cam_5_ms": library_loop,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + rounds):
        for name, fn in contenders.items():
            elapsed = time_ms(fn, sync)
            if round_index >= warmup:
                samples[name].append(elapsed)
    grad_cam.activations_and_grads.release()
    result = {name: round(statistics.median(values), 2) for name, values in samples.items()}
    result["ratio"] = round(result["predict_all_cams_ms"] / result["bare_forward_ms"], 3)
    result["pytorch_grad_cam_ratio"] = round(
        result["pytorch_grad_cam_5_ms"] / result["bare_forward_ms"], 3
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: random weights at --size)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.model:
        predictor = Predictor.load(args.model, args.device)
    else:
        config = ModelConfig(input_size=(3, args.size, args.size))
        predictor = Predictor(create_network(config), config, torch.device(args.device or "cpu"))
    result = measure(predictor, args.rounds)
    hardware = (
        torch.cuda.get_device_name()
        if predictor.device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"device: {predictor.device} ({hardware}); input {predictor.config.image_size}, batch 1")
    print(f"{'contender':<28}{'median ms':>12}{'× bare forward':>16}")
    for name in ("bare_forward_ms", "predict_all_cams_ms", "pytorch_grad_cam_5_ms"):
        print(f"{name:<28}{result[name]:>12.1f}{result[name] / result['bare_forward_ms']:>16.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
