"""Concurrent requests share forwards: a small micro-batcher in front of ``predict_many``.

Each caller decodes its own upload (so one bad file fails only its own request), then
``submit``s the decoded image and blocks. One worker thread takes whatever is waiting, up to
``max_batch_size``, runs one batched call, and hands each caller its own result. At low load a
request runs alone with no added wait; under load the queue fills while a batch runs and the
next batch takes the waiting requests together.

Example::

    batcher = MicroBatcher(predictor.predict_many, max_batch_size=8)
    prediction = batcher.submit(load_image(path))  # from any thread
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Run ``fn(list_of_items) -> list_of_results`` on items submitted from many threads."""

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        max_batch_size: int = 8,
        max_wait_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1; got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds; got {max_wait_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s  # how long a lone request waits for company
        # The sizes of the latest batches (bounded: the server runs for months).
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._queue: queue.Queue[tuple[T, Future[R]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._worker.start()

    def submit(self, item: T) -> R:
        """Queue ``item``, wait for its batch, and return its own result (or raise its error)."""
        if not self._worker.is_alive():
            raise RuntimeError("the micro-batcher is closed")
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Finish the queued requests, then stop the worker."""
        self._queue.put(None)
        self._worker.join()

    def _take_batch(self) -> tuple[list[tuple[T, Future[R]]], bool]:
        """Block for one request, then take what else arrives in time; (batch, keep_running)."""
        first = self._queue.get()
        if first is None:
            return [], False
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                entry = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if entry is None:
                return batch, False
            batch.append(entry)
        return batch, True

    def _run(self) -> None:
        running = True
        while running:
            batch, running = self._take_batch()
            if not batch:
                continue
            items = [item for item, _ in batch]
            self.batch_sizes.append(len(items))
            try:
                results = self.fn(items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
            except Exception as err:  # every caller of this batch gets the error
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
