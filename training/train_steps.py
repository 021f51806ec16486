"""One ``training.train`` run in named steps: build, resume, run each stage, finalize.

``build`` makes what a run holds (model, config, loaders, loss); ``resume`` restores
``OUT/last.pt``; ``run_stage`` trains one stage epoch by epoch, and after each epoch rank 0
validates, keeps the best weights, logs and saves ``last.pt`` (``end_epoch``) and tells the
other ranks whether to stop; ``finalize`` fits the temperature on the best weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import create_network
from training.calibrate import fit_temperature
from training.distributed import Ranks
from training.recipe import (
    collect_logits,
    make_optimizer,
    set_stage,
    single_labels,
    train_one_epoch,
)
from training.sources import RankShareSampler
from training.train_data import TrainData, load_data, read_splits

log = logging.getLogger("lungcam.train")


@dataclass
class Progress:
    """Where a run stands, saved in ``last.pt``: the stage (index into the plan), the epochs
    done in it, the best val macro-F1 so far and the epochs since it last improved."""

    stage: int = 0
    epoch: int = 0
    best_f1: float = -1.0
    stale: int = 0


@dataclass(frozen=True)
class Validation:
    """Rank 0's scores of one epoch on the val split."""

    macro_f1: float  # single-label images
    accuracy: float  # single-label images
    set_accuracy: float | None  # label-set images, right when the top class is admitted


@dataclass
class Run:
    """What one run holds: its arguments, ranks, model and config, data, and progress."""

    args: argparse.Namespace
    ranks: Ranks
    model: nn.Module
    config: ModelConfig
    data: TrainData
    progress: Progress = field(default_factory=Progress)
    started: float = field(default_factory=time.monotonic)

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    @property
    def device(self) -> torch.device:
        return self.ranks.device

    @property
    def amp(self) -> bool:
        """bf16 autocast: on CUDA unless ``--no-amp``."""
        return self.device.type == "cuda" and not self.args.no_amp

    @property
    def plan(self) -> list[tuple[str, int]]:
        """(stage, epochs) in order: the head on a frozen backbone, then the full network."""
        return [("head", self.args.head_epochs), ("full", self.args.epochs)]

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


def build(args: argparse.Namespace, ranks: Ranks) -> Run:
    """Seed, read the data, and make the model (fresh, ImageNet or ``--init-from``) on this
    rank's device; an uneven global batch fails before any image is decoded."""
    ranks.split(args.batch_size)
    if not ranks.main:
        log.setLevel(logging.WARNING)  # rank 0 logs for all
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    splits = read_splits(args)
    config = ModelConfig(
        input_size=(3, args.image_size, args.image_size),
        clahe=args.clahe,
        lung_crop_margin=args.lung_crop_margin,
    )
    if args.init_from:
        model, init_config = load_checkpoint(args.init_from, "cpu")
        config.mean, config.std = init_config.mean, init_config.std
    else:
        model = create_network(config, pretrained=args.pretrained)
    model.to(ranks.device)
    if ranks.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return Run(args, ranks, model, config, load_data(splits, config, args, ranks))


def resume(run: Run) -> dict[str, Any] | None:
    """With ``--resume`` and an ``OUT/last.pt``: its weights into the model, its progress into
    the run, and the saved state (for the optimizer of the stage it was in); else None."""
    last = run.out / "last.pt"
    if not (run.args.resume and last.exists()):
        return None
    saved = torch.load(last, map_location=run.device, weights_only=True)
    run.model.load_state_dict(saved["model"])
    run.progress = Progress(**{f.name: saved[f.name] for f in fields(Progress)})
    return saved


