"""Train DenseNet201 on a crop cache with a localisation term: look at this film's lesion.

    python -m training.crop_cache --data ../shared/data/lung5 ../shared/data/lung5-extra \
        ../shared/data/adult-extra --lesions ../shared/data/lesions --splits train val \
        --out runs/cache/trainval.npz
    python -m training.train_guided --cache runs/cache/trainval.npz --out runs/guided

Every film of the cache lives on the device and is augmented there (``training.tensor_augment``),
so a GPU trains at its own speed. The loss per batch is

- cross-entropy with label sets (``set_cross_entropy``: a pneumonia of unknown cause counts
  for either pneumonia class);
- ``--box-weight`` × the spatial-softmax mass of the film's class map outside the
  radiologists' lesions, on films that have them (``outside_mass_loss``);
- ``--lung-weight`` × the same outside the lung fields, on every film of a disease class.

Films are drawn with the cache's class × source weights (``training.sources``). One AdamW
stage, warm-up then cosine decay, over ``--epochs`` or, with ``--max-minutes``, over that much
time. Each epoch reports val macro-F1 and, on the val films with lesions, how often the
class map's peak lies in a lesion beside a location prior (the train lesions' mean map); the
best val macro-F1 is kept in ``OUT/best`` (temperature 1: ``training.calibrate`` fits it with
the serving path). ``--resume`` continues from ``OUT/last.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import create_network, keep_last_block_resolution
from training.feature_sources import CachedFilms, FrozenPrefix, WholeNetwork
from training.localization_loss import (
    class_maps,
    energy_inside,
    outside_energy_loss,
    outside_mass_loss,
    pointing_hits,
    set_cross_entropy,
    target_class,
)

log = logging.getLogger("lungcam.train_guided")
NORMAL = "Normal"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--cache", required=True, help="a .npz written by training.crop_cache")
    add("--out", required=True, help="output folder: best/, last.pt, metrics.jsonl")
    add("--epochs", type=int, default=40, help="the schedule's length without --max-minutes")
    add("--max-minutes", type=float, default=0, help="train this long, schedule included (0: off)")
    add("--samples-per-epoch", type=int, default=0, help="draws per epoch (0: train size)")
    add("--batch-size", type=int, default=96)
    add("--lr", type=float, default=1e-3)
    add("--lr-final", type=float, default=1e-5)
    add("--warmup", type=float, default=0.03, help="share of the schedule spent warming up")
    add("--weight-decay", type=float, default=0.05)
    add("--box-weight", type=float, default=1.0, help="weight of the lesion term (0: off)")
    add("--lung-weight", type=float, default=0.25, help="weight of the lung-field term (0: off)")
    add("--energy-weight", type=float, default=0.0, help="lesion term on the map's energy")
    add("--output-stride", type=int, default=16, choices=(16, 32))
    add("--init-from", default=None, help="start from this checkpoint (same preprocessing)")
    add(
        "--train-from",
        type=int,
        default=0,
        help="train dense layers N… of the last block, its norm and the head on a frozen "
        "prefix computed once (0: train everything on augmented films)",
    )
    add("--max-per-class", type=int, default=0, help="lesion films + N others a class (0: all)")
    add("--prefix-cache", default=None, help="file for the frozen prefix's output (reused)")
    add("--seed", type=int, default=0)
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    add("--version", default="guided", help="version string stored in config.json")
    return parser.parse_args(argv)


def learning_rate(progress: float, args: argparse.Namespace) -> float:
    """Linear warm-up over ``--warmup`` of the schedule, then cosine decay to ``--lr-final``."""
    if progress < args.warmup:
        return args.lr * max(progress / args.warmup, 0.01)
    done = min(1.0, (progress - args.warmup) / (1 - args.warmup))
    return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * done))


def guided_loss(
    model: nn.Module,
    features: torch.Tensor,
    masks: torch.Tensor,
    allowed: torch.Tensor,
    has_lesion: torch.Tensor,
    disease: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The class loss plus the lesion and lung-field terms on the trained class's map (and
    each part, detached: summed on the device, read once an epoch)."""
    logits = model.forward_head(features).float()
    loss = set_cross_entropy(logits, allowed)
    parts = {"class": loss.detach()}
    target = target_class(logits, allowed)
    maps = class_maps(features, model.get_classifier())
    own = maps[torch.arange(len(target), device=maps.device), target]
    lungs, lesions = masks[:, 0], masks[:, 1]
    lung_films = disease & (lungs.flatten(1).sum(1) > 0)
    for name, weight, term_of, regions, chosen in (
        ("lesion", args.box_weight, outside_mass_loss, lesions, has_lesion),
        ("energy", args.energy_weight, outside_energy_loss, lesions, has_lesion),
        ("lung", args.lung_weight, outside_mass_loss, lungs, lung_films),
    ):
        if weight and chosen.any():
            term = term_of(own[chosen], regions[chosen]).mean()
            loss = loss + weight * term
            parts[name] = term.detach()
    return loss, parts


