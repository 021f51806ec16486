"""The serving benchmarks send a different film with every request (``bench.films.Films``)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from bench.films import Films
from model.config import CLASS_FOLDERS


def test_every_upload_is_another_film_of_the_asked_size(tmp_path):
    films = Films(tmp_path, side=96)
    with ThreadPoolExecutor(3) as pool:  # clients take films concurrently
        uploads = list(pool.map(lambda _: films.next(), range(12)))
    assert films.made == 12
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in uploads}
    assert len(digests) == 12
    assert {Image.open(path).size for path in uploads} == {(96, 96)}
    sources = {path.name.split("-", 2)[2] for path in uploads}
    assert len(sources) == 12  # distinct films, not one film with distinct patches
    first_round = films.sources[: len(CLASS_FOLDERS)]
    assert len({path.parent.name for path in first_round}) == len(CLASS_FOLDERS)


def test_the_same_film_again_still_differs(tmp_path):
    films = Films(tmp_path, side=None)
    films.sources = films.sources[:1]  # every upload from one film
    a, b = films.take(2)
    pixels = [np.asarray(Image.open(path)) for path in (a, b)]
    assert pixels[0].shape == pixels[1].shape
    assert 0 < (pixels[0] != pixels[1]).sum() <= 32  # two 4×4 patches at most
