"""The model in a process of its own, so that the web server never imports torch.

``python app.py`` starts this process before it imports gradio: torch, timm and the weights
load on one core while gradio loads on the other (cold start, docs/BENCHMARKS.md). The
server keeps serving when the model's process dies (say, killed for memory): that request
gets a clear error, the process is started again and loads the same weights.

- ``ModelService``: what the screen needs of the model, wherever it runs: its config, a
  batched ``predict_many`` and the Explain tab's views (``call``).
- ``LocalModel``: the model in this process (tests, and ZeroGPU Spaces, where ``spaces.GPU``
  must wrap a call made in the main process).
- ``ModelProcess``: the model in a child process (``python -m serving.model_process``, started
  by it; not meant to be run by hand). Requests from many server threads are in flight at
  once and run on threads there, as they would here.

The two talk over a ``multiprocessing.connection`` with a random key, in pickled tuples:
server → model ``("load", options)``, then ``("call", id, operation, args)``; model → server
``("loaded", config, device)`` or ``("failed", message)``, then ``("done", id, result)`` or
``("raised", id, error)``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import CONFIG_FILE, ModelConfig, resolve_model_spec
from serving.runtime import OFFLINE_SWITCHES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imaging.image import LoadedImage
    from model.prediction import Prediction
    from model.predictor import Predictor

REPO = Path(__file__).resolve().parent.parent
ADDRESS_ENV = "LUNGCAM_MODEL_PROCESS_ADDRESS"
KEY_ENV = "LUNGCAM_MODEL_PROCESS_KEY"
# The Explain tab's views (``explain.views``), called by name: the server cannot hold the
# functions themselves without importing torch.
VIEWS = ("method_overlay", "side_by_side", "contrast_overlay", "faithfulness_line", "method_hint")
# Threads in the model's process: predictions get their own, so that Explain views (a
# cancelled Score-CAM runs on: Gradio cannot stop a running call) never hold them up.
PREDICT_THREADS = 2
VIEW_THREADS = 4
RELOADS = 3  # after a crash it is restarted; this many failed reloads in a row end that


class ModelUnavailable(RuntimeError):
    """The model could not be loaded, or its process stopped while working on a request."""


def load_predictor(
    spec: str | None, device: str | None, *, compile: bool = False
) -> Predictor:
    """``Predictor.load`` as the app asks for it: a checkpoint that cannot be used
    (``ValueError``, ``OSError``) becomes ``ModelUnavailable`` with its message."""
    from model.predictor import Predictor

    try:
        return Predictor.load(spec, device, compile=compile)
    except (ValueError, OSError) as err:  # e.g. statistics fitted for another segmenter
        raise ModelUnavailable(str(err)) from err


def run_operation(predictor: Predictor, operation: str, *args: Any) -> Any:
    """``predictor.predict_many(*args)``, or one of ``explain.views``' views with ``predictor``
    as its first argument: what ``ModelService.call`` runs, in the process holding the model."""
    if operation == "predict_many":
        return predictor.predict_many(*args)
    if operation not in VIEWS:
        raise ValueError(f"unknown model operation {operation!r}; known: predict_many, {VIEWS}")
    from explain import views  # torch: only in the process that holds the model

    return getattr(views, operation)(predictor, *args)


class ModelService:
    """What the screen needs of the model: its config, predictions, the Explain views."""

    config: ModelConfig

    def call(self, operation: str, *args: Any) -> Any:
        """Run ``run_operation(predictor, operation, *args)`` where the model is."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the weights and the device, for the screen."""
        raise NotImplementedError

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the weights are loaded (``ModelUnavailable`` if they cannot be)."""

    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]:
        return self.call("predict_many", list(images))

    def predict(self, image: LoadedImage) -> Prediction:
        return self.predict_many([image])[0]


def model_line(config: ModelConfig, device: str) -> str:
    """The screen's line naming the served weights and their device."""
    return f"Model: `{config.description}` · device: `{device}`"


