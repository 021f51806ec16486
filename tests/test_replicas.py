"""Several app processes on one PostgreSQL database: nothing lost, nothing duplicated.

Two ``python app.py`` replicas are started at the same moment against an empty database (so
both migrate at once), reviews are saved concurrently through both, the same ``review_id``
through both at the same instant, and the rows are counted in PostgreSQL directly.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.script import ScriptDirectory
from gradio_client import Client
from sqlalchemy import create_engine, text

from review.store import MIGRATIONS
from tests.conftest import REPO, launch_app, lung5_images, new_database, wait_for_app
from tests.test_review_e2e import send

pytestmark = pytest.mark.slow

REPLICAS = 2
CLIENTS_PER_REPLICA = 2
REVIEWS_PER_CLIENT = 4
SHARED = 3  # review ids sent through every replica at the same instant
OPENERS = 6  # processes that open one empty database at the same instant
COUNT_PER_ID = "SELECT review_id, count(*) FROM reviews GROUP BY review_id"
VERSIONS = "SELECT version_num FROM alembic_version"

# Imports first, then "ready"; the store is opened only once the parent says "go".
OPEN_WHEN_TOLD = """
import sys
from review.store import ReviewStore
print("ready", flush=True)
sys.stdin.readline()
ReviewStore.open(sys.argv[2], sys.argv[1]).close()
"""


def _select(url: str, sql: str) -> list[tuple]:
    """The rows of ``sql``, read from PostgreSQL directly (not through an app)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def _head() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_stores_opened_at_the_same_instant_migrate_once(postgres_server, tmp_path):
    url = new_database(postgres_server)
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_WHEN_TOLD, url, str(tmp_path / f"data-{n}")],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in range(OPENERS)
    ]
    for opener in openers:
        assert opener.stdout.readline().strip() == "ready"
    for opener in openers:  # all imported: release them together
        opener.stdin.write("go\n")
        opener.stdin.flush()
    outputs = [opener.communicate(timeout=120)[0] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * OPENERS, "\n".join(outputs)
    assert _select(url, VERSIONS) == [(_head(),)]
    assert _select(url, COUNT_PER_ID) == []


def test_two_replicas_lose_and_duplicate_nothing(tiny_checkpoint, postgres_server, tmp_path):
    url = new_database(postgres_server)  # empty: both replicas migrate it as they start
    launched = [
        launch_app(
            tiny_checkpoint,
            env={
                "LUNGCAM_DATA_DIR": str(tmp_path / f"replica-{n}"),
                "DATABASE_URL": url,
                "LUNGCAM_AUTH": "",
            },
        )
        for n in range(REPLICAS)
    ]
    try:
        urls = [wait_for_app(process, port) for process, port in launched]
        images = lung5_images("test")
        barrier = threading.Barrier(REPLICAS)

        def save_all(server: str, review_ids: list[str], together: bool) -> list[str]:
            client = Client(server, verbose=False)
            statuses = []
            for n, review_id in enumerate(review_ids):
                if together:
                    barrier.wait(timeout=120)
                statuses.append(send(client, images[n % len(images)], review_id))
            return statuses

        own = {
            (r, c): [f"r{r}-c{c}-{i}" for i in range(REVIEWS_PER_CLIENT)]
            for r in range(REPLICAS)
            for c in range(CLIENTS_PER_REPLICA)
        }
        shared = [f"shared-{i}" for i in range(SHARED)]
        with ThreadPoolExecutor(len(own) + REPLICAS) as pool:
            own_saves = {
                key: pool.submit(save_all, urls[key[0]], ids, False) for key, ids in own.items()
            }
            shared_saves = [pool.submit(save_all, server, shared, True) for server in urls]
            own_statuses = {key: future.result() for key, future in own_saves.items()}
            shared_statuses = [future.result() for future in shared_saves]
    finally:
        for process, _ in launched:
            process.kill()
            process.wait(timeout=30)

    for key, statuses in own_statuses.items():
        assert [s.split("`")[:2] for s in statuses] == [["Saved: review ", i] for i in own[key]]
    for review_id, pair in zip(shared, zip(*shared_statuses, strict=True), strict=True):
        kinds = sorted(status.split(":")[0] for status in pair)
        assert kinds == ["Already saved", "Saved"], pair  # one saved it, the other refused
        assert all(f"`{review_id}`" in status for status in pair)

    expected = {review_id for ids in own.values() for review_id in ids} | set(shared)
    assert dict(_select(url, COUNT_PER_ID)) == dict.fromkeys(expected, 1)  # none lost or doubled
    assert _select(url, VERSIONS) == [(_head(),)]
