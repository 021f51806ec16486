"""Uploads for the benchmarks, a new film for every request.

A repeated file would be answered from LungCAM's per-session case cache, which a peer app does
not have, and the figure would then be about the cache; ``Films`` makes every upload unlike
every other (``bench.serve``, ``bench.loadtest``, ``bench.segmenter``).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.config import CLASS_FOLDERS
from training.data import LUNG5


class Films:
    """Uploads for a benchmark, a new one per request: lung5 test films in turn (one of each
    class, round after round), padded to a square and scaled to ``side``² (None: as they are),
    each with a random 4×4 patch. No two have the same bytes (checked by hash), so no request
    is answered from a cache, and no two overlays are the same file (Gradio names outputs by
    their content: concurrent requests with byte-identical overlays rewrite one file while
    another client downloads it, a truncated download). Safe to call from several threads.
    """

    def __init__(self, folder: Path, side: int | None = 2048, seed: int = 0) -> None:
        per_class = [sorted((LUNG5 / "test" / name).iterdir()) for name in CLASS_FOLDERS]
        self.sources = [p for turn in itertools.zip_longest(*per_class) for p in turn if p]
        if not self.sources:
            raise FileNotFoundError(f"no lung5 test films under {LUNG5 / 'test'}")
        self.folder, self.side = folder, side
        self.made = 0  # uploads handed out
        self._rng = np.random.default_rng(seed)
        self._digests: set[str] = set()
        self._lock = threading.Lock()

    def next(self) -> Path:
        """A new upload, unlike every one made before."""
        with self._lock:
            index, self.made = self.made, self.made + 1
            patch = self._rng.integers(0, 256, (4, 4), dtype=np.uint8)
            where = self._rng.random(2)
        source = self.sources[index % len(self.sources)]
        image = Image.open(source).convert("L")
        if self.side:
            size = (self.side, self.side)
            image = ImageOps.pad(image, size, Image.Resampling.BICUBIC, color=0)
        pixels = np.array(image)
        y, x = (where * (np.array(pixels.shape) - 4)).astype(int)
        pixels[y : y + 4, x : x + 4] = patch
        path = self.folder / f"film-{index}-{source.stem}.png"
        Image.fromarray(pixels).save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            if digest in self._digests:
                raise RuntimeError(f"{path.name} repeats an earlier upload's bytes")
            self._digests.add(digest)
        return path

    def take(self, count: int) -> list[Path]:
        """``count`` new uploads, made now (so that making them is never timed)."""
        return [self.next() for _ in range(count)]


def make_uploads(folder: Path, count: int, side: int | None = 2048) -> list[Path]:
    """``count`` distinct uploads (``Films``)."""
    return Films(folder, side).take(count)