class LocalModel(ModelService):
    """``predictor`` itself, in this process."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.config = predictor.config

    def call(self, operation: str, *args: Any) -> Any:
        return run_operation(self.predictor, operation, *args)

    def describe(self) -> str:
        return model_line(self.config, str(self.predictor.device))

    def predict(self, image: LoadedImage) -> Prediction:
        return self.predictor.predict(image)  # one name for spaces.GPU to wrap


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
        self._listener = Listener(authkey=self._key)
        self._lock = threading.Lock()  # one sender at a time; guards the fields below
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count()
        self._connection: Connection | None = None
        self._options: dict[str, Any] | None = None
        self._options_given = threading.Event()
        self._ready = threading.Event()  # loaded, or failed for good (then ``_failure``)
        self._failure: str | None = None
        self._loaded: tuple[ModelConfig, str] | None = None
        self._early_config: ModelConfig | None = None
        self._closed = False
        self._process = self._spawn()  # also sets ``_connected``: that child has connected
        threading.Thread(target=self._serve, name="model-process", daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        """Start a child in this working directory (so relative model paths mean the same to
        both), with a watcher that gives up when it exits before connecting."""
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **OFFLINE_SWITCHES}  # whoever started this one: no update checks
        env |= {ADDRESS_ENV: str(self._listener.address), KEY_ENV: self._key.hex()}
        env["PYTHONPATH"] = path
        process = subprocess.Popen([sys.executable, "-m", "serving.model_process"], env=env)
        connected = self._connected = threading.Event()

        def watch() -> None:
            code = process.wait()
            if not connected.is_set() and not self._closed:
                self._fail(f"the model's process exited (code {code}) before it started")
                self._listener.close()  # ends the accept() that waits for it

        threading.Thread(target=watch, name="model-process-watch", daemon=True).start()
        return process

    def load(
        self,
        spec: str | None = None,
        device: str | None = None,
        *,
        compile: bool = False,
    ) -> None:
        """Load checkpoint ``spec`` there (as ``Predictor.load``); returns at once.

        ``config`` is then available without waiting when the checkpoint is a folder;
        ``wait_loaded`` waits for the weights and raises ``ModelUnavailable`` on failure.
        """
        try:
            self._early_config = folder_config(spec)
        except (ValueError, OSError):  # the model's process will say what is wrong with it
            self._early_config = None
        self._options = {
            "spec": spec,
            "device": device,
            "compile": compile,
        }
        self._options_given.set()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the weights are loaded; ``ModelUnavailable`` if they cannot be."""
        if not self._ready.wait(timeout):
            raise ModelUnavailable(f"the model was not loaded within {timeout} s")
        if self._failure is not None:
            raise ModelUnavailable(self._failure)

    @property
    def config(self) -> ModelConfig:
        if self._loaded is None and self._early_config is not None:
            return self._early_config
        self.wait_loaded()
        assert self._loaded is not None
        return self._loaded[0]

    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]:
        """As ``ModelService.predict_many``; the images stay here (``main`` does not send them
        back): each prediction gets its own image again."""
        images = list(images)
        predictions = self.call("predict_many", images)
        for prediction, image in zip(predictions, images, strict=True):
            prediction.image = image
        return predictions

    def describe(self) -> str:
        self.wait_loaded()
        assert self._loaded is not None
        return f"{model_line(*self._loaded)} (in its own process, pid {self._process.pid})"

    def call(self, operation: str, *args: Any) -> Any:
        self.wait_loaded()
        future: Future = Future()
        with self._lock:
            request = next(self._ids)
            self._pending[request] = future  # before sending: the answer may come at once
            try:
                if self._connection is None:
                    raise OSError("it has just stopped")
                self._connection.send(("call", request, operation, args))
            except (OSError, ValueError) as err:
                del self._pending[request]
                raise ModelUnavailable(
                    f"the model's process is not running ({err}); try again in a few seconds"
                ) from err
            except Exception:  # arguments that do not pickle: a caller's bug, raised as is
                del self._pending[request]
                raise
        return future.result()

    def close(self) -> None:
        """Stop the model's process (the server's exit does this too: it then reads EOF)."""
        self._closed = True
        with self._lock:
            if self._connection is not None:
                self._connection.close()
        self._process.terminate()
        self._process.wait(timeout=30)
        self._listener.close()

    def _serve(self) -> None:
        """Background thread: connect, load, hand answers to callers; restart after a crash."""
        failed_reloads = 0
        try:
            while not self._closed:
                connection = self._listener.accept()  # at once: the child waits for this
                self._connected.set()
                self._options_given.wait()
                with self._lock:
                    self._connection = connection
                    connection.send(("load", self._options))
                loaded = self._read(connection)
                if self._closed or self._failure is not None:
                    return
                failed_reloads = 0 if loaded else failed_reloads + 1
                if self._loaded is None or failed_reloads > RELOADS:  # it would do it again
                    self._fail("the model's process stopped while loading the weights (see above)")
                    return
                try:
                    self._process.wait(timeout=10)  # it exits when its connection breaks
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
                print(
                    f"warning: the model's process stopped (exit code "
                    f"{self._process.returncode}); starting it again",
                    file=sys.stderr,
                    flush=True,
                )
                self._process = self._spawn()
        except Exception as err:  # a child gone mid-handshake, no memory to start another, …
            if not self._closed:
                self._fail(f"the model's process could not be started: {err!r}")

    def _fail(self, message: str) -> None:
        """Give up for good: every waiting and later request gets ``message``."""
        with self._lock:
            if self._failure is None:
                self._failure = message
            self._disconnected(ModelUnavailable(self._failure))
        self._ready.set()

    def _disconnected(self, error: ModelUnavailable) -> None:
        """No child to send to: every request waiting for an answer gets ``error``. Called
        with the lock held."""
        self._connection = None
        for future in self._pending.values():
            future.set_exception(error)
        self._pending.clear()

    def _read(self, connection: Connection) -> bool:
        """Messages from one model process until it stops; whether it loaded the weights."""
        loaded = False
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            except Exception as err:  # an answer that does not unpickle here: start afresh
                print(f"warning: unreadable answer from the model's process: {err!r}", flush=True)
                self._process.kill()
                break
            kind = message[0]
            if kind == "loaded":
                self._loaded, loaded = (message[1], message[2]), True
                self._ready.set()
            elif kind == "failed":
                self._fail(message[1])
            else:
                _, request, payload = message
                with self._lock:
                    future = self._pending.pop(request)
                if kind == "done":
                    future.set_result(payload)
                else:
                    future.set_exception(payload)
        with self._lock:
            if self._failure is None:
                self._ready.clear()
            stopped = ModelUnavailable(
                "the model's process stopped while working on this request (for example, "
                "out of memory); it is starting again: try again in a few seconds"
            )
            self._disconnected(stopped)
        return loaded


