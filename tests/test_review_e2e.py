"""Reviews through the real server with gradio_client: durability under SIGKILL, idempotent
retries, bad input, opt-in image storage, login names, the PDF and CSV exports."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from imaging.load import load_image
from review.store import ReviewStore, pixels_sha256
from tests.conftest import lung5_images, start_app

pytestmark = pytest.mark.slow

CLIENTS = 8
ACKS_BEFORE_KILL = 40


def _env(data: Path, auth: str = "") -> dict[str, str]:
    return {"LUNGCAM_DATA_DIR": str(data), "DATABASE_URL": "", "LUNGCAM_AUTH": auth}


def send(client: Client, image: Path, review_id: str, **changes) -> str:
    """One review through api_name="review"; returns the status line (the acknowledgement)."""
    fields = {
        "image": handle_file(str(image)),
        "shown_class": None,
        "agreement": "agree",
        "correct_class": None,
        "heatmap_usefulness": 4,
        "heatmap_wrong_place": False,
        "note": f"note for {review_id}",
        "reviewer": "dr-e2e",
        "store_image": False,
        "review_id": review_id,
        "marks": "",
        "no_finding": False,
        **changes,
    }
    return client.submit(**fields, api_name="/review").result(timeout=120)


def _stop(process) -> None:
    process.kill()  # reviews are committed before they are acknowledged; no shutdown needed
    process.wait(timeout=30)


def test_acknowledged_reviews_survive_sigkill_and_retries_do_not_duplicate(
    tiny_checkpoint, tmp_path
):
    data = tmp_path / "data"
    images = lung5_images("test")
    process, url = start_app(tiny_checkpoint, env=_env(data))
    acked: list[str] = []
    unacked: list[str] = []  # sent, but the server died before answering
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = Client(url, verbose=False)
        for i in range(1000):
            review_id = f"c{n}-{i}-{uuid.uuid4().hex[:8]}"
            try:
                status = send(client, images[(n + i) % len(images)], review_id)
            except Exception:
                with lock:
                    unacked.append(review_id)
                return
            assert status.startswith(f"Saved: review `{review_id}`"), status
            with lock:
                acked.append(review_id)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    while len(acked) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-stream: the clients are still sending
    process.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=180)
    assert len(acked) >= ACKS_BEFORE_KILL, f"only {len(acked)} reviews acknowledged"
    assert len(unacked) == CLIENTS and not any(t.is_alive() for t in threads)

    process, url = start_app(tiny_checkpoint, env=_env(data))
    try:
        store = ReviewStore.open(data)
        after_crash = {r.review_id: r for r in store.list()}
        assert set(acked) <= set(after_crash), "acknowledged reviews lost"
        assert set(after_crash) <= set(acked) | set(unacked)
        assert all(r.note == f"note for {key}" for key, r in after_crash.items())

        client = Client(url, verbose=False)
        for review_id in unacked + acked[:5]:  # what a client does after a failed request
            status = send(client, images[0], review_id)
            expected = "Already saved" if review_id in after_crash else "Saved:"
            assert status.startswith(expected), status
        final = [r.review_id for r in store.list()]
        assert len(final) == len(set(final)) == len(acked) + len(unacked)
        assert set(final) == set(acked) | set(unacked)
        store.close()
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def login_server(tiny_checkpoint, tmp_path_factory):
    data = tmp_path_factory.mktemp("review-e2e") / "data"
    process, url = start_app(tiny_checkpoint, env=_env(data, "alice:pw-1,bob:pw:2"))
    yield url, data
    _stop(process)


@pytest.fixture(scope="module")
def alice(login_server):
    return Client(login_server[0], auth=("alice", "pw-1"), verbose=False)


def test_login_is_required_and_the_login_name_is_the_reviewer(login_server, alice, real_image):
    url, data = login_server
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error type varies
        Client(url, auth=("alice", "wrong"), verbose=False)
    send(alice, real_image, "by-alice", reviewer="mallory")
    bob = Client(url, auth=("bob", "pw:2"), verbose=False)
    send(bob, real_image, "by-bob", reviewer="")
    store = ReviewStore.open(data)
    assert store.get("by-alice").reviewer == "alice"
    assert store.get("by-bob").reviewer == "bob"
    store.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"agreement": "disagree", "correct_class": None}, "disagree requires the correct class"),
        ({"agreement": None}, "agreement must be one of"),
        ({"heatmap_usefulness": 9}, r"9 \(type: .*\) is not in the list of choices"),
        ({"shown_class": "Lupus"}, "Lupus is not in the list of choices"),
        ({"review_id": "has spaces"}, "review_id 'has spaces' must be"),
        ({"marks": "[[0, 0, 9999, 10]]"}, r"mark 1 \[0, 0, 9999, 10\] lies outside the 512×512"),
        ({"marks": "[[10, 10, 40, 40]]", "no_finding": True}, "sent with 'no focal finding'"),
    ],
)
def test_bad_review_is_a_clear_error_and_the_server_keeps_serving(
    login_server, alice, real_image, changes, message
):
    review_id = changes.get("review_id") or f"bad-{uuid.uuid4().hex}"
    with pytest.raises(Exception, match=message):
        send(alice, real_image, **{"review_id": review_id, **changes})
    store = ReviewStore.open(login_server[1])
    assert store.get(review_id) is None
    store.close()
    assert send(alice, real_image, f"ok-{uuid.uuid4().hex}").startswith("Saved:")


def test_stored_image_pdf_and_csv_through_the_api(login_server, alice, real_image):
    data = login_server[1]
    send(
        alice,
        real_image,
        "with-image",
        store_image=True,
        agreement="disagree",
        correct_class="Normal",
        shown_class="COVID-19",
        heatmap_usefulness=2,
        heatmap_wrong_place=True,
    )
    store = ReviewStore.open(data)
    review = store.get("with-image")
    stored = store.image_file(review)
    store.close()
    assert stored is not None and stored.is_relative_to(data)
    pixels = load_image(real_image).pixels
    assert np.array_equal(np.asarray(Image.open(stored)), pixels)
    assert review.image_sha256 == pixels_sha256(pixels)
    assert (review.shown_class, review.correct_class, review.agrees) == (
        "COVID-19",
        "Normal",
        False,
    )

    pdf = Path(alice.predict(0.45, "jet", api_name="/report"))  # same session as the review
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 10_000

    csv_path = Path(alice.predict("All", "disagree", "alice", api_name="/export_csv"))
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("id,review_id,") and len(lines) >= 2
    assert all(",disagree," in line for line in lines[1:])
    assert any(",with-image," in line for line in lines[1:])


def test_exposed_server_without_login_refuses_reviews_and_exports(tiny_checkpoint, tmp_path):
    process, url = start_app(tiny_checkpoint, "--host", "0.0.0.0", env=_env(tmp_path / "d"))
    try:
        client = Client(url, verbose=False)
        for call in (
            lambda: client.predict("All", "All", "", api_name="/export_csv"),
            lambda: client.predict("x", api_name="/reopen"),
            lambda: send(client, lung5_images("test")[0], "exposed-1"),
        ):
            with pytest.raises(Exception, match="switched off"):
                call()
    finally:
        _stop(process)
    store = ReviewStore.open(tmp_path / "d")
    assert store.list() == []
    store.close()


def test_marks_through_the_api_are_scored_stored_reopened_and_exported(
    login_server, alice, real_image
):
    box = [100, 120, 300, 360]
    status = send(alice, real_image, "marked", marks=json.dumps([box]), store_image=True)
    assert status.startswith("Saved: review `marked`")
    assert "The heatmap's peak lies in your mark." in status or "outside your marks" in status
    store = ReviewStore.open(login_server[1])
    review = store.get("marked")
    store.close()
    assert review.marks == [box] and review.hit_shown is not None
    assert ("lies in your mark" in status) == (review.hit_shown >= 0.5)
    _, image, marks, no_finding = alice.predict("marked", api_name="/reopen")
    assert json.loads(marks) == [box] and no_finding is False and image is not None
    csv_path = Path(alice.predict("All", "All", "alice", api_name="/export_csv"))
    assert '"[[100, 120, 300, 360]]"' in csv_path.read_text()
