"""Serving benchmark: the real app on loopback, called through ``gradio_client``.

Every request sends a film of its own (``bench.films.Films``: lung5 test films in turn, padded
and scaled to 2048×2048 PNG, each with a random patch, so no two uploads have the same bytes):
a repeated file would be answered from LungCAM's per-session case cache, which the peer does
not have. The apps run as their own processes (``bench.server``). Measures:
- cold start: ``python app.py`` process start → first prediction returned to the client;
- end-to-end latency p50/p95 of sequential ``/predict`` calls;
- where a request's server time goes, timed in-process on one film with the same functions
  the handler calls (decode, preprocess, model, overlay, image encode through Gradio's own
  cache writer); the rest of the end-to-end time is upload, queue and transport;
- throughput with 1, 4 and 8 concurrent clients;
- peak resident memory of the server and the model's process (psutil samples every 50 ms;
  Linux's VmHWM, each process's own peak, summed);
- side by side with a typical peer app (``../shared/bench/peer_app.py``, or ``--peer``): cold
  starts alternating, and sequential latencies alternating call by call, in the same run;
  the ratios LungCAM / peer are the figures to compare across machines.

    python -m bench.serve [--model PATH] [--requests 20] [--clients 1 4 8] [--per-client 4]
                          [--max-batch-size 8] [--json FILE] [--peer PATH] [--cold-rounds 3]
    python -m bench.serve --peer-only --cold-rounds 3 --requests 15   # only the comparison

Without ``--model`` (and no bundled model) a random-weight 224 px DenseNet201 is used: the
same work as the trained one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from gradio import processing_utils
from gradio_client import Client

from bench.films import Films
from bench.server import PEER_APP, ask, ask_peer, model_for_bench, serve, serve_peer
from imaging.load import load_image
from imaging.overlay import overlay
from model.heatmaps import normalise_cam
from model.predictor import Predictor
from ui.common import DISPLAY_FORMAT


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def side_by_side(
    model: str, peer: Path, folder: Path, films: Films, rounds: int, requests: int, extra: tuple
) -> dict[str, object]:
    """Cold start and sequential latency of LungCAM and the peer, interleaved in one run.

    Cold starts alternate (peer, LungCAM, …) ``rounds`` times; latencies alternate request by
    request while both servers are up, so machine noise hits both alike. Both get the same
    films, each film once. Ratios are LungCAM / peer (below 1: LungCAM is faster).
    """
    colds: dict[str, list[float]] = {"lungcam": [], "peer": []}
    for _ in range(rounds):
        film = films.next()
        with serve_peer(peer, folder, film) as (_, cold):
            colds["peer"].append(cold)
        with serve(model, folder, film, *extra) as (_, cold):
            colds["lungcam"].append(cold)
    times: dict[str, list[float]] = {"lungcam": [], "peer": []}
    with ExitStack() as both:
        ours, _ = both.enter_context(serve(model, folder, films.next(), *extra))
        theirs, _ = both.enter_context(serve_peer(peer, folder, films.next()))
        calls = {
            "lungcam": (Client(ours.url, verbose=False), ask),
            "peer": (Client(theirs.url, verbose=False), ask_peer),
        }
        warm_up = films.next()
        for client, call in calls.values():
            call(client, warm_up)
        for film in films.take(requests):
            for name, (client, call) in calls.items():
                times[name].append(time_ms(lambda c=client, f=call, u=film: f(c, u)))
    cold = {name: round(statistics.median(v), 2) for name, v in colds.items()}
    p50 = {name: round(percentile(v, 50), 1) for name, v in times.items()}
    return {
        "cold_start_s_median": cold,
        "cold_start_s_all": {name: [round(v, 2) for v in vs] for name, vs in colds.items()},
        "latency_p50_ms": p50,
        "latency_p95_ms": {name: round(percentile(v, 95), 1) for name, v in times.items()},
        "cold_start_ratio": round(cold["lungcam"] / cold["peer"], 3),
        "latency_p50_ratio": round(p50["lungcam"] / p50["peer"], 3),
    }


def latency(url: str, films: Films, requests: int) -> list[float]:
    """Seconds per sequential ``/predict`` call from one client, a new film each."""
    client = Client(url, verbose=False)
    uploads = films.take(requests + 1)
    ask(client, uploads[0])  # warm-up
    times = []
    for upload in uploads[1:]:
        start = time.perf_counter()
        ask(client, upload)
        times.append(time.perf_counter() - start)
    return times


def throughput(url: str, films: Films, clients: int, per_client: int) -> float:
    """Requests per second with ``clients`` concurrent clients, a new film each request."""
    pool_clients = [Client(url, verbose=False) for _ in range(clients)]
    uploads = films.take(clients * per_client)

    def work(index: int) -> None:
        for upload in uploads[index * per_client : (index + 1) * per_client]:
            ask(pool_clients[index], upload)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return clients * per_client / (time.perf_counter() - start)


def components(model: str, upload: Path, rounds: int, cache: Path) -> dict[str, float]:
    """Median ms of each server-side step of one request, in-process, same functions as app.py."""
    predictor = Predictor.load(model, "cpu")
    steps: dict[str, Callable[[dict], object]] = {
        "decode_ms": lambda s: s.update(image=load_image(upload)),
        "preprocess_ms": lambda s: s.update(batch=predictor.preprocess(s["image"].pixels)[None]),
        "model_ms": lambda s: s.update(out=predictor.cam(s["batch"])),
        "overlay_ms": lambda s: s.update(rgb=overlay(s["image"].pixels, _heatmap(s))),
        "encode_ms": lambda s: processing_utils.save_img_array_to_cache(
            s["rgb"], str(cache), format=DISPLAY_FORMAT
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        state: dict = {}
        for name, step in steps.items():
            start = time.perf_counter()
            step(state)
            if round_index:  # the first round warms up
                samples[name].append((time.perf_counter() - start) * 1000)
    result = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    outside = sum(v for k, v in result.items() if k != "model_ms")
    result["outside_model_ms"] = round(outside, 1)
    result["outside_share_of_model"] = round(outside / result["model_ms"], 3)
    for fmt in ("png", "webp"):  # what gr.Image(format=...) would cost instead
        encode = [
            time_ms(
                lambda f=fmt: processing_utils.save_img_array_to_cache(
                    state["rgb"], str(cache), format=f
                )
            )
            for _ in range(rounds)
        ]
        result[f"alternative_encode_{fmt}_ms"] = round(statistics.median(encode), 1)
    return result


def time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _heatmap(state: dict) -> np.ndarray:
    """The top class's heatmap at image size, as ``Prediction.heatmap`` computes it."""
    logits, maps = state["out"]
    return normalise_cam(maps[0, int(torch.argmax(logits[0]))], state["image"].size)


