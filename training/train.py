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
as a partial label, loss −log(p_bacterial + p_viral) (``training.recipe.SetCrossEntropy``),
and is left out of the validation macro-F1 and the temperature fit, which need one true class.

On several processes (CPU or one GPU each) the same command runs under ``torchrun``:

    torchrun --nproc_per_node 2 -m training.train --data ../shared/data/lung5 --out runs/ddp

``--batch-size`` stays the global batch (each of N processes takes 1/N of it), gradients are
averaged over processes (``training.distributed``), each process draws its share of the same
balanced stream, and rank 0 alone validates, logs and writes checkpoints.

The run's steps are in ``training.train_steps``, the recipe's parts in ``training.recipe`` and
what it reads in ``training.train_data``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.distributed import process_group
from training.sources import BALANCE_MODES
from training.train_steps import build, finalize, resume, run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: data, output, and every number of the recipe."""
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


def train(args: argparse.Namespace) -> Path:
    """Run both stages, keep the best val macro-F1 weights, fit the temperature, save.

    Under ``torchrun`` every rank trains its share and rank 0 alone validates, logs and
    writes; every rank returns once the checkpoint is saved."""
    with process_group(args.device) as ranks:
        run = build(args, ranks)
        saved = resume(run)
        for index, (_, epochs) in enumerate(run.plan):
            if index < run.progress.stage or epochs == 0:
                continue
            if run_stage(run, index, saved):
                break  # out of the time budget
        if ranks.main:
            finalize(run.out / "best", run.data.val_loader, run.device, args, ranks.world_size)
        ranks.barrier()
        return run.out / "best"


def main(argv: list[str] | None = None) -> None:
    """``python -m training.train``: bad data, flags or hub access end in one line."""
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