@torch.inference_mode()
def validate(
    model: nn.Module, source: WholeNetwork | FrozenPrefix, films: CachedFilms, prior: torch.Tensor
) -> dict:
    """Val macro-F1, accuracy per source and the class maps' pointing game on lesion films."""
    source.train(False)
    index = films.indices("val")
    logits, peaks_hit, energies = [], [], []
    for start in range(0, len(index), 256):
        chosen = torch.from_numpy(index[start : start + 256]).to(films.films.device)
        features, masks = source.features(chosen, train=False)
        logits.append(model.forward_head(features).float().cpu())
        lesion = films.has_lesion[chosen]
        if lesion.any():
            own = class_maps(features, model.get_classifier())[lesion].float()
            target = films.allowed[chosen][lesion].float().argmax(1)
            maps = own[torch.arange(len(target), device=own.device), target]
            peaks_hit.append(pointing_hits(maps, masks[lesion, 1]).cpu())
            energies.append(energy_inside(maps, masks[lesion, 1]).cpu())
    logits_np = torch.cat(logits).numpy()
    device_index = torch.from_numpy(index).to(films.films.device)
    allowed = films.allowed[device_index].cpu().numpy()
    correct = allowed[np.arange(len(index)), logits_np.argmax(1)]
    labels = allowed.argmax(1)
    single = allowed.sum(1) == 1
    lesion_films = device_index[films.has_lesion[device_index]]
    lesion_masks = films.masks[lesion_films, 1].float() / 255.0
    prior_hits = pointing_hits(prior.expand(len(lesion_masks), -1, -1), lesion_masks)
    sources = films.source[index]
    return {
        "val_macro_f1": float(
            f1_score(labels[single], logits_np[single].argmax(1), average="macro")
        ),
        "val_accuracy": float(correct.mean()),
        "val_accuracy_by_source": {
            str(s): float(correct[sources == s].mean()) for s in sorted(set(sources))
        },
        "val_lesion_pointing": float(torch.cat(peaks_hit).float().mean()) if peaks_hit else None,
        "val_lesion_energy": float(torch.cat(energies).mean()) if energies else None,
        "val_prior_pointing": float(prior_hits.float().mean()),
        "val_prior_energy": float(
            energy_inside(prior.expand_as(lesion_masks), lesion_masks).mean()
        ),
    }


def lesion_prior(films: CachedFilms) -> torch.Tensor:
    """The mean lesion mask of the train films with lesions: where lesions usually are."""
    index = torch.from_numpy(films.indices("train")).to(films.films.device)
    chosen = index[films.has_lesion[index]]
    return films.masks[chosen, 1].float().mean(0) / 255.0


def build_model(args: argparse.Namespace, preprocessing: dict) -> tuple[nn.Module, ModelConfig]:
    """A new network for the cache's preprocessing, or ``--init-from``'s (which must have been
    fed the same way), at ``--output-stride``, with the heatmap taken after the last norm."""
    if not args.init_from:
        config = ModelConfig(**preprocessing, output_stride=args.output_stride)
        return create_network(config), _guided(config, args)
    model, config = load_checkpoint(args.init_from)
    differs = {k: v for k, v in preprocessing.items() if _plain(getattr(config, k)) != _plain(v)}
    if differs:
        raise ValueError(f"{args.init_from} was fed otherwise than the cache: {differs}")
    if args.output_stride == 16 and config.output_stride == 32:
        keep_last_block_resolution(model)
    elif args.output_stride != config.output_stride:
        raise ValueError(f"cannot go from output stride {config.output_stride} to 32")
    config.output_stride = args.output_stride
    return model, _guided(config, args)


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple | list) else value


def _guided(config: ModelConfig, args: argparse.Namespace) -> ModelConfig:
    """The trained map is the class map after the last norm; so is the served heatmap."""
    config.target_layer = "features.norm5"
    config.version = args.version
    config.temperature, config.conformal, config.ood = 1.0, None, None
    return config


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = True
    films = CachedFilms(args.cache, device)
    if args.max_per_class:
        films.keep_at_most(args.max_per_class, args.seed)
    model, config = build_model(args, films.preprocessing)
    model.to(device)
    source: WholeNetwork | FrozenPrefix = (
        FrozenPrefix(
            model,
            films,
            config,
            args.train_from,
            Path(args.prefix_cache) if args.prefix_cache else None,
        )
        if args.train_from
        else WholeNetwork(model, films, config)
    )
    optimizer = torch.optim.AdamW(source.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "best_f1": -1.0, "elapsed": 0.0}
    if args.resume and (out / "last.pt").exists():
        saved = torch.load(out / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in state}
    train_index = torch.from_numpy(films.indices("train")).to(device)
    weights = films.draw_weight[train_index]
    normal = config.label_names.index(NORMAL)
    draws = args.samples_per_epoch or len(train_index)
    steps_per_epoch = max(1, draws // args.batch_size)
    prior = lesion_prior(films)
    started = time.monotonic() - state["elapsed"]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def progress(step: int) -> float:
        """How far through the schedule: by time with --max-minutes, else by step."""
        if args.max_minutes:
            return (time.monotonic() - started) / (args.max_minutes * 60)
        return (state["epoch"] + step / steps_per_epoch) / args.epochs

    while progress(0) < 1:
        source.train(True)
        totals: dict[str, torch.Tensor] = {}
        for step in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(min(progress(step), 1.0), args)
            pick = train_index[torch.multinomial(weights, args.batch_size, replacement=True)]
            allowed = films.allowed[pick]
            disease = ~allowed[:, normal]
            with amp:
                features, masks = source.features(pick, train=True)
                loss, parts = guided_loss(
                    model, features, masks, allowed, films.has_lesion[pick], disease, args
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value / steps_per_epoch
        state["epoch"] += 1
        state["elapsed"] = time.monotonic() - started
        with amp:
            record = {
                "epoch": state["epoch"],
                **{f"train_{k}": round(float(v), 4) for k, v in totals.items()},
            }
            record.update(validate(model, source, films, prior))
        record.update(lr=optimizer.param_groups[0]["lr"], minutes=round(state["elapsed"] / 60, 2))
        if record["val_macro_f1"] > state["best_f1"]:
            state["best_f1"] = record["val_macro_f1"]
            config.trained = True
            save_checkpoint(model, config, out / "best", half=True)
            record["saved"] = True
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("%s", record)
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state},
            out / "last.pt",
        )
    return out / "best"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