def own_figures(
    model: str, folder: Path, films: Films, batch_flag: tuple, args: argparse.Namespace
) -> dict[str, object]:
    """Cold start, latency, throughput, memory and the in-process step times of LungCAM."""
    upload = films.next()
    result: dict[str, object] = {}
    with serve(model, folder, upload, *batch_flag) as (server, cold):
        result["cold_start_s"] = round(cold, 2)
        result["rss_mb_after_first_request"] = round(server.rss() / 2**20, 1)
        times = latency(server.url, films, args.requests)
        result["latency_p50_ms"] = round(1000 * percentile(times, 50), 1)
        result["latency_p95_ms"] = round(1000 * percentile(times, 95), 1)
        result["throughput_rps"] = {
            str(n): round(throughput(server.url, films, n, args.per_client), 3)
            for n in args.clients
        }
        result["peak_rss_mb_sampled"] = round(max(server.rss_samples) / 2**20, 1)
        hwm = server.status_bytes("VmHWM")
        result["peak_rss_mb_vmhwm"] = round(hwm / 2**20, 1) if hwm else None
        result["peak_rss_anon_mb_sampled"] = round(max(server.anon_samples) / 2**20, 1)
    steps = components(model, upload, args.rounds, folder / "cache")
    result["components"] = steps
    server_ms = steps["model_ms"] + steps["outside_model_ms"]
    result["transport_and_queue_ms"] = round(result["latency_p50_ms"] - server_ms, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: bundled, else random 224 px)")
    parser.add_argument("--requests", type=int, default=20, help="sequential latency calls")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-client", type=int, default=4, help="calls per client")
    parser.add_argument("--rounds", type=int, default=10, help="in-process component rounds")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--peer",
        type=Path,
        default=PEER_APP if PEER_APP.is_file() else None,
        help=f"peer app to measure side by side (default {PEER_APP} when present)",
    )
    parser.add_argument("--cold-rounds", type=int, default=3, help="side-by-side cold starts")
    parser.add_argument(
        "--peer-only", action="store_true", help="only the side-by-side comparison with --peer"
    )
    args = parser.parse_args(argv)
    if args.peer_only and args.peer is None:
        parser.error("--peer-only needs --peer (the peer app was not found)")
    with tempfile.TemporaryDirectory(prefix="lungcam-bench-") as tmp:
        folder = Path(tmp)
        films = Films(folder)
        model = model_for_bench(args.model, folder)
        result: dict[str, object] = {
            "hardware": f"{platform.machine()}, {os.cpu_count()} cores",
            "model": model if args.model else Path(model).name,
        }
        batch_flag = ("--max-batch-size", str(args.max_batch_size), "--device", "cpu")
        if args.peer is not None:
            result["vs_peer"] = side_by_side(
                model, args.peer, folder, films, args.cold_rounds, args.requests, batch_flag
            )
        if not args.peer_only:
            result |= own_figures(model, folder, films, batch_flag, args)
        sizes = [path.stat().st_size for path in folder.glob("film-*.png")]
        result["uploads"] = {  # every one a different film: none repeats another's bytes
            "distinct_films_sent": films.made,
            "bytes_median": int(statistics.median(sizes)),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
