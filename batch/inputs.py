"""What every batch CLI accepts and how it names what it writes: INPUTS → files, file → name."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

from imaging.image import SUPPORTED_SUFFIXES


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


def output_name(path: Path, taken: set[str]) -> str:
    """``<stem>.png``, with ``-2``, ``-3`` … when two inputs share a stem; adds it to ``taken``."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.png"
    taken.add(name)
    return name


def output_names(paths: Sequence[Path]) -> list[str]:
    """Every input's output file name, given in input order (failed inputs keep theirs too),
    so that every engine names its files alike."""
    taken: set[str] = set()
    return [output_name(path, taken) for path in paths]
