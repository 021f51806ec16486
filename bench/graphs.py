"""CUDA graphs vs eager, float32 vs bf16 trunk: latency, throughput, and how far the maps move.

One command prints one JSON object (issue 16: predict + all five CAMs ≤ 5 ms at batch 1 and
≥ 1,000 images/s batched on an H100, maps within 1e-4 of pytorch-grad-cam). For each variant
(eager or CUDA graphs × float32 or bf16 trunk) and each ``--batches`` size, median ms of
- ``predict_all_cams_ms``: ``Predictor.predict_many`` on random images + every class's
  heatmap at image size (host work included: preprocessing, the lung segmenter when the model
  crops to the lungs, resizing maps);
- ``cam_step_ms``: the model alone on a ready batch (trunk, head gradient, maps to the host),
  the part CUDA graphs speed up;
and images/s of both. Then, on the bundled examples, each variant's largest difference from
eager float32 (logits; maps normalised as pytorch-grad-cam does) and from pytorch-grad-cam's
``GradCAM``. Variants are timed in interleaved rounds in one process, as in ``bench.run``.

    python -m bench.graphs --model assets/model --device cuda --json bench-out/graphs.json
    python -m bench.graphs --device cpu --size 64 --batches 3 --rounds 1 --warmup 0 \
        --precisions fp32 --examples 2   # smoke check

On a CPU the "graphs" variants run the same static-batch path eagerly (model/cudagraph.py):
the smoke check tests the plumbing, its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from bench.run import hardware, interleaved_medians, predict_all_cams, random_images, sync_for
from imaging.load import load_image
from model.config import ModelConfig
from model.heatmaps import normalise_cam
from model.network import create_network
from model.predictor import Predictor, pick_device

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
PRECISIONS = ("fp32", "bf16")  # trunk under float32, or under bf16 autocast


def reference_maps(model: nn.Module, batch: torch.Tensor, layer: nn.Module) -> np.ndarray:
    """pytorch-grad-cam's ``GradCAM`` maps of every class, (B, K, H, W) at input size."""
    with GradCAM(model, [layer]) as cam:
        targets = [[ClassifierOutputTarget(k)] * len(batch) for k in range(model.num_classes)]
        return np.stack([cam(batch, target) for target in targets], axis=1)


def normalised_maps(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw maps (B, K, h, w) → [0, 1] at ``size`` (width, height), as pytorch-grad-cam scales."""
    return np.stack([[normalise_cam(per_class, size) for per_class in image] for image in raw])


def variants(base: Predictor, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Predictor]:
    """``eager_fp32``, ``graphs_fp32``, … for each of ``precisions``: predictors sharing
    ``base``'s network and lung segmenter. ``eager_fp32`` always comes first."""
    return {
        f"{mode}_{precision}": Predictor(
            base.model,
            base.config,
            base.device,
            amp=precision == "bf16",
            cuda_graphs=mode == "graphs",
            segmenter=base.segmenter,
        )
        for precision in ("fp32", *(p for p in precisions if p != "fp32"))
        for mode in ("eager", "graphs")
    }


def timings(
    predictors: dict[str, Predictor], batch_size: int, rounds: int, warmup: int = 3
) -> dict[str, dict]:
    """Per variant: median ms and images/s of predict + all CAMs and of the model step."""
    base = next(iter(predictors.values()))
    images = random_images(base, batch_size)
    batch = base.batch(images)
    contenders = {}
    for name, predictor in predictors.items():
        contenders[f"{name}/predict_all_cams_ms"] = lambda p=predictor: predict_all_cams(p, images)
        contenders[f"{name}/cam_step_ms"] = lambda p=predictor: p.cam(batch, return_pooled=True)
    medians = interleaved_medians(contenders, sync_for(base.device), rounds, warmup)
    result: dict[str, dict] = {name: {} for name in predictors}
    for key, ms in medians.items():
        name, measure = key.split("/")
        result[name][measure] = ms
        result[name][measure.replace("_ms", "_images_per_s")] = round(batch_size * 1000 / ms, 1)
    return result


def agreement(predictors: dict[str, Predictor], count: int) -> dict[str, dict]:
    """Per variant, on ``count`` bundled examples (as the predictor crops them): the largest
    difference of logits and normalised maps from eager float32 and from pytorch-grad-cam."""
    base = predictors["eager_fp32"]
    batch = base.batch([load_image(p) for p in sorted(EXAMPLES.glob("*.jpg"))[:count]])
    size = (batch.shape[-1], batch.shape[-2])
    layer = base.model.get_submodule(base.config.target_layer)
    reference = reference_maps(base.model, batch, layer)
    exact_logits, exact_raw = base.cam(batch)
    exact = normalised_maps(exact_raw, size)
    result = {}
    for name, predictor in predictors.items():
        logits, raw = predictor.cam(batch)
        maps = normalised_maps(raw, size)
        result[name] = {
            "max_abs_logit_diff_vs_eager_fp32": float((logits - exact_logits).abs().max()),
            "max_abs_map_diff_vs_eager_fp32": float(np.abs(maps - exact).max()),
            "max_abs_map_diff_vs_pytorch_grad_cam": float(np.abs(maps - reference).max()),
        }
    return result


def agreement_without_tf32(
    base: Predictor, count: int, precisions: tuple[str, ...]
) -> dict[str, dict]:
    """``agreement`` with cuDNN's TF32 convolutions off, on fresh variants (a captured graph
    keeps the kernels it was captured with)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return agreement(variants(base, precisions), count)
    finally:
        torch.backends.cudnn.allow_tf32 = before


def report(
    base: Predictor,
    batch_sizes: list[int],
    rounds: int,
    examples: int,
    precisions: tuple[str, ...] = PRECISIONS,
    warmup: int = 3,
) -> dict:
    """The whole comparison as one JSON-ready dict, with hardware, software and date."""
    predictors = variants(base, precisions)
    cuda = base.device.type == "cuda"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(base.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "graphs": "torch.cuda.CUDAGraph" if cuda else "eager replay (no CUDA): not a measurement",
        "model": f"{base.config.version} ({base.config.architecture})",
        "input": list(base.config.image_size),
        "lung_segmenter_in_predict": base.segmenter is not None,
        "rounds": rounds,
        "timings": {
            f"batch_{size}": timings(predictors, size, rounds, warmup) for size in batch_sizes
        },
        "agreement": agreement(predictors, examples),  # cuDNN TF32 as PyTorch sets it (on)
        "agreement_without_tf32": agreement_without_tf32(base, examples, precisions)
        if cuda
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: random weights at --size)")
    parser.add_argument("--size", type=int, default=224, help="input size without --model")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 128])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds (capture here)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--examples", type=int, default=9, help="bundled examples compared")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.model:
        base = Predictor.load(args.model, args.device)
    else:
        config = ModelConfig(input_size=(3, args.size, args.size))
        base = Predictor(create_network(config), config, pick_device(args.device))
    precisions = tuple(args.precisions)
    result = report(base, args.batches, args.rounds, args.examples, precisions, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
