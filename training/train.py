"""Fine-tune DenseNet201 on class folders with the two-stage recipe.

Stage 1 trains the head alone on a frozen backbone (Adam, 1e-3 → 3e-4); stage 2 fine-tunes
everything (AdamW, 1e-4 → 3e-5 cosine, weight decay 0.05). Every number is a flag.

    python -m training.train --data ../shared/data/lung5 ../shared/data/lung5-extra --out runs/demo

Several ``--data`` folders are merged split by split (class folders by name), each image
keeping its source (``training.sources``). By default each epoch is drawn so that classes
are equal and, within a class, every source is equal (``--balance class-source``), so the
few adult normals and hospital COVID-19 images are not drowned by one-source classes. The
sampler then does all the balancing and the loss is unweighted; only ``--balance loss``
(uniform shuffle) weighs the loss by inverse class frequency — never both, or rare classes
would be up-weighted twice.

A label set (``Pneumonia`` of unknown cause, e.g. ``../shared/data/adult-extra``) is trained
as a partial label, loss −log(p_bacterial + p_viral) (``SetCrossEntropy``), and is left out
of the validation macro-F1 and the temperature fit, which need one true class.

On several processes (CPU or one GPU each) the same command runs under ``torchrun``:

    torchrun --nproc_per_node 2 -m training.train --data ../shared/data/lung5 --out runs/ddp

``--batch-size`` stays the global batch (each of N processes takes 1/N of it), gradients are
averaged over processes (``training.distributed``), each process draws its share of the same
balanced stream, and rank 0 alone validates, logs and writes checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.crop import CropBox, lung_box
from model.network import create_network
from model.segmenter import LungSegmenter
from model.transforms import build_transform
from training.calibrate import fit_temperature
from training.data import XrayDataset, class_counts, subsample
from training.distributed import Ranks, process_group
from training.localization_loss import set_cross_entropy
from training.sources import (
    BALANCE_MODES,
    Labelled,
    RankShareSampler,
    describe_cells,
    load_folders,
    loss_class_weights,
    make_sampler,
)

log = logging.getLogger("lungcam.train")
STAGES = ("head", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add(
        "--data",
        required=True,
        nargs="+",
        help="one or more split roots (train/ val/ [test/]) or folders of classes; class "
        "folders merge by name, each folder's manifest.csv names the sources",
    )
    add("--out", required=True, help="output folder: best/ checkpoint, last.pt, metrics.jsonl")
    add("--image-size", type=int, default=224)
    add(
        "--batch-size",
        type=int,
        default=32,
        help="global batch: under torchrun each of N processes takes 1/N of it",
    )
    add("--head-epochs", type=int, default=1, help="stage 1 epochs (backbone frozen)")
    add("--head-lr", type=float, default=1e-3)
    add("--head-lr-final", type=float, default=3e-4)
    add("--epochs", type=int, default=10, help="stage 2 epochs (full fine-tune)")
    add("--lr", type=float, default=1e-4)
    add("--lr-final", type=float, default=3e-5)
    add("--weight-decay", type=float, default=0.05)
    add(
        "--patience",
        type=int,
        default=5,
        help="early stop after N epochs without a better val macro-F1",
    )
    add("--max-per-class", type=int, default=0, help="subsample each class (0: all)")
    add(
        "--balance",
        choices=BALANCE_MODES,
        default="class-source",
        help="class-source: sample classes equally and, within a class, sources equally; "
        "class: classes equally; loss: shuffle, class-weighted loss; none: shuffle, plain loss",
    )
    add(
        "--samples-per-epoch",
        type=int,
        default=0,
        help="images drawn per epoch (0: the size of the train set)",
    )
    add("--clahe", action="store_true", help="CLAHE on every image (stored in the config)")
    add(
        "--lung-crop-margin",
        type=float,
        default=None,
        help="crop every image to its lung fields ± this share (needs the segmenter; stored "
        "in the config so serving crops the same way)",
    )
    add("--crop-jitter", type=float, default=0.05, help="random move of the crop's edges")
    add("--segmenter", default=None, help="lung segmenter folder (default: the bundled one)")
    add(
        "--freeze-blocks",
        type=int,
        default=0,
        help="in the full stage keep the stem and the first N dense blocks frozen (0-3)",
    )
    add(
        "--pretrained",
        action="store_true",
        help="start from timm's ImageNet weights (needs the hub)",
    )
    add("--init-from", help="start from a local checkpoint instead")
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    add("--seed", type=int, default=0)
    add("--workers", type=int, default=2)
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    add("--half", action="store_true", help="save the best weights in fp16")
    add("--max-minutes", type=float, default=0, help="stop after this long (0: no limit)")
    add("--version", default=None, help="version string stored in config.json")
    return parser.parse_args(argv)


def set_stage(model: nn.Module, stage: str, freeze_blocks: int = 0) -> list[nn.Parameter]:
    """Freeze the backbone for ``head``; for ``full`` unfreeze all but the stem and the first
    ``freeze_blocks`` dense blocks (their generic edge filters need no change, and skipping
    their backward makes a CPU epoch much shorter). Returns the trainable parameters."""
    for param in model.parameters():
        param.requires_grad_(stage == "full")
    if stage == "full" and freeze_blocks:
        names = [name for name, _ in model.features.named_children()]
        cut = names.index(f"denseblock{freeze_blocks}") + 1
        for child in list(model.features.children())[:cut]:
            child.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except for frozen BatchNorm layers: their statistics must not move."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
            module.eval()


def make_optimizer(
    params: list[nn.Parameter], stage: str, args: argparse.Namespace, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam for the head stage, AdamW with weight decay for the full stage; cosine decay."""
    if stage == "head":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=args.head_lr)
        final = args.head_lr_final
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        final = args.lr_final
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps), eta_min=final)
    return optimizer, scheduler


