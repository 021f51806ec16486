"""Training on several processes under ``torchrun``: the process group, each rank's device,
the DistributedDataParallel wrapper, and what rank 0 tells the others.

    torchrun --nproc_per_node 2 -m training.train --data ../shared/data/lung5 --out runs/ddp

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address; the
backend is NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU. Without
``WORLD_SIZE`` (or with 1) no process group is made and every helper is a no-op: one process
needs no ``torchrun``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.predictor import pick_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world_size`` training processes, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def split(self, batch_size: int) -> int:
        """This rank's part of a global ``batch_size`` (the same on every rank)."""
        if batch_size % self.world_size:
            raise ValueError(
                f"--batch-size {batch_size} is the global batch; it must split evenly over "
                f"the {self.world_size} processes (use a multiple of {self.world_size})"
            )
        return batch_size // self.world_size

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks), else itself.

        Wrap after choosing the trainable parameters: DDP reduces only those that require
        grad when it is built, so each training stage wraps anew.
        """
        if not self.active:
            return model
        cuda = self.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.device] if cuda else None)

    def share(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (waiting for rank 0, like a barrier)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average(self, value: float) -> float:
        """The mean of ``value`` over all ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.active:
            dist.barrier()


@contextmanager
def process_group(requested_device: str | None = None) -> Iterator[Ranks]:
    """This process's ``Ranks`` (with its device) from torchrun's environment; the group is
    destroyed on leaving. ``requested_device`` ``cuda`` or ``cpu`` picks the backend (CUDA
    when available by default); under torchrun a CUDA index comes from ``LOCAL_RANK``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(requested_device)
    if world_size == 1:
        yield Ranks(device=device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield Ranks(dist.get_rank(), world_size, device)
    finally:
        dist.destroy_process_group()
