"""Run a tensor function at fixed batch sizes, through static buffers: CUDA graphs on a GPU.

At batch 1 to 8 DenseNet201 on an H100 is bound by kernel launches, not arithmetic
(docs/BENCHMARKS.md). A CUDA graph records a function's kernels once and replays them with one
launch, but it replays fixed shapes at fixed addresses. So ``StaticBatches`` keeps, per batch
size, a static input; captures the function on it once (lazily, on first use); and per call
copies the batch in, replays, and clones the outputs out. A batch is padded up to the next
captured size (powers of two up to ``max_size``; at most 2× the work) and one larger than
``max_size`` is cut into chunks. Padding changes nothing for the real images: in eval mode every
image goes through the network on its own.

How a size is captured is a strategy: ``capture_cuda_graph`` on CUDA; ``replay_eagerly``
elsewhere runs the same static buffers, padding and slicing without a graph, so CPU tests check
that path against the plain one.

Example::

    runner = StaticBatches(step, capture_for(batch.device))
    outputs = runner(batch)  # == step(batch), row for row
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]  # batch → outputs, each (B, ...)
Replay = Callable[[], None]  # refreshes the static outputs from the static input
Capture = Callable[[Step, torch.Tensor], tuple[Replay, tuple[torch.Tensor, ...]]]

DEFAULT_MAX_BATCH = 128
WARMUP_CALLS = 3  # as torch.cuda.make_graphed_callables does


def capture_cuda_graph(step: Step, static_input: torch.Tensor) -> tuple[Replay, tuple]:
    """Record ``step(static_input)`` as one ``torch.cuda.CUDAGraph``; (replay, static outputs).

    Warm-up calls run first on a side stream, as PyTorch's CUDA-graph notes ask, so one-off work
    (cuDNN's algorithm search, autograd's first-call setup) stays out of the graph. Errors for
    unsafe calls are per thread (``thread_local``): other threads of a server may keep using
    the GPU while a new batch size is captured.
    """
    device = static_input.device
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                step(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = step(static_input)
    return graph.replay, outputs


def replay_eagerly(step: Step, static_input: torch.Tensor) -> tuple[Replay, tuple]:
    """No graph: each replay runs ``step`` again and copies its outputs into the static ones."""
    outputs = step(static_input)

    def replay() -> None:
        for static, fresh in zip(outputs, step(static_input), strict=True):
            static.copy_(fresh)

    return replay, outputs


def capture_for(device: torch.device) -> Capture:
    """CUDA graphs on a CUDA device; elsewhere the same static-batch path, run eagerly."""
    return capture_cuda_graph if device.type == "cuda" else replay_eagerly


def padded_sizes(max_size: int) -> tuple[int, ...]:
    """The batch sizes captured: 1, 2, 4, … below ``max_size``, then ``max_size``."""
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1; got {max_size}")
    sizes = [1]
    while sizes[-1] * 2 < max_size:
        sizes.append(sizes[-1] * 2)
    return (*sizes, max_size) if sizes[-1] != max_size else tuple(sizes)


def _memory_format(batch: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last 4-D batch (the predictor's on CUDA), else contiguous."""
    channels_last = batch.dim() == 4 and not batch.is_contiguous()
    if channels_last and batch.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class StaticBatches:
    """``step`` run at fixed batch sizes through static buffers; thread-safe.

    ``step`` must be a pure function of its input's values whose every output has the batch
    as its first dimension, and must treat each row on its own (so padding is harmless).
    """

    def __init__(self, step: Step, capture: Capture, max_size: int = DEFAULT_MAX_BATCH) -> None:
        self.step = step
        self.capture = capture
        self.sizes = padded_sizes(max_size)
        self._captured: dict[tuple, tuple[torch.Tensor, Replay, tuple[torch.Tensor, ...]]] = {}
        self._lock = threading.Lock()

    @property
    def captured_sizes(self) -> list[int]:
        """The batch sizes captured so far, in capture order."""
        return [key[0] for key in self._captured]

    def padded_size(self, n: int) -> int:
        """The captured size a chunk of ``n`` images runs at (``n`` ≤ ``max_size``)."""
        return next(size for size in self.sizes if size >= n)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``step(batch)``: the same outputs, computed at the captured sizes."""
        if len(batch) == 0:
            raise ValueError(f"an empty batch has nothing to run; got shape {tuple(batch.shape)}")
        chunks = [self._run(chunk) for chunk in batch.split(self.sizes[-1])]
        if len(chunks) == 1:
            return chunks[0]
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))

    def _run(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(chunk)
        with self._lock:  # the static buffers are shared by every caller
            static_input, replay, outputs = self._entry(self.padded_size(n), chunk)
            static_input[:n].copy_(chunk)
            static_input[n:].zero_()
            replay()
            return tuple(output[:n].clone() for output in outputs)

    def _entry(
        self, size: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, Replay, tuple[torch.Tensor, ...]]:
        key = (size, tuple(like.shape[1:]), like.dtype, like.device)
        if key not in self._captured:
            static_input = torch.zeros(
                (size, *like.shape[1:]), dtype=like.dtype, device=like.device
            ).contiguous(memory_format=_memory_format(like))
            replay, outputs = self.capture(self.step, static_input)
            self._captured[key] = (static_input, replay, outputs)
        return self._captured[key]
