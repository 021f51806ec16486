"""Optional login: ``LUNGCAM_AUTH=user:pass[,user:pass]`` or a path to a file of such pairs.

Turn it on for any public host that stores reviews; the logged-in name then becomes the
reviewer, so nobody can file a review under someone else's name.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

AUTH_ENV = "LUNGCAM_AUTH"
DEFAULT_HOST = "127.0.0.1"  # loopback unless --host or $GRADIO_SERVER_NAME says otherwise


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.x, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume others can reach it


def reviews_off_reason(host: str, auth: list[tuple[str, str]] | None) -> str:
    """Why reviews, History and exports must be off on ``host``, or "" when they may be on.

    They hold reviewer names and notes: on an address others can reach (0.0.0.0, a LAN IP,
    a Space) they need a login (``$LUNGCAM_AUTH``); on loopback they do not.
    """
    if auth or is_loopback(host):
        return ""
    return (
        f"Reviews, History and exports are switched off: this server listens on {host} "
        f"(reachable by others) without a login. Set {AUTH_ENV}=user:password to turn them on."
    )


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
