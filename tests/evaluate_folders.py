"""Folders ``training.evaluate`` is run on in the tests, and the run itself."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import LUNG5, lung5_images
from training import evaluate


def lung5_folders(root: Path) -> tuple[Path, Path]:
    """``full``: a split root, test/ with one lung5 image per class and lung5's manifest rows;
    ``extra``: test/ with two Normal images only and no manifest (one source, "extra")."""
    full, extra = root / "full", root / "extra"
    with open(LUNG5 / "manifest.csv", newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    kept = []
    for path in lung5_images("test"):
        name = f"test/{path.parent.name}/{path.name}"
        (full / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, full / name)
        kept.append(rows[name])
    with open(full / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    (extra / "test" / "NORMAL").mkdir(parents=True)
    for path in sorted((LUNG5 / "test" / "Normal").iterdir())[-2:]:
        shutil.copy(path, extra / "test" / "NORMAL" / path.name)
    return full, extra


def run_evaluate(
    tmp_path: Path, checkpoint: Path, *data: Path, extra: tuple[str, ...] | list[str] = ()
) -> tuple[dict[str, Any], Path]:
    """``python -m training.evaluate`` on the test split of ``data``: (metrics.json, out)."""
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--data", *map(str, data), "--split", "test"]
    evaluate.main([*argv, "--out", str(out), *extra])
    return json.loads((out / "metrics.json").read_text()), out
