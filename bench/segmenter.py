"""Benchmark: CPU latency of the lung segmenter at its working size, and of the full path.

    python -m bench.segmenter [--segmenter PATH] [--threads 2] [--runs 30]
    python -m bench.segmenter --predict [--model PATH] [--rounds 10]

"network" is one forward of a (1, 1, h, w) input at the config's working size; "analyse" is
``LungSegmenter.analyse`` on a 512×512 lungmask test film (preprocess, forward, resize back,
two largest components, hole filling). Prints medians over ``--runs`` after 5 warm-up runs,
with the load average so a busy machine shows.

``--predict`` measures what the segmenter adds to ``/predict``'s server time: the Analyze
handler (decode, ``Predictor.predict``, overlay, notes with every class's on-lung share, the
line beside the overlay) plus Gradio's JPEG encode, on bench.serve's 2048×2048 upload, in
interleaved rounds without the segmenter, with it at the process's threads and with it at 1
thread (``LungSegmenter.threads``, the default); medians. "with" means the process's thread
count (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from imaging.load import load_image
from model.segmenter import SEGMENTER_THREADS, LungSegmenter
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


def predict_share(model: str | None, rounds: int) -> dict[str, float]:
    """Median ms of /predict's server-side work without and with the segmenter (see above)."""
    import tempfile

    from gradio import processing_utils

    from bench.films import make_uploads
    from model.predictor import Predictor
    from ui.analyze import AnalyzeHandlers
    from ui.common import DISPLAY_FORMAT

    predictor = Predictor.load(model, "cpu")
    segmenter = predictor.segmenter
    if segmenter is None:
        raise SystemExit("no lung segmenter found (assets/segmenter); nothing to compare")
    handlers = AnalyzeHandlers(predictor.predict)
    modes = {"without": (None, None), "with_1_thread": (segmenter, 1), "with": (segmenter, None)}
    samples: dict[str, list[float]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory(prefix="lungcam-bench-") as tmp:
        upload = str(make_uploads(Path(tmp), 1)[0])

        def request() -> None:
            _, drawn, shown, _, case = handlers.analyze(upload, 0.45, "jet")
            handlers.lung_line(case, shown["value"])
            processing_utils.save_img_array_to_cache(drawn, tmp, format=DISPLAY_FORMAT)

        for round_index in range(rounds + 1):
            for name, (loaded, threads) in modes.items():
                predictor.segmenter = loaded
                segmenter.threads = threads
                start = time.perf_counter()
                request()
                if round_index:  # the first round warms up
                    samples[name].append((time.perf_counter() - start) * 1000)
    predictor.segmenter, segmenter.threads = segmenter, SEGMENTER_THREADS
    result = {f"{name}_ms": round(statistics.median(v), 1) for name, v in samples.items()}
    for name in ("with", "with_1_thread"):
        added = result[f"{name}_ms"] / result["without_ms"] - 1
        result[f"{name}_added"] = round(added, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segmenter", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--predict", action="store_true", help="share of /predict's server time")
    parser.add_argument("--model", help="with --predict: checkpoint (default: bundled)")
    parser.add_argument("--rounds", type=int, default=10, help="with --predict: rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.predict:
        result = predict_share(args.model, args.rounds)
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}, threads {torch.get_num_threads()}, "
            f"load average {os.getloadavg()[0]:.1f} (after)"
        )
        print(json.dumps(result, indent=2))
        return
    segmenter = LungSegmenter.load(args.segmenter)
    segmenter.threads = None  # analyse() below runs at --threads too
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
