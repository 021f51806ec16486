"""Who may fetch which file over HTTP, and how a login that keeps failing is slowed down.

Gradio's file route (``/gradio_api/file=PATH``) serves any file in its cache, and in
``allowed_paths``, to whoever sends the path. Here:

- ``OwnerFolders``: what a handler returns for a request (a PDF, a CSV, a reopened image) is
  written into a folder of the requester's own, ``<cache>/owned/<key>/<request>/``, where
  ``key`` is an HMAC, under a secret of this process, of the owner: ``user:<login>`` or,
  without a login, ``session:<session id>``.
- ``FileGate`` (ASGI middleware in front of Gradio's routes): with a login, an owned folder
  and an upload are served to the login that made them only; the data folder itself (review
  database, stored images, exports) is never served, with or without a login.
- ``http_login``: ``review.auth.LoginGuard`` as Gradio's ``auth`` callable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

from review.auth import LoginGuard, LoginLocked

OWNED = "owned"
FILE_ROUTE = re.compile(r"/gradio_api/file[=/](?P<path>.+)$")
UPLOAD_ROUTE = re.compile(r"/gradio_api/upload/?$")
MAX_UPLOADS_TRACKED = 10_000

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class OwnerFolders:
    """One folder per owner under ``cache/owned``, a fresh subfolder per request.

    Folder names are HMACs of the owner under a random secret of this process: they cannot be
    derived from a login or a session id, and they do not outlive the process that made them
    (``reset`` empties the root at start).
    """

    def __init__(self, cache: str | Path, secret: bytes | None = None) -> None:
        self.root = Path(cache).resolve() / OWNED
        self._secret = secret or secrets.token_bytes(32)

    def key(self, owner: str) -> str:
        """The folder name of ``owner`` (``user:<login>`` or ``session:<id>``)."""
        return hmac.new(self._secret, owner.encode(), hashlib.sha256).hexdigest()[:32]

    def request_folder(self, owner: str) -> Path:
        """A new, empty folder of ``owner``'s for one request's files: never shared."""
        folder = self.root / self.key(owner) / secrets.token_hex(8)
        folder.mkdir(parents=True)
        return folder

    def key_of(self, path: Path) -> str | None:
        """The owner key whose folder holds ``path`` (resolved), or None outside the root."""
        if not path.is_relative_to(self.root) or path == self.root:
            return None
        return path.relative_to(self.root).parts[0]

    def reset(self) -> None:
        """Remove every owned file: an earlier process's sessions and logins are gone."""
        shutil.rmtree(self.root, ignore_errors=True)


def requested_file(scope: Scope) -> Path | None:
    """The file a request asks Gradio's file route for (resolved), or None for other routes."""
    match = FILE_ROUTE.search(scope.get("path", ""))
    if scope["type"] != "http" or match is None:
        return None
    return Path(os.path.realpath(match["path"]))


def logged_in_user(scope: Scope) -> str | None:
    """The login behind a request: Gradio's session cookie looked up in its token table."""
    app = scope.get("app")
    cookie_id = getattr(app, "cookie_id", None)
    cookies = HTTPConnection(scope).cookies
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    return getattr(app, "tokens", {}).get(token)


class FileGate:
    """ASGI middleware: Gradio's file route serves a file only to whoever may read it.

    Refused with 404 (the file's existence is not confirmed): anything in ``data`` outside
    Gradio's ``cache`` (the review database, stored images, exports); with a login, an owned
    folder (``OwnerFolders``) or an upload of another login. Without a login, owned folders
    are served to whoever has the path: their names are secret, and reviews are then on for
    this machine only (``review.auth.reviews_off_reason``).
    """

    def __init__(self, app: ASGIApp, folders: OwnerFolders, data: str | Path) -> None:
        self.app = app
        self.folders = folders
        self.data = Path(data).resolve()
        self.cache = folders.root.parent
        self.uploads: dict[Path, str] = {}  # upload → the login that sent it

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = requested_file(scope)
        if path is not None and not self.may_read(path, scope):
            await PlainTextResponse("Not found.", status_code=404)(scope, receive, send)
            return
        if scope["type"] == "http" and UPLOAD_ROUTE.search(scope.get("path", "")):
            user = logged_in_user(scope)
            if user is not None:
                send = self._recording_uploads(send, user)
        await self.app(scope, receive, send)

    def may_read(self, path: Path, scope: Scope) -> bool:
        """Whether the requester of ``scope`` may read ``path`` through the file route."""
        if path.is_relative_to(self.data) and not path.is_relative_to(self.cache):
            return False
        login_on = getattr(scope.get("app"), "auth", None) is not None
        user = logged_in_user(scope)
        key = self.folders.key_of(path)
        if key is not None:
            return not login_on or (user is not None and key == self.folders.key(f"user:{user}"))
        sender = self.uploads.get(path)
        return sender is None or sender == user

    def _recording_uploads(self, send: Any, user: str) -> Any:
        """``send`` that also notes the paths an upload response names as ``user``'s."""
        body: list[bytes] = []
        status: list[int] = []

        async def recording(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body") and status == [200]:
                    self._note_uploads(b"".join(body), user)
            await send(message)

        return recording

    def _note_uploads(self, body: bytes, user: str) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if len(self.uploads) > MAX_UPLOADS_TRACKED:  # Gradio's cache clean-up removed most
            self.uploads = {p: u for p, u in self.uploads.items() if p.exists()}
        for path in paths if isinstance(paths, list) else []:
            if isinstance(path, str):
                self.uploads[Path(os.path.realpath(path))] = user


def http_login(guard: LoginGuard) -> Callable[[str, str], bool]:
    """``guard`` as Gradio's ``auth`` callable: a locked-out login is answered with HTTP 429
    and how long to wait, rather than "Incorrect credentials"."""

    def login(username: str, password: str) -> bool:
        try:
            return guard.check(username, password)
        except LoginLocked as err:
            raise HTTPException(status_code=429, detail=str(err)) from err

    return login
