"""The parts of the two-stage recipe: what trains in each stage, its optimizer and schedule, the
label-set loss, one epoch, and the logits validation scores.

Stage ``head`` trains the classifier alone on a frozen backbone (Adam); stage ``full``
fine-tunes all but the frozen blocks (AdamW with weight decay); both decay the learning rate
on a cosine. ``training.train_steps`` runs them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.localization_loss import set_cross_entropy


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
