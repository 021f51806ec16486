"""What the screen needs of the model, ``ModelService``, and the model in this process.

``LocalModel`` holds the model here: CLIs, tests, and ZeroGPU Spaces (``spaces.GPU`` must wrap
a call made in the main process). ``serving.model_process.ModelProcess`` holds it in a process
of its own. Both run each call on a ``serving.model_calls.ModelCalls`` (there, its proxy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.managers import RemoteError
from typing import TYPE_CHECKING, Any

from serving.model_calls import ModelCalls, ModelUnavailable

if TYPE_CHECKING:
    from imaging.image import LoadedImage
    from model.config import ModelConfig
    from model.prediction import Prediction
    from model.predictor import Predictor

PROGRESS_EVERY_S = 0.5
STOPPED = (
    "the model's process stopped while working on this request (for example, out of memory); "
    "it is starting again: try again in a few seconds"
)


class ModelService:
    """What the screen needs of the model: its config, predictions, the Explain views."""

    config: ModelConfig

    def calls(self) -> ModelCalls:
        """The model's ``ModelCalls`` (or a proxy with its methods), once loaded."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the weights and the device, for the screen."""
        raise NotImplementedError

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the weights are loaded (``ModelUnavailable`` if they cannot be)."""

    def call(
        self, name: str, *args: Any, progress: Callable[[tuple[int, int]], Any] | None = None
    ) -> Any:
        """``ModelCalls.<name>(*args)`` where the model is (an Explain view, say); errors are
        ``ValueError`` (a bad choice) or ``ModelUnavailable``, on one line. While it runs,
        ``progress((done, total))`` is called every half second with the newest progress bar
        there (Score-CAM's: a ``gr.Progress`` takes this)."""
        calls = self.calls()
        try:
            method = getattr(calls, name)
        except AttributeError:
            raise ValueError(f"the model has no call {name!r}") from None
        if progress is None:
            return self._answer(calls, method, *args)
        since = time.time()
        with ThreadPoolExecutor(1, thread_name_prefix="model-call") as pool:
            answer = pool.submit(self._answer, calls, method, *args)
            while True:
                try:
                    return answer.result(timeout=PROGRESS_EVERY_S)
                except TimeoutError:
                    state = self._answer(calls, calls.progress, since)
                    if state is not None:
                        progress(state)

    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]:
        """``Predictor.predict_many`` where the model is; each prediction gets its image here."""
        images = list(images)
        predictions = self.call("predict_many", images)
        for prediction, image in zip(predictions, images, strict=True):
            prediction.image = image
        return predictions

    def predict(self, image: LoadedImage) -> Prediction:
        return self.predict_many([image])[0]

    def _answer(self, calls: ModelCalls, method: Callable, *args: Any) -> Any:
        """``method(*args)`` of ``calls``; a broken connection to the model's process as
        ``ModelUnavailable``."""
        try:
            return method(*args)
        except (EOFError, OSError) as err:
            self._lost(calls)
            raise ModelUnavailable(STOPPED) from err
        except RemoteError as err:  # it could not send its answer: the traceback's last line
            lines = [line for line in str(err).splitlines() if line.strip("- ")]
            raise ModelUnavailable(f"the model failed: {lines[-1]}") from err

    def _lost(self, calls: ModelCalls) -> None:
        """The connection to ``calls`` broke (only one in another process has a connection)."""


def model_line(config: ModelConfig, device: str) -> str:
    """The screen's line naming the served weights and their device."""
    return f"Model: `{config.description}` · device: `{device}`"


class LocalModel(ModelService):
    """``predictor`` itself, in this process."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.config = predictor.config
        self._calls = ModelCalls(predictor)

    def calls(self) -> ModelCalls:
        return self._calls

    def describe(self) -> str:
        return model_line(self.config, str(self.predictor.device))