def run_stage(run: Run, index: int, saved: dict[str, Any] | None) -> bool:
    """Train stage ``index`` of the plan until its epochs, ``--patience`` or the time budget
    end (mid-stage from ``saved``, the state ``resume`` returned); True when out of time."""
    stage, epochs = run.plan[index]
    params = set_stage(run.model, stage, run.args.freeze_blocks)
    net = run.ranks.wrap(run.model)  # after set_stage: DDP reduces what requires grad now
    steps = epochs * len(run.data.train_loader)
    optimizer, scheduler = make_optimizer(params, stage, run.args, steps)
    first_epoch = 0
    if saved is not None and saved["stage"] == index:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        first_epoch = saved["epoch"]
    else:
        run.progress.stale = 0
    earlier_epochs = sum(n for _, n in run.plan[:index])
    loader, loss_fn, main = run.data.train_loader, run.data.loss_fn, run.ranks.main
    out_of_time = False
    for epoch in tqdm(
        range(first_epoch, epochs), desc=f"stage {stage}", disable=None if main else True
    ):
        if isinstance(loader.sampler, RankShareSampler):
            loader.sampler.set_epoch(earlier_epochs + epoch)
        loss = train_one_epoch(
            net, loader, stage, optimizer, scheduler, loss_fn, run.device, run.amp, main
        )
        loss = run.ranks.average(loss)
        run.progress.stage, run.progress.epoch = index, epoch + 1
        if main:
            out_of_time = end_epoch(run, stage, loss, optimizer, scheduler)
        # rank 0 decides for all, so every rank stops at the same epoch
        run.progress, out_of_time = run.ranks.share((run.progress, out_of_time))
        if run.progress.stale >= run.args.patience or out_of_time:
            log.info("stopping %s: %s", stage, "time budget" if out_of_time else "no improvement")
            break
    run.progress.stage, run.progress.epoch = index + 1, 0
    return out_of_time


def end_epoch(
    run: Run,
    stage: str,
    loss: float,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> bool:
    """Rank 0 after an epoch: validate, keep the best weights in ``OUT/best``, append the
    epoch to ``metrics.jsonl``, save ``last.pt``; True when past ``--max-minutes``."""
    scores = validate(run.model, run.data.val_loader, run.device, run.amp)
    if scores.macro_f1 > run.progress.best_f1:
        run.progress.best_f1, run.progress.stale = scores.macro_f1, 0
        save_checkpoint(run.model, run.config, run.out / "best")
    else:
        run.progress.stale += 1
    record = {
        "stage": stage,
        "epoch": run.progress.epoch,
        "train_loss": round(loss, 5),
        "val_macro_f1": round(scores.macro_f1, 5),
        "val_accuracy": round(scores.accuracy, 5),
        "lr": scheduler.get_last_lr()[0],
        "minutes": round(run.minutes(), 2),
    }
    if scores.set_accuracy is not None:
        record["val_set_accuracy"] = round(scores.set_accuracy, 5)
    with open(run.out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    log.info("%s", record)
    state = {
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **asdict(run.progress),
    }
    torch.save(state, run.out / "last.pt")
    return bool(run.args.max_minutes and run.minutes() > run.args.max_minutes)


def validate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> Validation:
    """Macro-F1 and accuracy of ``model`` on ``loader``'s single-label images, and the share of
    its label-set images whose top class is admitted (None without any)."""
    logits, allowed = collect_logits(model, loader, device, amp)
    labels, single = single_labels(allowed)
    predicted = logits.argmax(1)
    macro_f1 = float(f1_score(labels[single], predicted[single], average="macro"))
    accuracy = float((predicted == labels)[single].mean())
    set_accuracy = None
    if not single.all():
        hit = allowed[np.arange(len(predicted)), predicted][~single]
        set_accuracy = float(hit.mean())
    return Validation(macro_f1, accuracy, set_accuracy)


def finalize(
    best: Path,
    val_loader: DataLoader,
    device: torch.device,
    args: argparse.Namespace,
    processes: int = 1,
) -> Path:
    """Fit the temperature on validation logits of the best weights (single-label images)
    and re-save them; ``summary.json`` records the command (``torchrun`` when ``processes``
    > 1)."""
    model, config = load_checkpoint(best, device)
    logits, allowed = collect_logits(model, val_loader, device, amp=False)
    labels, single = single_labels(allowed)
    logits, labels = logits[single], labels[single]
    config.temperature = fit_temperature(logits, labels)
    config.trained = True
    config.version = args.version or f"lung5-{time.strftime('%Y%m%d')}-{config.image_size[0]}px"
    save_checkpoint(model, config, best, half=args.half)
    launcher = f"torchrun --nproc_per_node {processes}" if processes > 1 else "python"
    summary = {
        "command": launcher + " -m training.train " + shlex.join(sys.argv[1:]),
        "temperature": config.temperature,
        "version": config.version,
        "val_macro_f1": float(f1_score(labels, logits.argmax(1), average="macro")),
    }
    (best.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("saved %s (T=%.3f)", best, config.temperature)
    return best
