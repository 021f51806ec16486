"""Where the app may write, and how requests reach the model (laptop, GPU server, Space).

- ``configure_storage``: everything the server writes goes under one folder,
  ``$LUNGCAM_DATA_DIR`` (default ``./data``); Gradio's upload cache is pointed there too.
- ``make_predict``: one image → ``Prediction``. Normally through a ``MicroBatcher`` so that
  concurrent requests share forwards; on a Hugging Face ZeroGPU Space (the ``spaces`` package
  is importable) through ``spaces.GPU`` instead, which attaches a GPU per call.
- ``stay_offline``: no update checks, analytics, telemetry or share links, in this process and
  the processes it starts; the Hugging Face hub only when the model is named ``hf-hub:…``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from imaging.image import LoadedImage
from model.config import resolve_model_spec
from model.prediction import Prediction
from serving.batching import MicroBatcher

DATA_ENV = "LUNGCAM_DATA_DIR"
DEFAULT_DATA_DIR = "data"
HUB_PREFIX = "hf-hub:"  # model.checkpoint.HUB_PREFIX, which imports torch
# What each library reads (at import, or when it would call out) to leave the network alone.
OFFLINE_SWITCHES = {
    # gradio: the version check (api.gradio.app) and launch analytics (huggingface.co)
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SHARE": "False",  # a share link is a tunnel through api.gradio.app
    # gradio's run history: its page offers to copy every run (images too) to a hub bucket
    "GRADIO_RUN_HISTORY": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations asks pypi.org for its latest version
}


def data_dir() -> Path:
    """The one folder the server writes to (created if missing)."""
    folder = Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def configure_storage() -> Path:
    """Point Gradio's caches into ``data_dir()`` unless set (non-empty); returns the data folder.

    Call before building the Blocks: Gradio reads ``GRADIO_TEMP_DIR`` when it creates them.
    """
    folder = data_dir()
    defaults = {
        "GRADIO_TEMP_DIR": folder / "gradio",
        "GRADIO_EXAMPLES_CACHE": folder / "gradio" / "cached_examples",
    }
    for name, default in defaults.items():
        os.environ[name] = os.environ.get(name) or str(default)
    return folder


def requested_model(argv: Sequence[str] | None = None) -> str | None:
    """The checkpoint ``python app.py ARGV`` will serve (its ``--model``, else
    ``resolve_model_spec``'s default), read before the app's own parser exists."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--model")
    try:
        known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except argparse.ArgumentError:  # e.g. "--model" without a value: app.py's parser says so
        return None
    return resolve_model_spec(known.model)


def stay_offline(argv: Sequence[str] | None = None) -> None:
    """Switch off every call out that gradio, huggingface_hub and albumentations make on their
    own (``OFFLINE_SWITCHES``), and the hub itself (``HF_HUB_OFFLINE=1``) unless the model
    ``python app.py ARGV`` asks for is ``hf-hub:…``.

    Call before those libraries are imported (they read the switches at import) and before
    the model's process starts, which inherits them. They override the environment: a clinical
    app does not phone out (``tests/test_offline.py`` checks both processes).
    """
    os.environ.update(OFFLINE_SWITCHES)
    spec = requested_model(argv)
    if not (spec or "").startswith(HUB_PREFIX):
        os.environ["HF_HUB_OFFLINE"] = "1"


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX=2`` would; True when it took effect.

    Gradio serves each request on its own thread and glibc gives threads their own arenas,
    which keep freed image buffers: with 8 concurrent 2048² uploads the server peaked at
    2.56 GB RSS by default and 1.73–1.78 GB with two arenas, at the same throughput
    (docs/BENCHMARKS.md). Call before serving threads start; an explicit
    ``$MALLOC_ARENA_MAX`` wins, and other C libraries are left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not ctypes.util.find_library("c"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):  # not glibc (e.g. musl, macOS)
        return False
    m_arena_max = -8  # from glibc's <malloc.h>
    return libc.mallopt(m_arena_max, arenas) == 1


def on_spaces_gpu() -> bool:
    """Whether the Hugging Face ``spaces`` package (ZeroGPU's ``spaces.GPU``) is importable."""
    return importlib.util.find_spec("spaces") is not None


class Predicts(Protocol):
    """What ``make_predict`` needs of the model (``serving.model_process.ModelService``)."""

    def predict(self, image: LoadedImage) -> Prediction: ...

    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]: ...


def make_predict(
    model: Predicts, max_batch_size: int = 8
) -> Callable[[LoadedImage], Prediction]:
    """The app's model call: micro-batched, or wrapped in ``spaces.GPU`` on a ZeroGPU Space
    (where ``model`` is a ``LocalModel``: the GPU is attached to the main process)."""
    if on_spaces_gpu():
        import spaces

        return spaces.GPU(model.predict)
    if max_batch_size == 1:
        return model.predict
    return MicroBatcher(model.predict_many, max_batch_size).submit


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the tests and benchmarks start servers on it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
