"""Training on two CPU processes (gloo): the per-rank sampler, one DDP epoch against one
process on the same global batches, and ``torchrun -m training.train`` with resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from model.config import ModelConfig
from model.network import create_network
from serving.runtime import free_port
from tests.conftest import REPO
from training import recipe
from training import train as trainer
from training.data import ImageRecord
from training.distributed import Ranks, process_group
from training.sources import RankShareSampler, make_sampler
from training.train_data import make_train_loader

# 16 images: 5 classes, two sources of very different sizes in each.
RECORDS = [
    ImageRecord(Path(f"{i}.png"), i % 5, f"p{i}", "big" if i < 11 else "small") for i in range(16)
]
ARGS = trainer.parse_args(
    ["--data", "-", "--out", "-", "--batch-size", "8", "--samples-per-epoch", "16"]
)
WORLD_SIZE = 2


@pytest.mark.parametrize("mode", ["class-source", "none"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_partition_the_one_stream(mode, world_size):
    shares = [RankShareSampler(RECORDS, mode, 10, r, world_size, seed=4) for r in range(world_size)]
    for sampler in shares:
        sampler.set_epoch(1)
    drawn = [list(s) for s in shares]
    per_rank = -(-10 // world_size)
    assert [len(s) for s in shares] == [len(d) for d in drawn] == [per_rank] * world_size
    stream = list(make_sampler(RECORDS, mode, per_rank * world_size, seed=4 + 1))
    interleaved = [d[i] for i in range(per_rank) for d in drawn]
    assert interleaved == stream  # rank r holds stream[r::world_size], nothing else
    shares[0].set_epoch(2)
    assert list(shares[0]) != drawn[0]


def test_every_rank_keeps_the_class_source_balance():
    draws = 20_000
    for rank in range(WORLD_SIZE):
        sampler = RankShareSampler(RECORDS, "class-source", draws, rank, WORLD_SIZE)
        cells = Counter((RECORDS[i].label, RECORDS[i].source) for i in sampler)
        for (label, source), n in cells.items():
            # 5 classes with 2 sources each: every cell a tenth of the rank's draws
            assert n / len(sampler) == pytest.approx(0.1, abs=0.015), (label, source)


def test_the_global_batch_must_split_over_the_ranks():
    args = trainer.parse_args(["--data", "-", "--out", "-", "--batch-size", "9"])
    with pytest.raises(ValueError, match=r"--batch-size 9 is the global batch.*multiple of 2"):
        make_train_loader(_dataset(), RECORDS, args, Ranks(0, WORLD_SIZE))


def _dataset() -> TensorDataset:
    """Fixed 32 px images and the records' labels (the same in every process)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(RECORDS), 3, 32, 32, generator=generator)
    return TensorDataset(images, torch.tensor([r.label for r in RECORDS]))


def _head_epoch(
    loader: DataLoader, wrap: Callable[[nn.Module], nn.Module] = lambda m: m
) -> dict[str, torch.Tensor]:
    """A head-stage epoch (2 steps of 8 images) through ``training.recipe`` on a DenseNet121
    (the 201's structure, faster): the weights and the classifier's gradients of the last
    step."""
    torch.manual_seed(0)
    model = create_network(ModelConfig(architecture="densenet121", input_size=(3, 32, 32)))
    params = recipe.set_stage(model, "head")
    optimizer, scheduler = recipe.make_optimizer(params, "head", ARGS, len(loader))
    loss, cpu = nn.CrossEntropyLoss(), torch.device("cpu")
    net = wrap(model)
    recipe.train_one_epoch(net, loader, "head", optimizer, scheduler, loss, cpu, False, False)
    grads = {f"grad.{k}": p.grad for k, p in model.get_classifier().named_parameters()}
    return {**model.state_dict(), **grads}


def _ddp_rank(rank: int, port: int, out: str) -> None:
    """One of two torchrun-like processes: the epoch on this rank's share, saved."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    with process_group("cpu") as ranks:
        loader = make_train_loader(_dataset(), RECORDS, ARGS, ranks)
        torch.save(_head_epoch(loader, ranks.wrap), Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_process_epoch_matches_one_process_on_the_same_global_batches(tmp_path):
    torch.multiprocessing.spawn(_ddp_rank, (free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE))
    single = _head_epoch(make_train_loader(_dataset(), RECORDS, ARGS, Ranks()))
    # What rank 0 would do alone on its share: its 4-image halves of the same batches.
    alone = _head_epoch(
        DataLoader(_dataset(), 4, sampler=RankShareSampler(RECORDS, ARGS.balance, 16, 0, 2))
    )
    assert rank0.keys() == single.keys()
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key  # the ranks never drift apart
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in ("classifier.weight", "grad.weight", "grad.bias"):
        assert (alone[key] - single[key]).abs().max() > 1e-4, key  # averaging is not a no-op


def _torchrun(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), "-m", "training.train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_trains_writes_once_from_rank_0_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(tiny_data), "--out", str(out), "--image-size", "32", "--workers", "0"]
    common += ["--batch-size", "4", "--samples-per-epoch", "8", "--device", "cpu"]
    first = _torchrun(*common, "--head-epochs", "1", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = _torchrun(*common, "--head-epochs", "1", "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [(line["stage"], line["epoch"]) for line in lines] == [
        ("head", 1),
        ("full", 1),
        ("full", 2),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"].startswith("torchrun --nproc_per_node 2 -m training.train --data")
    assert (out / "best" / "config.json").is_file()
    assert first.stderr.count("train cells") == 1  # only rank 0 logs
