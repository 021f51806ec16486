"""Where a guided training step gets its last-block features: from augmented films through
the whole network, or from a frozen prefix computed once (fine-tuning the end on a CPU).

``CachedFilms`` holds a crop cache (``training.crop_cache``) on the device. Both sources give
``features(index, train)`` → (features after the last norm, lung and lesion masks
moved alike), so ``training.train_guided`` runs one loop for both.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.config import ModelConfig
from training.tensor_augment import augment, normalise, random_affine, text_stamps, warp


@dataclass(frozen=True)
class _Cell:
    label: int
    source: str


class CachedFilms:
    """The cache's arrays on ``device``: films (n, 1, h, w) 0–255, masks (n, 2, s, s) lungs and
    lesions in [0, 1], label sets, splits and draw weights."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        arrays = dict(np.load(path))
        encoded, offsets = arrays["encoded"], arrays["offsets"]
        with ThreadPoolExecutor(16) as pool:
            films = list(
                pool.map(
                    lambda i: cv2.imdecode(
                        encoded[offsets[i] : offsets[i + 1]], cv2.IMREAD_GRAYSCALE
                    ),
                    range(len(offsets) - 1),
                )
            )
        self.films = torch.from_numpy(np.stack(films))[:, None].to(device)
        masks = np.stack([arrays["lungs"], arrays["lesions"]], axis=1)
        self.masks = torch.from_numpy(masks).to(device)
        self.allowed = torch.from_numpy(arrays["allowed"]).to(device)
        self.has_lesion = torch.from_numpy(arrays["has_lesion"]).to(device)
        self.split = arrays["split"]
        self.source = arrays["source"]
        self.draw_weight = torch.from_numpy(arrays["draw_weight"]).to(device)
        self.preprocessing = json.loads(str(arrays["preprocessing"]))
        self.index = np.arange(len(self.split))  # each kept film's row in the cache file

    def keep_at_most(self, per_class: int, seed: int = 0) -> None:
        """Keep every film with lesions and at most ``per_class`` others of each class in
        train (half that in val), then re-balance the train draws over what is kept (class ×
        source, as ``training.sources``): a short CPU run on a representative part."""
        from training.sources import balance_weights

        rng = np.random.default_rng(seed)
        label = self.allowed.float().argmax(1).cpu().numpy()
        lesion = self.has_lesion.cpu().numpy()
        kept = [np.flatnonzero(lesion)]
        for split, limit in (("train", per_class), ("val", per_class // 2)):
            for k in np.unique(label):
                pool = np.flatnonzero((self.split == split) & (label == k) & ~lesion)
                kept.append(rng.choice(pool, min(limit, len(pool)), replace=False))
        index = np.sort(np.concatenate(kept))
        self.index = self.index[index]
        on_device = torch.from_numpy(index).to(self.films.device)
        self.films, self.masks = self.films[on_device], self.masks[on_device]
        self.allowed, self.has_lesion = self.allowed[on_device], self.has_lesion[on_device]
        self.split, self.source = self.split[index], self.source[index]
        train = np.flatnonzero(self.split == "train")
        cells = [_Cell(int(label[index[i]]), str(self.source[i])) for i in train]
        weights = np.zeros(len(index))
        weights[train] = balance_weights(cells, "class-source")
        self.draw_weight = torch.from_numpy(weights).to(self.films.device)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Films as floats 0–255 and masks as floats 0–1 for ``index``."""
        return self.films[index].float(), self.masks[index].float() / 255.0


class WholeNetwork:
    """Every layer trained; films augmented on the device (``training.tensor_augment``)."""

    def __init__(self, model: nn.Module, films: CachedFilms, config: ModelConfig) -> None:
        self.model, self.films, self.config = model, films, config
        self.stamps = text_stamps()
        self.memory_format = (
            torch.channels_last if films.films.device.type == "cuda" else torch.contiguous_format
        )
        model.to(memory_format=self.memory_format)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def train(self, mode: bool) -> None:
        self.model.train(mode)

    def features(self, index: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = self.films.batch(index)
        if train:
            images, masks = augment(images, masks, self.stamps)
        batch = normalise(images, self.config.mean, self.config.std)
        return self.model.forward_features(
            batch.contiguous(memory_format=self.memory_format)
        ), masks


class FrozenPrefix:
    """Dense layers ``first`` … 32 of the last block, its norm and the head are trained; the
    layers before them are frozen (eval mode), run once on every un-augmented film, and their
    output is kept (float16; in ``saved`` too, by cache row: a later run computes only the
    films that file lacks).
    A train step moves that output and the masks by one random affine (shift, scale,
    rotation), then runs the trained layers."""

    def __init__(
        self,
        model: nn.Module,
        films: CachedFilms,
        config: ModelConfig,
        first: int,
        saved: Path | None = None,
    ) -> None:
        block = model.features.denseblock4
        self.layers = list(block.children())
        if not 1 <= first <= len(self.layers):
            raise ValueError(f"--train-from must be 1–{len(self.layers)}; got {first}")
        self.model, self.films, self.config, self.first = model, films, config, first
        self.trained = nn.ModuleList(
            [*self.layers[first - 1 :], model.features.norm5, model.get_classifier()]
        )
        model.requires_grad_(False)
        self.trained.requires_grad_(True)
        known = (
            torch.load(saved, map_location=films.films.device, weights_only=True)
            if saved is not None and saved.is_file()
            else {"films": torch.zeros(0, dtype=torch.long), "prefix": None}
        )
        row_of = {int(film): row for row, film in enumerate(known["films"])}
        missing = [i for i, film in enumerate(films.index) if int(film) not in row_of]
        computed = dict(zip(missing, self._run_prefix(missing), strict=True))
        parts = [
            known["prefix"][row_of[int(film)]][None] if int(film) in row_of else computed[i][None]
            for i, film in enumerate(films.index)
        ]
        self.cached = torch.cat(parts)
        if saved is not None and missing:
            torch.save({"films": torch.from_numpy(films.index), "prefix": self.cached}, saved)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.trained.parameters())

    def train(self, mode: bool) -> None:
        self.model.eval()
        self.trained.train(mode)

    @torch.inference_mode()
    def _run_prefix(self, rows: list[int]) -> torch.Tensor:
        """The frozen layers' output for the kept films at ``rows`` (float16)."""
        self.model.eval()
        outputs = [torch.zeros(0)]
        for start in tqdm(range(0, len(rows), 32), desc="frozen prefix", disable=None):
            index = torch.tensor(rows[start : start + 32], device=self.films.films.device)
            images, _ = self.films.batch(index)
            x = normalise(images, self.config.mean, self.config.std)
            for name, module in self.model.features.named_children():
                if name == "denseblock4":
                    break
                x = module(x)
            grown = [x]
            for layer in self.layers[: self.first - 1]:
                grown.append(layer(grown))
            outputs.append(torch.cat(grown, 1).half())
        return torch.cat(outputs[1:]) if len(outputs) > 1 else torch.zeros(0)

    def features(self, index: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.cached[index].float()
        masks = self.films.masks[index].float() / 255.0
        if train:
            theta = random_affine(len(index), prefix.device)
            prefix, masks = warp(prefix, theta), warp(masks, theta)
        grown = [prefix]
        for layer in self.layers[self.first - 1 :]:
            grown.append(layer(grown))
        return self.model.features.norm5(torch.cat(grown, 1)), masks
