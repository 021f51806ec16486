"""Who may read what, without a server: owner folders, the file-route gate (on a small
Starlette app), the review and History handlers' owner checks, reviews switched off, and the
login lock-out as Gradio's ``auth`` callable."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from fastapi import HTTPException
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from imaging.load import load_image
from model.predictor import Predictor
from review.auth import FREE_TRIES, LoginGuard
from review.store import ReviewStore, pixels_sha256
from serving.access import FileGate, OwnerFolders, http_login
from tests.conftest import lung5_images
from tests.review_drafts import make_draft
from ui.common import owner_of
from ui.history import HistoryHandlers
from ui.review import ReviewHandlers

COOKIE = "cookie-id"
TOKENS = {"token-u": "u", "token-v": "v"}


def login(name: str) -> SimpleNamespace:
    """What a handler sees of a logged-in request (``gr.Request``'s two fields used)."""
    return SimpleNamespace(username=name, session_hash=f"session-of-{name}")


def session(name: str) -> SimpleNamespace:
    return SimpleNamespace(username=None, session_hash=name)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.load(str(tiny_checkpoint), "cpu")


@pytest.fixture
def store(tmp_path, monkeypatch) -> ReviewStore:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    opened = ReviewStore.open(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture
def folders(tmp_path) -> OwnerFolders:
    return OwnerFolders(tmp_path / "data" / "gradio")


def test_owner_folders_are_secret_per_owner_and_fresh_per_request(tmp_path):
    folders = OwnerFolders(tmp_path / "cache", secret=b"s")
    assert folders.key("user:u") == OwnerFolders(tmp_path, secret=b"s").key("user:u")
    assert folders.key("user:u") != folders.key("user:v") != folders.key("session:v")
    assert folders.key("user:u") != OwnerFolders(tmp_path).key("user:u")  # another process
    first, second = folders.request_folder("user:u"), folders.request_folder("user:u")
    assert first != second and first.parent == second.parent == folders.root / folders.key("user:u")
    assert folders.key_of(first / "x.pdf") == folders.key("user:u")
    assert folders.key_of(tmp_path / "cache" / "x.pdf") is None
    folders.reset()
    assert not folders.root.exists()


def test_owner_of_a_request_is_the_login_else_the_session():
    assert owner_of(login("u")) == "user:u"
    assert owner_of(session("abc")) == "session:abc"
    assert owner_of(None) == "session:"


def gated_app(tmp_path: Path, login_on: bool) -> Starlette:
    """A Starlette app answering like Gradio's file and upload routes, behind ``FileGate``."""
    data = tmp_path / "data"
    folders = OwnerFolders(data / "gradio", secret=b"fixed")
    upload = data / "gradio" / "0123abcd" / "film.dcm"

    async def file(request):
        return PlainTextResponse(f"served {request.path_params['path']}")

    async def uploaded(request):
        return JSONResponse([str(upload)])

    routes = [
        Route("/gradio_api/file={path:path}", file),
        Route("/gradio_api/upload", uploaded, methods=["POST"]),
    ]
    gate = Middleware(FileGate, folders=folders, data=data)
    app = Starlette(routes=routes, middleware=[gate])
    app.tokens, app.cookie_id = TOKENS, COOKIE
    app.auth = [("u", "pw")] if login_on else None
    return app


def gated_client(
    tmp_path: Path, login_on: bool, token: str | None = None, app: Starlette | None = None
) -> TestClient:
    """A client of ``app`` (default: a new ``gated_app``), logged in with ``token``."""
    client = TestClient(app or gated_app(tmp_path, login_on))
    if token is not None:
        client.cookies.set(f"access-token-{COOKIE}", token)
    return client


def owned(tmp_path: Path, owner: str) -> str:
    folders = OwnerFolders(tmp_path / "data" / "gradio", secret=b"fixed")
    return str(folders.root / folders.key(owner) / "f00d" / "review-1.pdf")


def test_with_a_login_the_gate_serves_an_owned_file_to_its_owner_only(tmp_path):
    path = owned(tmp_path, "user:u")
    u, v = gated_client(tmp_path, True, "token-u"), gated_client(tmp_path, True, "token-v")
    anonymous = gated_client(tmp_path, True)
    assert u.get(f"/gradio_api/file={path}").text == f"served {path}"
    assert u.get(f"/gradio_api/file/{path}").status_code == 404  # Gradio's older route
    assert v.get(f"/gradio_api/file={path}").status_code == 404
    assert anonymous.get(f"/gradio_api/file={path}").status_code == 404
    sneaky = path.replace("/f00d/", "/../" + Path(owned(tmp_path, "user:v")).parts[-3] + "/")
    assert u.get(f"/gradio_api/file={sneaky}").status_code == 404  # resolved before judged


def test_the_gate_never_serves_the_data_folder_itself(tmp_path):
    data = tmp_path / "data"
    for login_on, token in ((True, "token-u"), (False, None)):
        client = gated_client(tmp_path, login_on, token)
        for path in (data / "exports" / "review-1.pdf", data / "reviews.sqlite", data / "images"):
            assert client.get(f"/gradio_api/file={path}").status_code == 404
        example = tmp_path / "assets" / "example.jpg"  # outside the data folder: Gradio decides
        assert client.get(f"/gradio_api/file={example}").status_code == 200


def test_without_a_login_owned_folders_are_served_to_whoever_has_the_path(tmp_path):
    client = gated_client(tmp_path, False)
    assert client.get(f"/gradio_api/file={owned(tmp_path, 'session:x')}").status_code == 200


def test_with_a_login_an_upload_is_served_to_its_sender_only(tmp_path):
    app = gated_app(tmp_path, True)  # one server, two logins
    u, v = (
        gated_client(tmp_path, True, "token-u", app),
        gated_client(tmp_path, True, "token-v", app),
    )
    (path,) = u.post("/gradio_api/upload").json()
    assert v.get(f"/gradio_api/file={path}").status_code == 404
    assert u.get(f"/gradio_api/file={path}").status_code == 200


def test_a_locked_out_login_is_answered_429_with_the_wait():
    check = http_login(LoginGuard([("u", "pw")], clock=lambda: 0.0))
    assert [check("u", "wrong") for _ in range(FREE_TRIES)] == [False] * FREE_TRIES
    with pytest.raises(HTTPException) as raised:
        check("u", "pw")
    assert raised.value.status_code == 429 and "refused for 30 s more" in raised.value.detail


def review_args(path: Path, review_id: str, note: str = "") -> tuple:
    """``save_review``'s arguments up to the request: an agreeing review of the file at
    ``path`` under ``review_id``."""
    return (
        str(path),
        None,
        "agree",
        None,
        4,
        False,
        note,
        "dr-x",
        False,
        review_id,
        "",
        False,
        None,
    )


def test_another_login_neither_saves_over_nor_prints_a_review(predictor, store, folders):
    reviews = ReviewHandlers(predictor.predict, lambda: predictor.config, store, "", folders)
    film_u, film_v = lung5_images()[0], lung5_images()[1]
    _, last_u = reviews.save_review(*review_args(film_u, "case-1", "u's note"), login("u"))
    pdf = Path(reviews.make_report(last_u, 0.45, "jet", False, login("u")))
    assert folders.key_of(pdf.resolve()) == folders.key("user:u")
    printed = pdf.read_bytes()

    with pytest.raises(gr.Error, match="belongs to another reviewer's case"):
        reviews.save_review(*review_args(film_v, "case-1"), login("v"))
    with pytest.raises(gr.Error, match="is u's: only they can make its report"):
        reviews.make_report(last_u, 0.45, "jet", False, login("v"))
    other_film = predictor.predict(load_image(film_v))
    with pytest.raises(gr.Error, match="not the one reviewed in `case-1`"):
        reviews.make_report((last_u[0], other_film), 0.45, "jet", False, login("u"))
    assert pdf.read_bytes() == printed and store.get("case-1").note == "u's note"


def test_a_session_sending_a_stored_id_with_another_image_gets_nothing_to_print(
    predictor, store, folders
):
    reviews = ReviewHandlers(predictor.predict, lambda: predictor.config, store, "", folders)
    film_a, film_b = lung5_images()[0], lung5_images()[1]
    status, last_a = reviews.save_review(*review_args(film_a, "case-2"), session("a"))
    assert status.startswith("Saved")
    status, last_b = reviews.save_review(*review_args(film_b, "case-2"), session("b"))
    assert status.startswith("Already saved") and "It is of another image" in status
    assert last_b == gr.skip()  # the session's last review stays what it was
    status, again = reviews.save_review(*review_args(film_a, "case-2"), session("a"))
    assert status.startswith("Already saved") and "It is of another image" not in status
    assert again[0].review_id == "case-2"
    assert pixels_sha256(again[1].image.pixels) == last_a[0].image_sha256
    pdf = Path(reviews.make_report(again, 0.45, "jet", False, session("a")))
    assert folders.key_of(pdf.resolve()) == folders.key("session:a")


def test_reopening_writes_the_pdf_and_image_into_the_requesters_folder(predictor, store, folders):
    reviews = ReviewHandlers(predictor.predict, lambda: predictor.config, store, "", folders)
    film = lung5_images()[2]
    args = (str(film), None, "agree", None, 4, False, "", "dr-x", True, "case-3", "", False, None)
    reviews.save_review(*args, login("u"))
    history = HistoryHandlers(store, predictor.config.label_names, "", folders)
    for name in ("u", "v"):
        pdf, image = map(Path, history.reopen("case-3", login(name))[:2])
        assert pdf.read_bytes().startswith(b"%PDF") and pdf.name == "review-case-3.pdf"
        assert image.read_bytes() == store.image_file(store.get("case-3")).read_bytes()
        assert {folders.key_of(pdf), folders.key_of(image)} == {folders.key(f"user:{name}")}
    csv = Path(history.export_csv("All", "All", "", login("v")))
    assert folders.key_of(csv) == folders.key("user:v") and "case-3" in csv.read_text()


def test_with_reviews_off_no_history_handler_reads_the_store(store, folders):
    store.add(make_draft(review_id="old", reviewer="dr-old"))
    reason = "Reviews, History and exports are switched off"
    history = HistoryHandlers(store, list(make_draft().probabilities), reason, folders)
    assert history.agreement("All", "All", "dr-old") == []
    assert history.agreement("All", "All", "nobody") == []  # no way to tell names apart
    assert history.history("All", "All", "dr-old").empty
    for refused in (
        lambda: history.export_csv("All", "All", "", session("x")),
        lambda: history.export_summary("All", "All", "dr-old", session("x")),
        lambda: history.reopen("old", session("x")),
    ):
        with pytest.raises(gr.Error, match="switched off"):
            refused()
    assert not folders.root.exists()  # nothing was written
