"""The apps a serving benchmark measures, each started as its own process on loopback and called
through ``gradio_client``: LungCAM's ``app.py`` and the peer (``../shared/bench/peer_app.py``),
with their resident memory sampled every 50 ms while they run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from gradio_client import Client, handle_file

from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.checkpoint import save_checkpoint
from model.config import ModelConfig, resolve_model_spec
from model.network import create_network
from serving.runtime import free_port

REPO = Path(__file__).resolve().parent.parent
PEER_APP = REPO.parent / "shared" / "bench" / "peer_app.py"  # the side-by-side anchor


def model_for_bench(requested: str | None, folder: Path) -> str:
    """The checkpoint to serve: ``requested``, the bundled model, else random 224 px weights."""
    spec = resolve_model_spec(requested)
    if spec is not None:
        return spec
    torch.manual_seed(0)
    config = ModelConfig(version="random-bench")
    return str(save_checkpoint(create_network(config), config, folder / "random224"))


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
    """One ``/predict`` call, as the README shows it; its label."""
    return client.predict(
        handle_file(str(upload)), DEFAULT_OPACITY, DEFAULT_COLORMAP, api_name="/predict"
    )[0]


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