class SetCrossEntropy(nn.Module):
    """Cross-entropy against each image's admitted classes, −log Σ_{k ∈ allowed} p_k
    (``training.localization_loss.set_cross_entropy``): plain cross-entropy for a one-class
    label. With ``weight`` (``--balance loss``) an image weighs its first admitted class's
    weight and the mean is weighted, as in ``nn.CrossEntropyLoss(weight=...)``."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return set_cross_entropy(logits, allowed)
        labels = allowed.int().argmax(dim=1)  # the first admitted class
        weights = self.weight[labels]
        groups = [labels == k for k in labels.unique()]  # one weight each: weight × group mean
        per_group = [weights[g].sum() * set_cross_entropy(logits[g], allowed[g]) for g in groups]
        return torch.stack(per_group).sum() / weights.sum()


def single_labels(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, keep) from (N, K) admitted-class masks: the first admitted class of each row,
    and which rows admit exactly one class (those a macro-F1 or a temperature can use)."""
    return allowed.argmax(axis=1), allowed.sum(axis=1) == 1


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    stage: str,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    amp: bool,
    progress: bool = True,
) -> float:
    """One pass over ``loader``; the mean training loss of ``loss_fn(logits, targets)``
    (targets as the loader yields them: ``XrayDataset``'s admitted-class masks for
    ``SetCrossEntropy``). ``model`` may be DDP-wrapped (``Ranks.wrap``), which averages the
    gradients over ranks in ``backward``."""
    set_train_mode(model)
    total, seen = 0.0, 0
    for images, targets in tqdm(
        loader, desc=stage, leave=False, disable=None if progress else True
    ):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(targets)
        seen += len(targets)
    return total / max(seen, 1)


@torch.inference_mode()
def collect_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) over ``loader``; ``XrayDataset``'s targets are admitted-class masks."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        images = images.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs.append(model(images).float().cpu())
        targets.append(labels)
    return torch.cat(outputs).numpy(), torch.cat(targets).numpy()


def lung_framing(
    segmenter_path: str | None, config: ModelConfig
) -> Callable[[list[np.ndarray]], list[CropBox]] | None:
    """The lung-field boxes serving will crop to, for ``config.lung_crop_margin`` (else None)."""
    if config.lung_crop_margin is None:
        return None
    segmenter = LungSegmenter.load(segmenter_path)
    margin = config.lung_crop_margin

    def framing(images: list[np.ndarray]) -> list[CropBox]:
        boxes: list[CropBox] = []
        for start in tqdm(range(0, len(images), 32), desc="lung fields", disable=None):
            chunk = images[start : start + 32]
            masks = segmenter.analyse_many(chunk)
            boxes.extend(
                lung_box(lungs.mask, margin) or CropBox.whole(pixels)
                for pixels, lungs in zip(chunk, masks, strict=True)
            )
        return boxes

    return framing


def make_train_loader(
    dataset: Dataset,
    records: Sequence[Labelled],
    args: argparse.Namespace,
    ranks: Ranks,
    **loader_kw: object,
) -> DataLoader:
    """This rank's training loader for ``--balance``, ``--samples-per-epoch`` and
    ``--batch-size``, the last two counted over all ranks: each rank takes 1/N of the global
    batch from its share of the one balanced stream (``RankShareSampler``)."""
    batch = ranks.split(args.batch_size)
    draws = args.samples_per_epoch or len(records)
    sampler = (
        RankShareSampler(records, args.balance, draws, ranks.rank, ranks.world_size, args.seed)
        if ranks.active
        else make_sampler(records, args.balance, draws, args.seed)
    )
    # drop_last: equal full batches on every rank, but no empty epoch on tiny sets
    return DataLoader(dataset, batch, sampler=sampler, drop_last=len(sampler) > batch, **loader_kw)


def train(args: argparse.Namespace) -> Path:
    """Run both stages, keep the best val macro-F1 weights, fit the temperature, save.

    Under ``torchrun`` every rank trains its share and rank 0 alone validates, logs and
    writes; every rank returns once the checkpoint is saved."""
    with process_group(args.device) as ranks:
        return _train(args, ranks)


