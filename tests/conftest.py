"""Shared fixtures: real images from ../shared/data/lung5 and small checkpoints made here.

Nothing is downloaded. ``LUNGCAM_DATA`` overrides where the lung5 folder is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file

from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.checkpoint import save_checkpoint
from model.config import CLASS_FOLDERS, ModelConfig
from model.network import create_network
from serving.runtime import free_port
from training.data import LUNG5

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "assets" / "model"


def lung5_images(split: str = "test", per_class: int = 1) -> list[Path]:
    """The first ``per_class`` images of each class folder of a lung5 split."""
    if not LUNG5.is_dir():
        pytest.fail(f"lung5 data not found at {LUNG5}; set LUNGCAM_DATA")
    return [
        p
        for folder in CLASS_FOLDERS
        for p in sorted((LUNG5 / split / folder).iterdir())[:per_class]
    ]


@pytest.fixture(scope="session")
def real_image() -> Path:
    return lung5_images("test")[3]  # a 512×512 TBX11K radiograph


# Folder spellings from other public copies of these datasets.
VARIANT_FOLDERS = ["BACTERIAL PNEUMONIA", "covid-19", "NORMAL", "Tuberculosis", "viral_pneumonia"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val folders with 3 + 2 real images per class, odd folder names, one broken file."""
    root = tmp_path_factory.mktemp("data")
    for split, count in (("train", 3), ("val", 2)):
        sources = lung5_images(split, per_class=count)
        for k, folder in enumerate(VARIANT_FOLDERS):
            target = root / split / folder
            target.mkdir(parents=True)
            for path in sources[k * count : (k + 1) * count]:
                shutil.copy(path, target / path.name)
    (root / "train" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def make_checkpoint(folder: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A random-weight checkpoint in the app's format (small input, so tests stay fast)."""
    torch.manual_seed(seed)
    config = ModelConfig(input_size=(3, image_size, image_size), version=f"random-{seed}")
    return save_checkpoint(create_network(config), config, folder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def start_app(
    model: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """Start ``python app.py`` on loopback and wait until it answers; returns (process, url)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "app.py",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited early:\n{process.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app did not start within {timeout}s")


@pytest.fixture(scope="session")
def app_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("app-data")  # reviews and Gradio's cache stay out of the repo
    process, url = start_app(tiny_checkpoint, env={"LUNGCAM_DATA_DIR": str(data)})
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def predict_api(client: Client, path: Path) -> tuple:
    """``/predict`` as the README shows it: (label, overlay path, shown class, notes)."""
    return client.predict(
        handle_file(str(path)), DEFAULT_OPACITY, DEFAULT_COLORMAP, api_name="/predict"
    )
