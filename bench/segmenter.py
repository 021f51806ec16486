"""Benchmark: CPU latency of the lung segmenter at its working size, and of the full path.

    python -m bench.segmenter [--segmenter PATH] [--threads 2] [--runs 30]

"network" is one forward of a (1, 1, h, w) input at the config's working size; "analyse" is
``LungSegmenter.analyse`` on a 512×512 lungmask test film (preprocess, forward, resize back,
two largest components, hole filling). Prints medians over ``--runs`` after 5 warm-up runs,
with the load average so a busy machine shows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from imaging.load import load_image
from model.segmenter import LungSegmenter
from training.data import LUNG5


def median_ms(fn, runs: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segmenter", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = LungSegmenter.load(args.segmenter)
    height, width = segmenter.config.image_size
    x = torch.randn(1, 1, height, width)
    rng = np.random.default_rng(0)
    film = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    films = sorted((LUNG5.parent / "lungmask" / "test" / "images").glob("*.jpg"))
    if films:
        film = load_image(films[0]).pixels

    def forward() -> None:
        with torch.inference_mode():
            segmenter.network(x)

    net_med, net_min = median_ms(forward, args.runs)
    full_med, full_min = median_ms(lambda: segmenter.analyse(film), args.runs)
    params = sum(p.numel() for p in segmenter.network.parameters())
    print(f"{segmenter.description}: {params / 1e6:.2f} M parameters")
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"network forward {height}×{width}: median {net_med:.1f} ms (min {net_min:.1f}) "
        f"over {args.runs} runs"
    )
    print(
        f"analyse() on a {film.shape[1]}×{film.shape[0]} film: median {full_med:.1f} ms "
        f"(min {full_min:.1f})"
    )


if __name__ == "__main__":
    main()
