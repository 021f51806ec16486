"""The network's input of every film, computed once: lung crops, lung fields and lesion masks.

``python -m training.crop_cache --data ../shared/data/lung5 ../shared/data/lung5-extra
../shared/data/adult-extra --lesions ../shared/data/lesions --out runs/cache.npz`` runs the
serving path (``Predictor.frame`` + the eval transform) on every film, so a trainer that reads
the cache (``training.train_guided``) sees exactly what the app will show the network, without
the segmenter, albumentations or the original films. One ``.npz`` holds per film:

- the input before normalisation (lung crop, resized, CLAHE), WebP-encoded (``encoded``,
  ``offsets``: about 6 kB a film at quality 82, so the cache of lung5 + lung5-extra +
  adult-extra's train and val splits is about 37 MB);
- the lung fields and the radiologists' lesions in the same crop frame, as fractional masks
  (``lungs``, ``lesions``; ``has_lesion`` says which films have any);
- ``allowed``: the classes the label admits (one, or both pneumonia classes for a film whose
  pneumonia is of unknown cause, ``adult-extra``'s ``Pneumonia``), ``split``, ``source``, and
  ``draw_weight``, the class × source balance of ``training.sources`` within the train split;
- ``preprocessing``: the config fields (JSON) that made the pixels, for the trained model's
  config.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from explain.localization import box_mask
from imaging.image import ImageInputError
from imaging.load import load_image
from model.config import CLASS_NAMES, ModelConfig
from model.crop import CropBox
from model.predictor import Predictor
from training import lesions
from training.data import MANIFEST, allowed_classes
from training.sources import balance_weights

log = logging.getLogger("lungcam.crop_cache")
PREPROCESSING_FIELDS = (
    "label_names",
    "input_size",
    "mean",
    "std",
    "interpolation",
    "clahe",
    "lung_crop_margin",
)
IEEE8023 = "ieee8023/covid-chestxray-dataset (2020-06 snapshot)"  # lung5's name of the source
MASK_SIZE = 56  # side of the cached lung and lesion masks (4× the 14×14 heatmap grid)


@dataclass(frozen=True)
class Film:
    path: Path
    split: str
    allowed: tuple[int, ...]
    source: str

    @property
    def label(self) -> int:
        """The class index for balancing: the first admitted class (Bacterial for "Pneumonia")."""
        return self.allowed[0]


def read_films(folders: Sequence[str | Path], splits: Sequence[str] | None = None) -> list[Film]:
    """Every film listed in each folder's ``manifest.csv`` (file, split, label, source), in
    ``splits`` only when given."""
    films = []
    for folder in map(Path, folders):
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found: the cache reads each folder's manifest")
        with open(manifest, newline="") as fh:
            for row in csv.DictReader(fh):
                if splits and row["split"] not in splits:
                    continue
                films.append(
                    Film(
                        folder / row["file"],
                        row["split"],
                        allowed_classes(row["label"]),
                        row.get("source") or folder.name,
                    )
                )
    return films


def lesion_films(
    found: Sequence[lesions.Film], known: set[str], splits: Sequence[str] | None = None
) -> list[Film]:
    """The films of a lesions folder that the data folders lack (its ieee8023 films are
    re-saved copies of lung5's, under other names): trained on with their lesions too."""
    return [
        Film(
            film.path,
            film.split,
            allowed_classes(film.label),
            IEEE8023 if film.source.startswith("ieee8023") else film.source,
        )
        for film in found
        if film.path.name not in known and (not splits or film.split in splits)
    ]


def lesion_mask(shape: tuple[int, int], film: lesions.Film) -> np.ndarray:
    """The lesions of one film at ``shape`` (H, W) as 0/1 float32: its pixel mask in the
    folder's ``masks/`` when there is one, else its boxes as ``training.localize`` draws them."""
    pixels = film.path.parent.parent / "masks" / (film.path.stem + ".png")
    mask = cv2.imread(str(pixels), cv2.IMREAD_GRAYSCALE) if pixels.is_file() else None
    if mask is None:
        return box_mask(film.corners, shape).astype(np.float32)
    if mask.shape != shape:
        mask = cv2.resize(mask, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return (mask > 127).astype(np.float32)


def in_crop_frame(mask: np.ndarray, box: CropBox) -> np.ndarray:
    """A full-film mask → the share of each cell of the crop's MASK_SIZE² grid inside it."""
    return cv2.resize(
        np.ascontiguousarray(box.apply(mask), dtype=np.float32),
        (MASK_SIZE, MASK_SIZE),
        interpolation=cv2.INTER_AREA,
    )


def network_pixels(predictor: Predictor, pixels: np.ndarray, box: CropBox) -> np.ndarray:
    """The eval transform's output for one film, back in 8-bit gray before normalisation."""
    tensor = predictor.preprocess(box.apply(pixels))[0].numpy()
    mean, std = predictor.config.mean[0], predictor.config.std[0]
    return np.clip(np.rint((tensor * std + mean) * 255.0), 0, 255).astype(np.uint8)


def build_cache(
    predictor: Predictor,
    films: list[Film],
    found: Sequence[lesions.Film] = (),
    quality: int = 82,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The cache's arrays for ``films`` (see the module docstring), with the lesions of
    ``found`` (``training.lesions``) on the films they name, and the files skipped."""
    lesion_of = {film.path.name: film for film in found}
    encoded: list[bytes] = []
    lungs, marks, kept, skipped = [], [], [], []
    for start in tqdm(range(0, len(films), 16), desc="films", disable=None):
        chunk, images = [], []
        for film in films[start : start + 16]:
            try:
                images.append(load_image(film.path))
                chunk.append(film)
            except ImageInputError as err:
                skipped.append(f"{film.path}: {err}")
        found, boxes = predictor.frame(images)
        for film, image, lung, box in zip(chunk, images, found, boxes, strict=True):
            pixels = network_pixels(predictor, image.pixels, box)
            ok, encoded_film = cv2.imencode(".webp", pixels, [cv2.IMWRITE_WEBP_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"could not encode {film.path}")
            encoded.append(encoded_film.tobytes())
            lung_mask = lung.mask if lung is not None else np.zeros(image.pixels.shape, bool)
            lungs.append(in_crop_frame(lung_mask.astype(np.float32), box))
            lesion = lesion_of.get(film.path.name)
            marks.append(
                in_crop_frame(lesion_mask(image.pixels.shape, lesion), box)
                if lesion
                else np.zeros((MASK_SIZE, MASK_SIZE), np.float32)
            )
            kept.append(film)
    offsets = np.cumsum([0] + [len(b) for b in encoded]).astype(np.int64)
    train = [i for i, f in enumerate(kept) if f.split == "train"]
    weights = np.zeros(len(kept))
    weights[train] = balance_weights([kept[i] for i in train], "class-source")
    allowed = np.zeros((len(kept), len(CLASS_NAMES)), dtype=bool)
    for i, film in enumerate(kept):
        allowed[i, list(film.allowed)] = True
    lesion_maps = np.stack(marks)
    arrays = {
        "encoded": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "offsets": offsets,
        "lungs": np.round(np.stack(lungs) * 255).astype(np.uint8),
        "lesions": np.round(lesion_maps * 255).astype(np.uint8),
        "has_lesion": lesion_maps.reshape(len(kept), -1).max(axis=1) > 0,
        "allowed": allowed,
        "split": np.array([f.split for f in kept]),
        "source": np.array([f.source for f in kept]),
        "film": np.array([f.path.name for f in kept]),
        "draw_weight": weights,
        "preprocessing": np.array(json.dumps(preprocessing(predictor.config))),
    }
    return arrays, skipped


def preprocessing(config: ModelConfig) -> dict[str, object]:
    """The config fields that decide the cached pixels: a model trained on the cache gets them."""
    return {key: getattr(config, key) for key in PREPROCESSING_FIELDS}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="folders with a manifest.csv")
    parser.add_argument("--lesions", default=None, help="a lesions folder (boxes.csv, masks/)")
    parser.add_argument(
        "--model", default=None, help="checkpoint whose preprocessing to cache (default: bundled)"
    )
    parser.add_argument("--splits", nargs="+", default=None, help="only these splits")
    parser.add_argument("--quality", type=int, default=82, help="WebP quality of the crops")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        films = read_films(args.data, args.splits)
        found, bad_rows = lesions.read_folder(Path(args.lesions)) if args.lesions else ([], [])
        films += lesion_films(found, {film.path.name for film in films}, args.splits)
        predictor = Predictor.load(args.model, "cpu")
    except (FileNotFoundError, ValueError) as err:
        print(f"crop_cache: error: {err}", file=sys.stderr)
        return 2
    for line in bad_rows:
        log.warning("%s", line)
    arrays, skipped = build_cache(predictor, films, found, args.quality)
    for line in skipped:
        log.warning("skipped %s", line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    log.info(
        "%d films (%d with lesions), %.1f MB of crops → %s",
        len(arrays["offsets"]) - 1,
        int(arrays["has_lesion"].sum()),
        arrays["encoded"].nbytes / 1e6,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
