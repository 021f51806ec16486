"""Train the lung-field segmenter on lungmask and score it on the held-out test split.

    python -m training.segmenter --data /work/shared/data/lungmask --out runs/seg
    python -m training.segmenter --data /work/shared/data/lungmask --evaluate assets/segmenter

The data folder holds ``<split>/images/<id>.jpg`` and ``<split>/masks/<id>.png`` (255 = lung).
Loss: smp's DiceLoss + BCE; Adam with a one-cycle schedule; the epoch with the best val Dice
(at the working size, raw threshold) is saved to ``--out`` as ``config.json`` +
``model.safetensors``. At the end the best checkpoint is scored through the full serving path
(``LungSegmenter.analyse``: post-processing, masks at each image's own size) on val and test;
mean and 5th-percentile Dice go into its ``config.json`` and per-image scores into
``scores.csv``.

lungmask holds adult films only; the augmentations (scale/shift/rotate with small aspect
changes, crops and borders, brightness/contrast/gamma, CLAHE, downscaling, noise) are meant
to stretch it towards lung5's pediatric images, which are 224×224 squashed copies.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch import nn

from imaging.load import load_image
from model.segmenter import (
    LungSegmenter,
    SegmenterConfig,
    create_segmenter_network,
    dice,
    preprocess,
)

SPLITS = ("train", "val", "test")


def load_split(data: Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, gray uint8 image, bool mask) for every image of a lungmask split."""
    folder = data / split / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found; --data must hold {'/'.join(SPLITS)} folders")
    items = []
    for path in sorted(folder.glob("*.jpg")):
        mask_path = data / split / "masks" / f"{path.stem}.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"{mask_path} is missing or unreadable")
        image = load_image(path).pixels
        if mask.shape != image.shape:
            raise ValueError(f"{path.name}: image {image.shape} and mask {mask.shape} differ")
        items.append((path.stem, image, mask > 127))
    return items


def train_transform(size: tuple[int, int]) -> A.Compose:
    """Augmentations that cover adult ICU films and pediatric squashed copies."""
    height, width = size
    return A.Compose(
        [
            A.CropAndPad(
                percent=(-0.08, 0.12),
                keep_size=False,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.Affine(
                scale={"x": (0.8, 1.15), "y": (0.8, 1.15)},  # independent → small aspect changes
                translate_percent=(-0.08, 0.08),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.8,
            ),
            A.Resize(height, width, interpolation=cv2.INTER_AREA),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
            A.RandomGamma(gamma_limit=(70, 150), p=0.4),
            A.CLAHE(clip_limit=(1, 3), p=0.25),
            A.Downscale(scale_range=(0.35, 0.8), p=0.25),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.15),
        ]
    )


class LungDataset(torch.utils.data.Dataset):
    def __init__(self, items, config: SegmenterConfig, augment: A.Compose | None) -> None:
        self.items, self.config, self.augment = items, config, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, image, mask = self.items[index]
        mask = mask.astype(np.uint8)
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        height, width = self.config.image_size
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        return torch.from_numpy(preprocess(image, self.config)), torch.from_numpy(mask[None] > 0)


@torch.inference_mode()
def working_size_dice(network: nn.Module, loader, threshold: float) -> float:
    """Mean Dice at the working size without post-processing (fast, for model selection)."""
    network.eval()
    scores = []
    for x, y in loader:
        pred = torch.sigmoid(network(x)) > threshold
        scores += [dice(p.numpy(), t.numpy()) for p, t in zip(pred, y, strict=True)]
    return float(np.mean(scores))


