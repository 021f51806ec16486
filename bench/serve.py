"""Serving benchmark: the real app on loopback, called through ``gradio_client``.

Every request sends a film of its own (``Films``: lung5 test films in turn, padded and scaled
to 2048×2048 PNG, each with a random patch, so no two uploads have the same bytes): a repeated
file would be answered from LungCAM's per-session case cache, which the peer does not have.
Measures:
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
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from gradio import processing_utils
from gradio_client import Client, handle_file
from PIL import Image, ImageOps

from imaging.load import load_image
from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY, overlay
from model.checkpoint import save_checkpoint
from model.config import CLASS_FOLDERS, ModelConfig, resolve_model_spec
from model.heatmaps import normalise_cam
from model.network import create_network
from model.predictor import Predictor
from serving.runtime import free_port
from training.data import LUNG5
from ui.common import DISPLAY_FORMAT

REPO = Path(__file__).resolve().parent.parent
PEER_APP = REPO.parent / "shared" / "bench" / "peer_app.py"  # the side-by-side anchor


class Films:
    """Uploads for a benchmark, a new one per request: lung5 test films in turn (one of each
    class, round after round), padded to a square and scaled to ``side``² (None: as they are),
    each with a random 4×4 patch. No two have the same bytes (checked by hash), so no request
    is answered from a cache, and no two overlays are the same file (Gradio names outputs by
    their content: concurrent requests with byte-identical overlays rewrite one file while
    another client downloads it, a truncated download). Safe to call from several threads.
    """

    def __init__(self, folder: Path, side: int | None = 2048, seed: int = 0) -> None:
        per_class = [sorted((LUNG5 / "test" / name).iterdir()) for name in CLASS_FOLDERS]
        self.sources = [p for turn in itertools.zip_longest(*per_class) for p in turn if p]
        if not self.sources:
            raise FileNotFoundError(f"no lung5 test films under {LUNG5 / 'test'}")
        self.folder, self.side = folder, side
        self.made = 0  # uploads handed out
        self._rng = np.random.default_rng(seed)
        self._digests: set[str] = set()
        self._lock = threading.Lock()

    def next(self) -> Path:
        """A new upload, unlike every one made before."""
        with self._lock:
            index, self.made = self.made, self.made + 1
            patch = self._rng.integers(0, 256, (4, 4), dtype=np.uint8)
            where = self._rng.random(2)
        source = self.sources[index % len(self.sources)]
        image = Image.open(source).convert("L")
        if self.side:
            size = (self.side, self.side)
            image = ImageOps.pad(image, size, Image.Resampling.BICUBIC, color=0)
        pixels = np.array(image)
        y, x = (where * (np.array(pixels.shape) - 4)).astype(int)
        pixels[y : y + 4, x : x + 4] = patch
        path = self.folder / f"film-{index}-{source.stem}.png"
        Image.fromarray(pixels).save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            if digest in self._digests:
                raise RuntimeError(f"{path.name} repeats an earlier upload's bytes")
            self._digests.add(digest)
        return path

    def take(self, count: int) -> list[Path]:
        """``count`` new uploads, made now (so that making them is never timed)."""
        return [self.next() for _ in range(count)]


def make_uploads(folder: Path, count: int, side: int | None = 2048) -> list[Path]:
    """``count`` distinct uploads (``Films``)."""
    return Films(folder, side).take(count)


def model_for_bench(requested: str | None, folder: Path) -> str:
    """The checkpoint to serve: ``requested``, the bundled model, else random 224 px weights."""
    spec = resolve_model_spec(requested)
    if spec is not None:
        return spec
    torch.manual_seed(0)
    config = ModelConfig(version="random-bench")
    return str(save_checkpoint(create_network(config), config, folder / "random224"))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Server:
    """A running ``app.py`` and its memory samples."""

    process: subprocess.Popen
    url: str
    rss_samples: list[int] = field(default_factory=list)
    anon_samples: list[int] = field(default_factory=list)

    def rss(self) -> int:
        """Resident bytes of the server and its children now."""
        proc = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    def status_bytes(self, name: str) -> int | None:
        """A line of Linux's ``/proc/PID/status`` (``VmHWM``, ``RssAnon``, …) in bytes, summed
        over the server and its children (the model's process).

        ``RssAnon`` is the processes' own memory, without the shared library pages that RSS
        also counts (torch's CUDA libraries are most of those).
        """
        try:
            proc = psutil.Process(self.process.pid)
            pids = [proc.pid, *(child.pid for child in proc.children(recursive=True))]
        except psutil.Error:
            return None
        values = [_status_line(pid, name) for pid in pids]
        return sum(v for v in values if v is not None) if any(values) else None


def _status_line(pid: int, name: str) -> int | None:
    status = Path(f"/proc/{pid}/status")
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    return None


def ask(client: Client, upload: Path) -> dict:
    """One ``/predict`` call, as the README shows it."""
    label, _, _, _ = client.predict(
        handle_file(str(upload)), DEFAULT_OPACITY, DEFAULT_COLORMAP, api_name="/predict"
    )
    return label


@contextmanager
def running(
    command: list[str],
    port: int,
    env: dict[str, str],
    first_call: Callable[[Client], object],
    log_path: Path,
    timeout: float = 300.0,
) -> Iterator[tuple[Server, float]]:
    """Start ``command`` (a Gradio server on ``port``); yield (server, seconds from process
    start until ``first_call`` returned)."""
    log = log_path.open("w")
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    server = Server(process, f"http://127.0.0.1:{port}/")
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                server.rss_samples.append(server.rss())
                server.anon_samples.append(server.status_bytes("RssAnon") or 0)
            except (psutil.Error, OSError):
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        deadline = start + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early; see {log.name}")
            try:
                first_call(Client(server.url, verbose=False))
                break
            except Exception:  # not listening yet
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.1)
        yield server, time.perf_counter() - start
    finally:
        stop.set()
        sampler.join()
        process.terminate()
        process.wait(timeout=30)
        log.close()


def serve(
    model: str, data: Path, upload: Path, *extra: str, timeout: float = 300.0
) -> AbstractContextManager[tuple[Server, float]]:
    """Start the app; yield (server, seconds from process start to first prediction served)."""
    port = free_port()
    command = [sys.executable, "app.py", "--model", model, "--host", "127.0.0.1"]
    command += ["--port", str(port), *extra]
    env = {"LUNGCAM_DATA_DIR": str(data), "GRADIO_TEMP_DIR": ""}
    return running(command, port, env, lambda c: ask(c, upload), data / "server.log", timeout)


def serve_peer(
    script: Path, data: Path, upload: Path, timeout: float = 300.0
) -> AbstractContextManager[tuple[Server, float]]:
    """Start the peer app (``../shared/bench/peer_app.py``) the same way."""
    port = free_port()
    env = {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    command = [sys.executable, str(script)]
    return running(command, port, env, lambda c: ask_peer(c, upload), data / "peer.log", timeout)


def ask_peer(client: Client, upload: Path) -> dict:
    """One call of the peer's ``/predict`` (file in; label and 224 px overlay out)."""
    label, _ = client.predict(handle_file(str(upload)), api_name="/predict")
    return label


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