def _sendable(error: Exception) -> Exception:
    """``error`` as the server may unpickle it: the app's own and builtin exceptions as they
    are, a library's as its nearest builtin kind with the same text (unpickling, say,
    ``torch.OutOfMemoryError`` would import torch in the server)."""
    kind = type(error)
    if kind.__module__.split(".")[0] in ("builtins", "imaging", "serving"):
        candidate = error
    else:
        builtin = next(c for c in kind.__mro__ if c.__module__ == "builtins")
        try:
            candidate = builtin(f"{kind.__name__}: {error}")
        except Exception:  # a builtin with other arguments (UnicodeDecodeError, …)
            candidate = RuntimeError(f"{kind.__name__}: {error}")
    try:
        pickle.dumps(candidate)
    except Exception:
        return RuntimeError(f"{kind.__name__}: {error}")
    return candidate


def main() -> None:
    """The model's process: connect, import torch & co., load, then answer calls."""
    try:
        connection = Client(os.environ[ADDRESS_ENV], authkey=bytes.fromhex(os.environ[KEY_ENV]))
    except OSError:  # the server has already gone (say, ``app.py --help``)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server; its exit stops this
    import model.predictor  # noqa: F401 (the long imports, while the server imports gradio)
    from serving.runtime import limit_malloc_arenas

    limit_malloc_arenas()
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        """Pickle ``message`` (here, so a result that cannot be pickled still gets an answer)
        and send it; the server may have gone, and the main loop then reads EOF and exits."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with send_lock, contextlib.suppress(OSError):
            connection.send_bytes(data)

    try:
        _, options = connection.recv()
    except (EOFError, OSError):  # the server stopped before saying what to load
        return
    try:
        predictor = load_predictor(**options)
    except ModelUnavailable as err:  # anything else: its traceback, then the server says so
        send(("failed", str(err)))
        return
    send(("loaded", predictor.config, str(predictor.device)))

    def answer(request: int, operation: str, args: tuple) -> None:
        try:
            result = run_operation(predictor, operation, *args)
            if operation == "predict_many":  # the server has the images: 4 MB each at 2048²
                result = [replace(prediction, image=None) for prediction in result]
            send(("done", request, result))
        except Exception as err:
            send(("raised", request, _sendable(err)))

    predictions = ThreadPoolExecutor(PREDICT_THREADS, thread_name_prefix="predict")
    views = ThreadPoolExecutor(VIEW_THREADS, thread_name_prefix="view")
    while True:
        try:
            _, request, operation, args = connection.recv()
        except (EOFError, OSError):  # the server has gone
            break
        pool = predictions if operation == "predict_many" else views
        pool.submit(answer, request, operation, args)
    os._exit(0)  # at once: a Score-CAM still running has nobody to read it


if __name__ == "__main__":
    main()