def _train(args: argparse.Namespace, ranks: Ranks) -> Path:
    ranks.split(args.batch_size)  # an uneven global batch fails before the images are decoded
    if not ranks.main:
        log.setLevel(logging.WARNING)  # rank 0 logs for all
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = ranks.device
    amp = device.type == "cuda" and not args.no_amp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    splits = load_folders(args.data, seed=args.seed)
    if args.max_per_class:
        splits = {k: subsample(v, args.max_per_class, args.seed) for k, v in splits.items()}
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
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    framing = lung_framing(args.segmenter, config)
    threads = max(4, args.workers * 4)
    train_set = XrayDataset(
        splits["train"],
        build_transform(config, train=True),
        threads,
        framing,
        args.crop_jitter if framing else 0.0,
        config.num_classes,
    )
    val_set = XrayDataset(
        splits["val"], build_transform(config), threads, framing, num_classes=config.num_classes
    )
    loader_kw = dict(
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    train_loader = make_train_loader(train_set, train_set.records, args, ranks, **loader_kw)
    val_loader = DataLoader(val_set, args.batch_size * 2, **loader_kw)
    counts = class_counts(train_set.records, config.num_classes)
    weights = loss_class_weights(train_set.records, config.num_classes, args.balance)
    log.info(
        "train cells (class / source: images): %s",
        describe_cells(train_set.records, config.label_names),
    )
    loss_fn = SetCrossEntropy(
        torch.tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    )
    log.info(
        "train %s, val %d images, skipped %d unreadable; %d process(es)",
        counts.tolist(),
        len(val_set),
        len(train_set.skipped) + len(val_set.skipped),
        ranks.world_size,
    )

    state = {"stage": 0, "epoch": 0, "best_f1": -1.0, "stale": 0}
    last_path = out / "last.pt"
    resume = (
        torch.load(last_path, map_location=device, weights_only=True)
        if args.resume and last_path.exists()
        else None
    )
    if resume:
        model.load_state_dict(resume["model"])
        state = {k: resume[k] for k in state}
    started = time.monotonic()
    plan = [("head", args.head_epochs), ("full", args.epochs)]
    out_of_time = False
    for stage_index, (stage, epochs) in enumerate(plan):
        if stage_index < state["stage"] or epochs == 0:
            continue
        params = set_stage(model, stage, args.freeze_blocks)
        net = ranks.wrap(model)  # after set_stage: DDP reduces what requires grad now
        optimizer, scheduler = make_optimizer(params, stage, args, epochs * len(train_loader))
        first_epoch = 0
        if resume and stage_index == resume["stage"]:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            first_epoch = resume["epoch"]
        state["stale"] = 0 if not resume or stage_index != resume["stage"] else state["stale"]
        earlier_epochs = sum(n for _, n in plan[:stage_index])
        for epoch in tqdm(
            range(first_epoch, epochs), desc=f"stage {stage}", disable=None if ranks.main else True
        ):
            if isinstance(train_loader.sampler, RankShareSampler):
                train_loader.sampler.set_epoch(earlier_epochs + epoch)
            loss = train_one_epoch(
                net, train_loader, stage, optimizer, scheduler, loss_fn, device, amp, ranks.main
            )
            loss = ranks.average(loss)
            state.update(stage=stage_index, epoch=epoch + 1)
            if ranks.main:
                logits, allowed = collect_logits(model, val_loader, device, amp)
                labels, single = single_labels(allowed)
                predicted = logits.argmax(1)
                macro_f1 = float(f1_score(labels[single], predicted[single], average="macro"))
                improved = macro_f1 > state["best_f1"]
                if improved:
                    state["best_f1"], state["stale"] = macro_f1, 0
                    save_checkpoint(model, config, out / "best")
                else:
                    state["stale"] += 1
                record = {
                    "stage": stage,
                    "epoch": epoch + 1,
                    "train_loss": round(loss, 5),
                    "val_macro_f1": round(macro_f1, 5),
                    "val_accuracy": round(float((predicted == labels)[single].mean()), 5),
                    "lr": scheduler.get_last_lr()[0],
                    "minutes": round((time.monotonic() - started) / 60, 2),
                }
                if not single.all():  # label sets: right when the top class is admitted
                    hit = allowed[np.arange(len(predicted)), predicted][~single]
                    record["val_set_accuracy"] = round(float(hit.mean()), 5)
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                log.info("%s", record)
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **state,
                    },
                    last_path,
                )
                out_of_time = bool(
                    args.max_minutes and (time.monotonic() - started) / 60 > args.max_minutes
                )
            # rank 0 decides for all, so every rank stops at the same epoch
            state, out_of_time = ranks.share((state, out_of_time))
            if state["stale"] >= args.patience or out_of_time:
                log.info(
                    "stopping %s: %s", stage, "time budget" if out_of_time else "no improvement"
                )
                break
        state.update(stage=stage_index + 1, epoch=0)
        if out_of_time:
            break
    if ranks.main:
        finalize(out / "best", val_loader, device, args, ranks.world_size)
    ranks.barrier()
    return out / "best"


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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    if args.pretrained and args.init_from:
        sys.exit("choose one of --pretrained and --init-from")
    try:
        train(args)
    except (RuntimeError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if isinstance(err, RuntimeError) and "Hugging Face hub" not in str(err):
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
