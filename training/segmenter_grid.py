"""A contact sheet of lung-mask outlines on lung5 test films, for checking the segmenter by eye.

    python -m training.segmenter_grid --lung5 /work/shared/data/lung5 \
        --extra /work/shared/data/lung5-extra --out docs/segmenter-grid.jpg

Four films per lung5 test class (pediatric Kermany films in Bacterial/Viral/Normal, adult
COVID-19, TB) plus four adult normals from lung5-extra: 24 tiles, one column per group, each
captioned with its class and the lung fraction ("NO LUNG" when none was found).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np
import torch

from imaging.load import load_image
from model.segmenter import LungSegmenter

GROUPS = (
    ("Bacterial Pneumonia", "lung5", "Bacterial (ped)"),
    ("Viral Pneumonia", "lung5", "Viral (ped)"),
    ("Normal", "lung5", "Normal (ped)"),
    ("Corona Virus Disease", "lung5", "COVID-19 (adult)"),
    ("Tuberculosis", "lung5", "TB"),
    ("Normal", "extra", "Normal (adult)"),
)
TILE = 256


def pick(lung5: Path, extra: Path, per_group: int, seed: int) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    chosen = []
    for folder, root, caption in GROUPS:
        base = (lung5 if root == "lung5" else extra) / "test" / folder
        files = sorted(p for p in base.iterdir() if p.is_file())
        chosen += [(caption, p) for p in rng.sample(files, per_group)]
    return chosen


def tile(gray: np.ndarray, mask: np.ndarray, caption: str) -> np.ndarray:
    """The film letterboxed into a TILE square with the mask outline in green and a caption."""
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (0, 255, 0), max(1, round(max(gray.shape) / 200)))
    scale = TILE / max(gray.shape)
    small = cv2.resize(
        rgb,
        (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
        interpolation=cv2.INTER_AREA,
    )
    canvas = np.zeros((TILE, TILE, 3), dtype=np.uint8)
    y0, x0 = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
    canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    cv2.rectangle(canvas, (0, 0), (TILE, 18), (0, 0, 0), -1)
    cv2.putText(
        canvas, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA
    )
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lung5", type=Path, required=True)
    parser.add_argument("--extra", type=Path, required=True, help="lung5-extra (adult normals)")
    parser.add_argument("--out", type=Path, default=Path("docs/segmenter-grid.jpg"))
    parser.add_argument("--segmenter", type=Path, help="default: assets/segmenter")
    parser.add_argument("--per-group", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    segmenter = LungSegmenter.load(args.segmenter)
    tiles = []
    for caption, path in pick(args.lung5, args.extra, args.per_group, args.seed):
        gray = load_image(path).pixels
        result = segmenter.analyse(gray)
        note = f"{result.lung_fraction:.0%}" if result.found else "NO LUNG"
        tiles.append(tile(gray, result.mask, f"{caption} {note} {path.stem[:10]}"))
        print(
            f"{caption:18s} {path.name:40s} {gray.shape} found={result.found} "
            f"fraction={result.lung_fraction:.3f} components={result.components}"
        )
    per = args.per_group  # one column per group, one row per sample
    rows = [np.hstack([tiles[g * per + r] for g in range(len(GROUPS))]) for r in range(per)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
