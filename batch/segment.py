"""Batch lung segmentation: many chest X-rays → one lung-mask PNG each + a CSV summary.

    python -m batch.segment INPUTS... --out DIR [--segmenter PATH] [--batch-size 8]

INPUTS are expanded exactly as ``batch.predict`` does (``batch.inputs``: files, folders
searched recursively for every suffix ``load_image`` reads, quoted glob patterns) and read
with the same decoder (``imaging.load``). Writes ``DIR/<stem>.png`` (0/255, the input's own
size; ``-2``, ``-3`` … when stems repeat) and ``DIR/segmentation.csv`` (one row per input, in
input order: whether lungs were found, the lung fraction, the mask path; unreadable files get
``status=error`` and the reason, and the run goes on). A film where no lung is found gets an
all-zero mask and ``lung_found=0``. Exit status: 0 when every input was read, 1 when some
failed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from batch.inputs import expand_inputs, output_name
from imaging.load import decoded_batches
from model.lungs import LungMask
from model.segmenter import LungSegmenter

CSV_NAME = "segmentation.csv"


@dataclass
class SegmentRow:
    """One input's outcome: its mask and where it was written, or the reason it failed."""

    path: Path
    result: LungMask | None = None
    mask_path: Path | None = None
    error: str = ""


def segment_files(
    segmenter: LungSegmenter,
    paths: Sequence[Path],
    out: Path,
    batch_size: int = 8,
    progress: bool = True,
) -> list[SegmentRow]:
    """Segment every file in batches and write ``out/<stem>.png``; one row per path, in order."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[Path, SegmentRow] = {}
    failed: list[tuple[Path, str]] = []
    taken: set[str] = {CSV_NAME}
    with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
        for batch in decoded_batches(paths, batch_size, failed):
            results = segmenter.analyse_many([image.pixels for _, image in batch])
            for (path, _), result in zip(batch, results, strict=True):
                target = out / output_name(path, taken)
                Image.fromarray(result.mask.astype(np.uint8) * 255).save(target)
                rows[path] = SegmentRow(path, result, target)
            bar.update(len(rows) + len(failed) - bar.n)
        rows.update({path: SegmentRow(path, error=reason) for path, reason in failed})
        bar.update(len(rows) - bar.n)
    return [rows[path] for path in paths]


def write_csv(rows: Sequence[SegmentRow], target: Path) -> None:
    """One line per input: path, status, lung_found, lung_fraction, components, mask, error."""
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["path", "status", "lung_found", "lung_fraction", "components", "mask", "error"]
        )
        for row in rows:
            if row.result is None:
                writer.writerow([row.path, "error", "", "", "", "", row.error])
                continue
            found = row.result
            writer.writerow(
                [
                    row.path,
                    "ok",
                    int(found.found),
                    f"{found.lung_fraction:.4f}",
                    found.components,
                    row.mask_path,
                    "",
                ]
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--segmenter", help="segmenter folder (default: assets/segmenter)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; got {args.batch_size}")
    try:
        paths = expand_inputs(args.inputs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(f"no image files found in {args.inputs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    segmenter = LungSegmenter.load(args.segmenter)
    rows = segment_files(segmenter, paths, args.out, args.batch_size, not args.no_progress)
    write_csv(rows, args.out / CSV_NAME)
    failed = [row for row in rows if row.result is None]
    no_lung = [row for row in rows if row.result is not None and not row.result.found]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} images segmented with "
        f"{segmenter.description} ({len(no_lung)} without lungs found); masks and "
        f"{CSV_NAME} in {args.out}"
    )
    for row in failed:
        print(f"  failed: {row.path}: {row.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
