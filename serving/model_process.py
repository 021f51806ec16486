"""The model in a process of its own, ``ModelProcess``, so that the web process never imports
torch.

``python app.py`` starts it before it imports gradio: torch, timm and the weights load on one
core while gradio loads on the other (cold start, docs/BENCHMARKS.md). The child
(``python -m serving.model_calls``) serves a ``serving.model_calls.ModelCalls`` through
``multiprocessing.managers``, on a Unix socket in a private folder, with a random key. When it
dies (say, killed for memory) the request it was working on gets a one-line error, and it is
started again with the same weights.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from model.config import CONFIG_FILE, ModelConfig, resolve_model_spec
from serving.model_calls import (
    ADDRESS_ENV,
    KEY_ENV,
    ModelCalls,
    ModelManager,
    ModelUnavailable,
    load_predictor,
)
from serving.model_service import LocalModel, ModelService, model_line
from serving.runtime import OFFLINE_SWITCHES

__all__ = ["LocalModel", "ModelProcess", "ModelService", "ModelUnavailable", "load_predictor"]

REPO = Path(__file__).resolve().parent.parent
RELOADS = 3  # a child that stops is started again; this many stops in a row end that


def folder_config(spec: str | None) -> ModelConfig | None:
    """The config of checkpoint ``spec`` read without torch: a folder's ``config.json``, the
    default config when there is no checkpoint (untrained weights), None when only loading the
    weights tells (a ``.pt`` file, a hub name)."""
    resolved = resolve_model_spec(spec)
    if resolved is None:
        return ModelConfig()
    config = Path(resolved) / CONFIG_FILE
    return ModelConfig.load(config) if config.is_file() else None


class ModelProcess(ModelService):
    """The model in a child process; ``ModelProcess()`` starts it, ``load`` says what to load.

    The child starts importing torch at once, before it knows which weights: so the caller
    starts this first and imports the rest of the app meanwhile.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._folder = tempfile.TemporaryDirectory(prefix="lungcam-model-")  # its sockets
        self._started = itertools.count()
        self._options: dict[str, Any] = {}
        self._options_given = threading.Event()
        self._ready = threading.Event()  # loaded, or failed for good (then ``_failure``)
        self._failure: str | None = None
        self._loaded: tuple[ModelConfig, str] | None = None
        self._early_config: ModelConfig | None = None
        self._lock = threading.Lock()  # ``_served`` and ``_ready`` change together
        self._served: tuple[subprocess.Popen, ModelCalls] | None = None
        self._closed = False
        self._process, self._manager = self._spawn()
        threading.Thread(target=self._supervise, name="model-process", daemon=True).start()

    def load(
        self, spec: str | None = None, device: str | None = None, *, compile: bool = False
    ) -> None:
        """Load checkpoint ``spec`` there (as ``Predictor.load``); returns at once.

        ``config`` is then available without waiting when the checkpoint is a folder;
        ``wait_loaded`` waits for the weights and raises ``ModelUnavailable`` on failure.
        """
        try:
            self._early_config = folder_config(spec)
        except (ValueError, OSError):  # the model's process will say what is wrong with it
            self._early_config = None
        self._options = {"spec": spec, "device": device, "compile": compile}
        self._options_given.set()

    def wait_loaded(self, timeout: float | None = None) -> None:
        if not self._ready.wait(timeout):
            raise ModelUnavailable(f"the model was not loaded within {timeout} s")
        if self._failure is not None:
            raise ModelUnavailable(self._failure)

    @property
    def config(self) -> ModelConfig:
        if self._loaded is None and self._early_config is not None:
            return self._early_config
        self.wait_loaded()
        return self._loaded[0]

    @property
    def pid(self) -> int:
        """The model's process id (a new one after a restart)."""
        return self._process.pid

    def calls(self) -> ModelCalls:
        while True:
            self.wait_loaded()
            with self._lock:
                if self._served is not None:
                    return self._served[1]

    def describe(self) -> str:
        self.wait_loaded()
        return f"{model_line(*self._loaded)} (in its own process, pid {self.pid})"

    def close(self) -> None:
        """Stop the model's process (the web process's exit does too: it closes its stdin)."""
        self._closed = True
        self._options_given.set()
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._folder.cleanup()

    def _spawn(self) -> tuple[subprocess.Popen, ModelManager]:
        """Start a child in this working directory (so relative model paths mean the same to
        both) that listens on a new socket; the manager that reaches it."""
        address = os.path.join(self._folder.name, f"model-{next(self._started)}.sock")
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **OFFLINE_SWITCHES}  # whoever started this one: no update checks
        env |= {"PYTHONPATH": path, ADDRESS_ENV: address, KEY_ENV: self._key.hex()}
        command = [sys.executable, "-m", "serving.model_calls"]
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE)
        return process, ModelManager(address, self._key)

    def _connect(self) -> ModelCalls:
        """The child's ``ModelCalls``, once it listens (at once) and serves (after its imports)."""
        while True:
            try:
                self._manager.connect()
                return self._manager.ModelCalls()
            except (EOFError, OSError):
                if (code := self._process.poll()) is not None:
                    exited = f"the model's process exited (code {code}) before it started"
                    raise ModelUnavailable(exited) from None
                time.sleep(0.05)

    def _supervise(self) -> None:
        """Background thread: connect, load, and start the child again each time it stops
        (unless it never loaded the weights, or stopped ``RELOADS`` times in a row)."""
        stops = 0
        try:
            while True:
                try:
                    stops = 0 if self._serve(self._process) else stops + 1
                except ModelUnavailable as err:  # the same weights would fail again
                    self._fail(str(err))
                    return
                code = self._process.wait()
                self._stop_serving()
                if self._closed:
                    return
                if self._loaded is None or stops > RELOADS:
                    self._fail(f"the model's process stopped (exit code {code}) while loading")
                    return
                restart = f"the model's process stopped (exit code {code}); starting it again"
                print(f"warning: {restart}", file=sys.stderr, flush=True)
                self._process, self._manager = self._spawn()
        except Exception as err:  # e.g. no memory left to start one, or an unreadable answer
            self._fail(f"the model's process could not be started: {type(err).__name__}: {err}")

    def _serve(self, process: subprocess.Popen) -> bool:
        """Connect to ``process``, load the weights there and serve its calls; False when it
        stopped (or this was closed) before."""
        try:
            calls = self._connect()
            self._options_given.wait()
            if self._closed:
                return False
            self._loaded = calls.load(**self._options)
        except (EOFError, OSError):
            return False
        with self._lock:
            self._served = (process, calls)
            self._ready.set()
        return True

    def _stop_serving(self, calls: ModelCalls | None = None) -> None:
        """Later calls wait for the next process (given ``calls``: if they are still served)."""
        with self._lock:
            if calls is None or (self._served is not None and self._served[1] is calls):
                self._served = None
                if self._failure is None:
                    self._ready.clear()

    def _lost(self, calls: ModelCalls) -> None:
        """A connection to ``calls`` broke: once their process has exited (the usual reason),
        later calls wait for the next one rather than reach the dead one."""
        served = self._served
        if served is not None and served[1] is calls:
            with contextlib.suppress(subprocess.TimeoutExpired):
                served[0].wait(timeout=5)
                self._stop_serving(calls)

    def _fail(self, message: str) -> None:
        """Give up for good: every waiting and later request gets ``message``."""
        self._failure = message
        self._ready.set()
