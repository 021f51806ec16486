"""What the web process calls on the model, as methods of one object: ``ModelCalls``.

Its public methods are the calls: ``load``, ``predict_many``, ``progress`` and every Explain
view (each public function of ``explain.views``, with the predictor as its first argument), so
a new view is a new function there and nothing here. ``serving.model_process.LocalModel``
holds one in the web process; ``ModelProcess`` reaches the one in the model's process through
``ModelManager`` (``multiprocessing.managers``), whose proxy has the same methods.

Every call raises only what the web process can read without importing torch, on one line:
``ValueError`` for a bad choice (its own message), ``ModelUnavailable`` for the rest.

``python -m serving.model_calls`` is the model's process (started by ``ModelProcess``).
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.managers import BaseManager
from typing import TYPE_CHECKING, Any

from serving.runtime import limit_malloc_arenas

if TYPE_CHECKING:
    from imaging.image import LoadedImage
    from model.config import ModelConfig
    from model.prediction import Prediction
    from model.predictor import Predictor

ADDRESS_ENV = "LUNGCAM_MODEL_ADDRESS"
KEY_ENV = "LUNGCAM_MODEL_KEY"


class ModelUnavailable(RuntimeError):
    """The model could not be loaded, could not answer, or its process stopped meanwhile."""


def load_predictor(spec: str | None, device: str | None, *, compile: bool = False) -> Predictor:
    """``Predictor.load`` as the app asks for it: a checkpoint that cannot be used
    (``ValueError``, ``OSError``) becomes ``ModelUnavailable`` with its message."""
    from model.predictor import Predictor

    try:
        return Predictor.load(spec, device, compile=compile)
    except (ValueError, OSError) as err:  # e.g. statistics fitted for another segmenter
        raise ModelUnavailable(str(err)) from err


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (torch's span several)."""
    return " ".join(str(error).split())


def plain_errors(call: Callable) -> Callable:
    """``call``, raising ``ValueError`` or ``ModelUnavailable`` with a one-line message; any
    other error is a fault, whose traceback goes to this process's stderr."""

    @functools.wraps(call)
    def answer(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except ValueError as err:
            raise ValueError(one_line(err)) from None
        except ModelUnavailable as err:
            raise ModelUnavailable(one_line(err)) from None
        except Exception as err:
            traceback.print_exc()
            kind = type(err).__name__
            raise ModelUnavailable(f"the model failed: {kind}: {one_line(err)}") from None

    return answer


def view_names() -> list[str]:
    """The Explain views: the public functions defined in ``explain.views``."""
    from explain import views

    return [
        name
        for name, function in inspect.getmembers(views, inspect.isfunction)
        if function.__module__ == views.__name__ and not name.startswith("_")
    ]


class ModelCalls:
    """The model's calls: ``load``, ``predict_many``, ``progress`` and the Explain views."""

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.predictor = predictor

    @plain_errors
    def load(
        self, spec: str | None, device: str | None, compile: bool = False
    ) -> tuple[ModelConfig, str]:
        """Load checkpoint ``spec`` (as ``Predictor.load``); its config and device."""
        self.predictor = load_predictor(spec, device, compile=compile)
        return self.predictor.config, str(self.predictor.device)

    @plain_errors
    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]:
        """``Predictor.predict_many`` without the images (the caller has them: 4 MB each at
        2048², not worth sending back)."""
        return [replace(p, image=None) for p in self.predictor.predict_many(images)]

    def progress(self, since: float) -> tuple[int, int] | None:
        """(steps done, steps) of the newest progress bar started after ``since`` (a
        ``time.time()``) in this process, e.g. Score-CAM's channel batches; None if none."""
        from tqdm import tqdm

        with tqdm.get_lock():  # ``_instances``: tqdm's own set of the bars still open
            bars = [bar for bar in tqdm._instances if bar.total and bar.start_t >= since]
        if not bars:
            return None
        newest = max(bars, key=lambda bar: bar.start_t)
        return int(newest.n), int(newest.total)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *view_names()]

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_") or name not in view_names():
            raise AttributeError(f"the model has no call {name!r}")
        from explain import views

        return plain_errors(functools.partial(getattr(views, name), self.predictor))


class ModelManager(BaseManager):
    """Serves ``ModelCalls`` in the model's process; ``connect`` to it from the web process."""


ModelManager.register("ModelCalls", ModelCalls)


def _exit_with_parent() -> None:
    """Exit at once when the web process closes this one's stdin (or dies): a Score-CAM still
    running here has nobody to answer."""
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    """The model's process: listen, import torch & co. (while the web process imports gradio),
    then serve ``ModelCalls`` until the web process goes."""
    limit_malloc_arenas()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the web process, then this
    manager = ModelManager(os.environ[ADDRESS_ENV], bytes.fromhex(os.environ[KEY_ENV]))
    server = manager.get_server()  # listening from here on
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()
    import model.predictor  # noqa: F401 (the long imports)

    server.serve_forever()


if __name__ == "__main__":  # run as ``serving.model_calls``: what it pickles names that module
    from serving.model_calls import main as serve

    serve()
