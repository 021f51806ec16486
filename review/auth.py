"""Optional login: ``LUNGCAM_AUTH=user:pass[,user:pass]`` or a path to a file of such pairs.

Turn it on for any public host that stores reviews; the logged-in name then becomes the
reviewer, so nobody can file a review under someone else's name.
"""

from __future__ import annotations

import os
from pathlib import Path

AUTH_ENV = "LUNGCAM_AUTH"


def parse_auth(value: str | None = None) -> list[tuple[str, str]] | None:
    """``user:pass`` pairs from ``value`` (default ``$LUNGCAM_AUTH``); None when auth is off.

    ``value`` is either the pairs themselves, comma-separated, or the path of a file with one
    pair per line (blank lines and ``#`` comments ignored). Passwords may contain ``:``.
    """
    value = os.environ.get(AUTH_ENV, "") if value is None else value
    if not value.strip():
        return None
    path = Path(value.strip())
    text = path.read_text() if path.is_file() else value
    entries = [
        entry.strip()
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for entry in line.split(",")
        if entry.strip()
    ]
    pairs = []
    for entry in entries:
        user, _, password = entry.partition(":")
        if not user or not password:
            shown = f"{user}:<empty>" if user else "<no user>"
            raise ValueError(
                f"{AUTH_ENV}: entry {shown!r} is not user:password (from "
                f"{'file ' + str(path) if path.is_file() else 'the variable'})"
            )
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"{AUTH_ENV} is set but holds no user:password pair")
    return pairs