def score(segmenter: LungSegmenter, items) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Full-path Dice (post-processed, each image's own size): summary and per-image scores."""
    per_image = [(name, dice(segmenter.segment(image), mask)) for name, image, mask in items]
    values = np.array([s for _, s in per_image])
    summary = {
        "n": len(values),
        "mean_dice": round(float(values.mean()), 4),
        "p5_dice": round(float(np.percentile(values, 5)), 4),
        "min_dice": round(float(values.min()), 4),
    }
    return summary, per_image


def evaluate(folder: Path, data: Path) -> dict[str, dict[str, float]]:
    """Score a checkpoint on val and test, write the figures into its config and scores.csv."""
    segmenter = LungSegmenter.load(folder)
    results, rows = {}, []
    for split in ("val", "test"):
        summary, per_image = score(segmenter, load_split(data, split))
        results[split] = summary
        rows += [(split, name, f"{s:.4f}") for name, s in per_image]
        print(f"{split}: {summary}", flush=True)
    with (folder / "scores.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("split", "image", "dice"), *rows])
    segmenter.config.metrics = {**segmenter.config.metrics, **results}
    segmenter.save(folder)
    return results


def one_cycle(done: float, peak: float, warmup: float = 0.05) -> float:
    """Learning rate at fraction ``done`` of training: linear warm-up, then cosine to ~0."""
    if done < warmup:
        return peak * (0.1 + 0.9 * done / warmup)
    progress = min(1.0, (done - warmup) / (1.0 - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * progress)))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    config = SegmenterConfig(input_size=(1, args.size, args.size))
    cv2.setNumThreads(1)
    network = create_segmenter_network(config)
    train_items, val_items = load_split(args.data, "train"), load_split(args.data, "val")
    train_loader = torch.utils.data.DataLoader(
        LungDataset(train_items, config, train_transform(config.image_size)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
    )
    val_loader = torch.utils.data.DataLoader(LungDataset(val_items, config, None), batch_size=16)
    import segmentation_models_pytorch as smp

    dice_loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
    bce = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    total_steps, budget = args.epochs * len(train_loader), args.time_limit * 60
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.csv").open("w", newline="")
    writer = csv.writer(log)
    writer.writerow(["epoch", "loss", "val_dice", "lr", "seconds"])
    best, start, step = -1.0, time.monotonic(), 0
    for epoch in range(1, args.epochs + 1):
        network.train()
        losses = []
        for x, y in train_loader:
            # the schedule runs on whichever ends first, the steps or the wall-time budget
            done = max(step / total_steps, (time.monotonic() - start) / budget)
            lr = one_cycle(done, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = network(x)
            target = y.float()
            loss = dice_loss(logits, target) + bce(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
        val = working_size_dice(network, val_loader, config.threshold)
        elapsed = time.monotonic() - start
        writer.writerow(
            [epoch, f"{np.mean(losses):.4f}", f"{val:.4f}", f"{lr:.2e}", f"{elapsed:.0f}"]
        )
        log.flush()
        print(
            f"epoch {epoch}/{args.epochs} loss {np.mean(losses):.4f} val dice {val:.4f} "
            f"({elapsed:.0f}s)",
            flush=True,
        )
        if val > best:
            best = val
            config.version = f"lungmask-unet-mnv3s-{date.today():%Y%m%d}"
            config.trained = True
            config.trained_on = (
                f"lungmask train split ({len(train_items)} adult films, v7labs lung polygons on "
                f"ieee8023 images), epoch {epoch} selected on val Dice ({len(val_items)} "
                f"films), {args.size}px, random init, no pretrained weights"
            )
            config.metrics = {"best_epoch": epoch, "val_dice_working_size": round(val, 4)}
            LungSegmenter(network, config).save(args.out)
        if elapsed > budget:
            print(f"stopping after epoch {epoch}: time limit {args.time_limit} min", flush=True)
            break
    log.close()
    wall = time.monotonic() - start
    print(f"training wall time {wall / 60:.1f} min; best val dice {best:.4f}", flush=True)
    best_checkpoint = LungSegmenter.load(args.out)
    best_checkpoint.config.metrics.update(epochs_run=epoch, train_wall_minutes=round(wall / 60, 1))
    best_checkpoint.save(args.out)
    results = evaluate(args.out, args.data)
    summary = {
        "wall_minutes": round(wall / 60, 1),
        "args": {**vars(args), "data": str(args.data), "out": str(args.out)},
        **results,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(asdict(LungSegmenter.load(args.out).config), indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="lungmask folder")
    parser.add_argument("--out", type=Path, default=Path("runs/seg"), help="checkpoint folder")
    parser.add_argument("--evaluate", type=Path, help="only score this checkpoint folder")
    parser.add_argument("--epochs", type=int, default=200, help="upper bound; see --time-limit")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", type=int, default=224, help="working size (square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="1 trains faster than 2 on a shared 2-core CPU"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=21.0,
        help="wall-time budget in minutes; the LR schedule fits inside it",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate is not None:
        evaluate(args.evaluate, args.data)
    else:
        train(args)


if __name__ == "__main__":
    main()
