"""Shared fixtures: real images from ../shared/data/lung5, small checkpoints made here, the
app as a subprocess, and a throwaway PostgreSQL server.

Nothing is downloaded. ``LUNGCAM_DATA`` overrides where the lung5 folder is. Everything the
app writes (reviews, Gradio's uploads and cache) goes under pytest's temporary folders, never
into the checkout's ``./data``; a session that adds anything there fails. The PostgreSQL
server comes from Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``): ``initdb`` +
``pg_ctl`` in a temporary folder on a free loopback port. ``initdb`` refuses to run as root, so
under root (as in CI) the server runs as the ``postgres`` system user. Without the binaries the
PostgreSQL tests skip, unless ``LUNGCAM_REQUIRE_ALL`` is set (CI), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from sqlalchemy import create_engine, text

from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.checkpoint import save_checkpoint
from model.config import CLASS_FOLDERS, ModelConfig
from model.network import create_network
from review.store import ReviewStore
from serving.runtime import free_port
from training.data import LUNG5

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "assets" / "model"


def files_under(folder: Path) -> set[Path]:
    return {folder, *folder.rglob("*")} if folder.exists() else set()


REPO_DATA_BEFORE = files_under(REPO / "data")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session when a test wrote into the checkout's own data folder."""
    added = sorted(files_under(REPO / "data") - REPO_DATA_BEFORE)
    if added:
        shown = ", ".join(str(p.relative_to(REPO)) for p in added[:5])
        pytest.exit(f"tests wrote {len(added)} files into ./data: {shown}", returncode=1)


@pytest.fixture(scope="session", autouse=True)
def storage_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data folder and Gradio's folders of this process and of every app it starts: a
    temporary folder (``serving.runtime.configure_storage`` would pick ``./data``)."""
    data = tmp_path_factory.mktemp("lungcam-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUNGCAM_DATA_DIR", str(data))
        patch.setenv("GRADIO_TEMP_DIR", str(data / "gradio"))
        patch.setenv("GRADIO_EXAMPLES_CACHE", str(data / "gradio" / "cached_examples"))
        yield data


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


def launch_app(
    model: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int]:
    """Start ``python app.py`` on loopback without waiting; returns (process, port)."""
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
        # Gradio's folders: inside the app's own data folder (its LUNGCAM_DATA_DIR)
        env={**os.environ, "GRADIO_TEMP_DIR": "", "GRADIO_EXAMPLES_CACHE": "", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def wait_for_app(process: subprocess.Popen, port: int, timeout: float = 120.0) -> str:
    """Wait until the app launched on ``port`` answers; returns its URL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited early:\n{process.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app did not start within {timeout}s")


def start_app(
    model: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """Start ``python app.py`` on loopback and wait until it answers; returns (process, url)."""
    process, port = launch_app(model, *extra, env=env)
    return process, wait_for_app(process, port, timeout)


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
    """``/predict`` as the README shows it: (label, (film, overlay) paths, shown class, notes,
    set line, lung line)."""
    return client.predict(
        handle_file(str(path)), DEFAULT_OPACITY, DEFAULT_COLORMAP, api_name="/predict"
    )


def _postgres_binaries() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parents[1].name)
    )
    return Path(found[-1]).parent if found else None


def _missing(reason: str) -> None:
    if os.environ.get("LUNGCAM_REQUIRE_ALL"):
        pytest.fail(f"{reason} (LUNGCAM_REQUIRE_ALL is set, so this is an error)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields the URL of its ``postgres`` DB."""
    binaries = _postgres_binaries()
    if binaries is None:
        _missing("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="lungcam-pg-"))  # not pytest's tmp: root-only 0700
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb: "cannot be run as root"
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)

    try:
        pg(str(binaries / "initdb"), "-D", str(data), "-U", "lungcam", "--auth=trust", "--no-sync")
        pg(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr}\n{log}")
    yield f"postgresql+psycopg://lungcam@127.0.0.1:{port}/postgres"
    pg(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)


def new_database(server: str) -> str:
    """A fresh, empty database on the ``postgres_server``; returns its URL."""
    name = f"reviews_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[ReviewStore]:
    """An empty, migrated review store: a fresh SQLite file, or a fresh database on the
    server (a test module's own ``store`` fixture takes its place there)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = None
    if request.param == "postgresql":
        url = new_database(request.getfixturevalue("postgres_server"))
    opened = ReviewStore.open(tmp_path / "data", url)
    yield opened
    opened.close()
