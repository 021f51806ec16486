"""Batch prediction: many chest X-rays → a CSV of calibrated probabilities + Grad-CAM overlays.

    python -m model.predict INPUTS... --out DIR [--model PATH] [--batch-size 8]

INPUTS are files (any format ``load_image`` reads: PNG, JPEG, DICOM …), folders (searched
recursively for every suffix in ``imaging.image.SUPPORTED_SUFFIXES``) and glob patterns
(quoted, e.g. ``'scans/*.dcm'``).
Writes ``DIR/predictions.csv`` (one row per input, in input order; unreadable files get
``status=error`` and the reason; ``warning`` is non-empty when the image may not be a frontal
chest X-ray — the guard's verdict or a lateral DICOM view — and then ``top_label`` is no
diagnosis; ``prediction_set`` is the conformal set, classes joined by ``|``, empty for a model
without one; ``lungs_found`` yes/no and ``lung_share_<class>``, the share of each class's
heatmap on the lung fields, empty when none were found — ``model.lung_share``) and
``DIR/overlays/<name>.png`` (the top class's heatmap at the image's own resolution).

Exit status: 0 when every input was predicted (warnings included), 1 when some input could
not be read (the others are still written), 2 for bad arguments (no inputs found, bad flags).
"""

from __future__ import annotations

import argparse
import csv
import glob
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from imaging.image import SUPPORTED_SUFFIXES
from imaging.load import decoded_batches
from imaging.overlay import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY, overlay
from model import lung_share
from model.ood import headline, input_warnings
from model.predictor import Prediction, Predictor

CSV_NAME = "predictions.csv"
OVERLAY_DIR = "overlays"


@dataclass
class Row:
    """One input's outcome: a prediction and its overlay, or the reason it failed."""

    path: Path
    prediction: Prediction | None = None
    overlay: Path | None = None
    error: str = ""


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, folders (recursive, image suffixes only) and globs → unique files, in order.

    Raises ``FileNotFoundError`` naming an input that matches nothing.
    """
    found: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
        elif path.exists():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            if not matches:
                raise FileNotFoundError(f"the pattern {spec!r} matches no files")
            found += [p for p in matches if p.is_file()]
        else:
            raise FileNotFoundError(f"{spec!r} is not a file, folder or glob pattern that exists")
    return list(dict.fromkeys(found))


def overlay_name(path: Path, taken: set[str]) -> str:
    """``<stem>.png``, with ``-2``, ``-3`` … when two inputs share a stem."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.png"
    taken.add(name)
    return name


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out: Path,
    batch_size: int = 8,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
    progress: bool = True,
) -> list[Row]:
    """Predict every file in batches and write overlays under ``out``; one ``Row`` per path."""
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    rows: dict[Path, Row] = {}
    failed: list[tuple[Path, str]] = []
    taken: set[str] = set()
    with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
        for batch in decoded_batches(paths, batch_size, failed):
            predictions = predictor.predict_many([image for _, image in batch])
            for (path, image), prediction in zip(batch, predictions, strict=True):
                target = out / OVERLAY_DIR / overlay_name(path, taken)
                heat = prediction.heatmap(prediction.top_index)
                Image.fromarray(overlay(image.pixels, heat, opacity, colormap)).save(target)
                rows[path] = Row(path, prediction, target)
            bar.update(len(rows) + len(failed) - bar.n)
        rows.update({path: Row(path, error=reason) for path, reason in failed})
        bar.update(len(rows) - bar.n)
    return [rows[path] for path in paths]


def write_csv(rows: Sequence[Row], labels: Sequence[str], target: Path) -> None:
    """One line per input: path, status, warning, top label, conformal set (``|``-joined),
    each class's calibrated probability, then whether lung fields were found and each class's
    heatmap share on them."""
    lungs = lung_share.csv_header(list(labels))
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["path", "status", "warning", "top_label", "prediction_set", *labels]
        writer.writerow([*header, "overlay", "error", *lungs])
        for row in rows:
            cells = lung_share.csv_cells(row.prediction, len(labels))
            if row.prediction is None:
                empty = [""] * len(labels)
                writer.writerow([row.path, "error", "", "", "", *empty, "", row.error, *cells])
                continue
            prediction = row.prediction
            probabilities = [f"{p:.6f}" for p in prediction.probabilities]
            warning = warning_cell(prediction)
            shown = "|".join(prediction.prediction_set or [])
            writer.writerow(
                [
                    row.path,
                    "ok",
                    warning,
                    prediction.top_label,
                    shown,
                    *probabilities,
                    row.overlay,
                    "",
                    *cells,
                ]
            )


def warning_cell(prediction: Prediction) -> str:
    """The CSV's ``warning``: "" when the image looks like a frontal chest X-ray, else the
    headline the screen shows instead of the class ("Not a chest X-ray?", "Not a frontal
    chest X-ray?") and the reasons, so nobody reads ``top_label`` as a diagnosis."""
    title = headline(prediction.image, prediction.ood)
    reasons = input_warnings(prediction.image, prediction.ood)
    if title is None and not reasons:
        return ""
    return " ".join([title or "Warning:", *reasons])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", help="checkpoint (default: $LUNGCAM_MODEL, else bundled)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--opacity", type=float, default=DEFAULT_OPACITY)
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default=DEFAULT_COLORMAP)
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
    predictor = Predictor.load(args.model, args.device)
    rows = predict_files(
        predictor,
        paths,
        args.out,
        args.batch_size,
        args.opacity,
        args.colormap,
        progress=not args.no_progress,
    )
    write_csv(rows, predictor.config.label_names, args.out / CSV_NAME)
    failed = [row for row in rows if row.prediction is None]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} images predicted with "
        f"{predictor.description}; results in {args.out / CSV_NAME}"
    )
    for row in failed:
        print(f"  failed: {row.path}: {row.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
