"""Who may read what, through the real server over HTTP: two logins, files per login, the
login lock-out, and an exposed server without a login, where nothing reads the reviews."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from review.store import ReviewStore
from tests.conftest import lung5_images, start_app
from tests.review_drafts import make_draft
from tests.test_review_e2e import send

pytestmark = pytest.mark.slow

USERS = {"u": "pw-u", "v": "pw-v", "w": "pw-w"}  # w: the lock-out test's own
AGREEMENT_TABLE = (
    "Reviewers agreeing with the top class (Wilson 95 % interval; the class and reviewer "
    "filters apply)"
)


def _env(data: Path, auth: str) -> dict[str, str]:
    return {"LUNGCAM_DATA_DIR": str(data), "DATABASE_URL": "", "LUNGCAM_AUTH": auth}


def browser(url: str, user: str | None = None) -> httpx.Client:
    """Plain HTTP as a browser would: logged in as ``user`` (its session cookie) or not."""
    http = httpx.Client(base_url=url, timeout=60)
    if user is not None:
        answer = http.post("/login", data={"username": user, "password": USERS[user]})
        assert answer.status_code == 200, answer.text
    return http


def fetch(http: httpx.Client, path: str | Path) -> httpx.Response:
    return http.get(f"/gradio_api/file={path}")


def served_path(value: dict[str, Any]) -> str:
    """The server-side path of a file output (``gradio_client`` with ``download_files=False``)."""
    return value["path"]


@pytest.fixture(scope="module")
def two_logins(tiny_checkpoint, tmp_path_factory):
    data = tmp_path_factory.mktemp("access") / "data"
    auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
    process, url = start_app(tiny_checkpoint, env=_env(data, auth))
    yield url, data
    process.kill()
    process.wait(timeout=30)


def client(url: str, user: str) -> Client:
    return Client(url, auth=(user, USERS[user]), verbose=False, download_files=False)


def test_a_review_and_its_files_belong_to_the_login_that_made_them(two_logins):
    url, _ = two_logins
    film_u, film_v = lung5_images("test")[0], lung5_images("test")[1]
    u, v = client(url, "u"), client(url, "v")
    http_u, http_v, anonymous = browser(url, "u"), browser(url, "v"), browser(url)
    review_id = f"shared-{uuid.uuid4().hex[:8]}"
    assert send(u, film_u, review_id, store_image=True).startswith("Saved")
    pdf = served_path(u.predict(0.45, "jet", api_name="/report"))
    printed = fetch(http_u, pdf)
    assert printed.status_code == 200 and printed.content.startswith(b"%PDF")
    assert fetch(http_v, pdf).status_code == 404
    assert fetch(anonymous, pdf).status_code in (401, 404)

    # v takes u's review id with another film: refused, and there is nothing for v to print
    with pytest.raises(Exception, match="belongs to another reviewer's case"):
        send(v, film_v, review_id)
    with pytest.raises(Exception, match="Save the review first"):
        v.predict(0.45, "jet", api_name="/report")
    assert fetch(http_u, pdf).content == printed.content

    pdf_again, image = map(served_path, u.predict(review_id, api_name="/reopen")[:2])
    assert fetch(http_u, pdf_again).status_code == fetch(http_u, image).status_code == 200
    assert fetch(http_v, pdf_again).status_code == fetch(http_v, image).status_code == 404
    pdf_v, image_v = map(served_path, v.predict(review_id, api_name="/reopen")[:2])
    assert fetch(http_v, pdf_v).status_code == 200 and pdf_v != pdf_again
    assert fetch(http_u, image_v).status_code == 404


def test_an_upload_is_served_to_its_sender_only_and_the_data_folder_never(two_logins):
    url, data = two_logins
    http_u, http_v = browser(url, "u"), browser(url, "v")
    film = lung5_images("test")[2]
    with film.open("rb") as handle:
        answer = http_u.post("/gradio_api/upload", files={"files": (film.name, handle)})
    (upload,) = answer.json()
    assert fetch(http_v, upload).status_code == 404
    assert fetch(http_u, upload).status_code == 200
    for inside in (data / "reviews.sqlite", data / "exports" / "review-x.pdf"):
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.touch()
        assert fetch(http_u, inside).status_code == 404


def test_thirty_wrong_passwords_lock_the_name_out_even_for_the_right_one(two_logins):
    url, _ = two_logins
    with httpx.Client(base_url=url, timeout=60) as http:
        codes = [
            http.post("/login", data={"username": "w", "password": f"guess-{n}"}).status_code
            for n in range(30)
        ]
        right = http.post("/login", data={"username": "w", "password": USERS["w"]})
        other = http.post("/login", data={"username": "u", "password": USERS["u"]})
    assert codes == [400] * 5 + [429] * 25
    assert right.status_code == 429 and "refused for" in right.json()["detail"]
    assert other.status_code == 200  # the lock-out is per name


def hidden_event(url: str, output_label: str, data: list[Any]) -> dict[str, Any]:
    """Call the event that fills the component labelled ``output_label`` as the page does
    (queue/join by ``fn_index``), even when it has no API name; returns its last message."""
    with httpx.Client(base_url=url, timeout=120) as http:
        config = http.get("/config").json()
        ids = [c["id"] for c in config["components"] if c["props"].get("label") == output_label]
        fn_index = next(d["id"] for d in config["dependencies"] if d["outputs"] == ids)
        session = uuid.uuid4().hex
        body = {"data": data, "fn_index": fn_index, "session_hash": session}
        http.post("/gradio_api/queue/join", json=body).raise_for_status()
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as sse:
            for line in sse.iter_lines():
                message = json.loads(line[len("data:") :]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError(f"no answer from the event filling {output_label!r}")


def test_reviews_off_leaves_nothing_that_reads_them_reachable(tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    store = ReviewStore.open(data)
    store.add(make_draft(review_id="old", reviewer="dr-old"))
    store.close()
    old_pdf = data / "exports" / "review-old.pdf"
    old_owned = data / "gradio" / "owned" / "k" / "r" / "review-old.pdf"
    for path in (old_pdf, old_owned):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%PDF-1.4 an earlier run's report")
    process, url = start_app(tiny_checkpoint, "--host", "0.0.0.0", env=_env(data, ""))
    try:
        for reviewer in ("dr-old", "nobody"):
            table = hidden_event(url, AGREEMENT_TABLE, ["All", "All", reviewer])
            assert table["success"] and table["output"]["data"][0]["data"] in ([], [[]])
        summary = hidden_event(url, "Agreement summary (CSV)", ["All", "All", "dr-old"])
        assert not summary["success"] and "switched off" in json.dumps(summary)
        with browser(url) as http:
            assert fetch(http, old_pdf).status_code == 404
            assert fetch(http, old_owned).status_code == 403  # Gradio's: no such file
        assert not old_owned.exists()  # owned files do not outlive their process
        api = Client(url, verbose=False)
        calls = (("/export_csv", ("All", "All", "")), ("/reopen", ("old",)), ("/report", (0.45,)))
        for endpoint, args in calls:
            with pytest.raises(Exception, match="switched off"):
                api.predict(*args, api_name=endpoint)
    finally:
        process.kill()
        process.wait(timeout=30)
