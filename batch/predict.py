"""Batch prediction: many chest X-rays → a CSV of calibrated probabilities + Grad-CAM overlays.

    python -m batch.predict INPUTS... --out DIR [--model PATH] [--batch-size 8]
    python -m batch.predict INPUTS... --out DIR --engine ray [--address ADDR] [--num-gpus N]

INPUTS are files (any format ``load_image`` reads: PNG, JPEG, DICOM …), folders (searched
recursively for every suffix in ``imaging.image.SUPPORTED_SUFFIXES``) and glob patterns
(quoted, e.g. ``'scans/*.dcm'``).
Writes ``DIR/predictions.csv`` (one row per input, in input order; unreadable files get
``status=error`` and the reason; ``warning`` is non-empty when the image may not be a frontal
chest X-ray — the guard's verdict or a lateral DICOM view — and then ``top_label`` is no
diagnosis; ``prediction_set`` is the conformal set, classes joined by ``|``, empty for a model
without one; ``lungs_found`` yes/no and ``lung_share_<class>``, the share of each class's
heatmap on the lung fields, empty when none were found — ``model.lung_share``) and
``DIR/overlays/<name>.png`` (the top class's heatmap at the image's own resolution; none with
``--no-overlays``); with ``--heatmaps`` also ``DIR/heatmaps/<name>.npz``: every class's map at
the image's own size (float32 in [0, 1], one array per class name, 0 outside the crop the
network saw) and ``crop_box`` (x0, y0, x1, y1). ``--engine ray`` decodes and predicts on a Ray
cluster and writes the same files (``batch.predict_ray``, docs/SCALE.md); it needs
``pip install -r requirements-scale.txt``.

Exit status: 0 when every input was predicted (warnings included), 1 when some input could
not be read (the others are still written), 2 for bad arguments (no inputs found, bad flags)
or a missing optional package (``--engine ray`` without Ray).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from batch.inputs import expand_inputs, output_names
from batch.prediction_rows import (
    CSV_NAME,
    HEATMAP_DIR,
    OVERLAY_DIR,
    Row,
    csv_cells,
    draw_overlay,
    failures,
    heatmap_name,
    save_heatmaps,
    write_lines,
)
from imaging.load import decoded_batches
from imaging.overlay import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.predictor import Predictor

RAY_MISSING = "--engine ray needs Ray, not installed here: pip install -r requirements-scale.txt"


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out: Path,
    batch_size: int = 8,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
    progress: bool = True,
    overlays: bool = True,
    heatmaps: bool = False,
) -> list[Row]:
    """Predict every file in batches and write overlays (and with ``heatmaps`` every class's
    maps) under ``out``; one ``Row`` per path."""
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
    if heatmaps:
        (out / HEATMAP_DIR).mkdir(exist_ok=True)
    names = dict(zip(paths, output_names(paths), strict=True))
    targets = {path: out / OVERLAY_DIR / name for path, name in names.items()}
    rows: dict[Path, Row] = {}
    failed: list[tuple[Path, str]] = []
    with tqdm(total=len(paths), unit="img", disable=not progress) as bar:
        for batch in decoded_batches(paths, batch_size, failed):
            predictions = predictor.predict_many([image for _, image in batch])
            for (path, _), prediction in zip(batch, predictions, strict=True):
                target = targets[path] if overlays else None
                if target is not None:
                    draw_overlay(prediction, target, opacity, colormap)
                if heatmaps:
                    save_heatmaps(prediction, out / HEATMAP_DIR / heatmap_name(names[path]))
                rows[path] = Row(path, prediction, target)
            bar.update(len(rows) + len(failed) - bar.n)
        rows.update({path: Row(path, error=reason) for path, reason in failed})
        bar.update(len(rows) - bar.n)
    return [rows[path] for path in paths]


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", help="checkpoint (default: $LUNGCAM_MODEL, else bundled)")
    parser.add_argument("--device", help="local engine: cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--opacity", type=float, default=DEFAULT_OPACITY)
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default=DEFAULT_COLORMAP)
    parser.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs")
    parser.add_argument(
        "--heatmaps", action="store_true", help="also write every class's maps as .npz"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    scale = parser.add_argument_group("Ray engine (docs/SCALE.md)")
    scale.add_argument("--engine", choices=["local", "ray"], default="local")
    scale.add_argument("--address", help="Ray cluster to join, e.g. auto or ray://head:10001")
    scale.add_argument("--num-gpus", type=int, default=0, help="GPU actors, one GPU each")
    scale.add_argument("--actors", type=int, help="actors (default: --num-gpus, else 1)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.num_gpus < 0 or (args.actors is not None and args.actors < 1):
        parser.error(f"need --num-gpus ≥ 0 and --actors ≥ 1; got {args.num_gpus}, {args.actors}")
    if args.engine == "local" and (args.address or args.num_gpus or args.actors):
        parser.error("--address, --num-gpus and --actors are for --engine ray")
    try:
        paths = expand_inputs(args.inputs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(f"no image files found in {args.inputs}")
    if args.engine == "ray":
        ran = run_ray(args, paths)
        if ran is None:
            print(RAY_MISSING, file=sys.stderr)
            return 2
        predictor, lines = ran
    else:
        predictor = Predictor.load(args.model, args.device)
        rows = predict_files(
            predictor,
            paths,
            args.out,
            args.batch_size,
            args.opacity,
            args.colormap,
            progress=not args.no_progress,
            overlays=not args.no_overlays,
            heatmaps=args.heatmaps,
        )
        lines = [csv_cells(row, predictor.config.num_classes) for row in rows]
    return report(lines, predictor, args.out)


def run_ray(
    args: argparse.Namespace, paths: Sequence[Path]
) -> tuple[Predictor, list[list[str]]] | None:
    """``--engine ray``: the predictor (loaded here on CPU for its labels and description, and
    to fail before any worker starts) and every path's CSV cells; None when Ray is missing."""
    try:
        from batch import predict_ray
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in ("ray", "pyarrow"):
            raise
        return None
    predictor = Predictor.load(args.model, "cpu")
    names = output_names(paths)
    lines = predict_ray.predict_paths(
        predict_ray.Job(args.model, args.out, args.batch_size, args.opacity, args.colormap),
        paths,
        None if args.no_overlays else names,
        predict_ray.Pool(args.num_gpus, args.actors, args.address),
        progress=not args.no_progress,
        heatmap_names=[heatmap_name(name) for name in names] if args.heatmaps else None,
    )
    return predictor, lines


def report(lines: Sequence[Sequence[str]], predictor: Predictor, out: Path) -> int:
    """Write ``out/predictions.csv``, print the summary and each failure; the exit status."""
    labels = predictor.config.label_names
    write_lines(lines, labels, out / CSV_NAME)
    failed = failures(lines, labels)
    print(
        f"{len(lines) - len(failed)} of {len(lines)} images predicted with "
        f"{predictor.description}; results in {out / CSV_NAME}"
    )
    for path, reason in failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
