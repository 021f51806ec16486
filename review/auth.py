"""Optional login: ``LUNGCAM_AUTH=user:pass[,user:pass]`` or a path to a file of such pairs.

Turn it on for any public host that stores reviews; the logged-in name then becomes the
reviewer, so nobody can file a review under someone else's name. ``LoginGuard`` checks the
pairs and locks a name out for a while after repeated wrong passwords.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


FREE_TRIES = 5  # wrong passwords in a row before the first lock-out
FIRST_LOCK_S = 30.0  # doubled with every further wrong password
LONGEST_LOCK_S = 900.0
MAX_NAMES_TRACKED = 10_000


class LoginLocked(PermissionError):
    """A login refused unchecked: its name is locked out for ``retry_after`` more seconds."""

    def __init__(self, username: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"Too many wrong passwords for {username!r}: logins under this name are refused "
            f"for {math.ceil(retry_after)} s more."
        )


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = -math.inf


class LoginGuard:
    """Checks ``user:pass`` pairs, with an exponential lock-out per name.

    After ``free_tries`` wrong passwords in a row for one name, every login under that name
    (right or wrong) is refused for ``first_lock`` seconds, then twice as long after each
    further wrong password, at most ``longest_lock``; a right password outside a lock-out
    starts the count again. Attempts during a lock-out are not checked and do not lengthen
    it. Unknown names are counted like known ones, so a lock-out says nothing about which
    names exist; at most ``max_names`` names are remembered (the oldest are forgotten).
    ``clock`` gives seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        free_tries: int = FREE_TRIES,
        first_lock: float = FIRST_LOCK_S,
        longest_lock: float = LONGEST_LOCK_S,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = MAX_NAMES_TRACKED,
    ) -> None:
        self.passwords = dict(pairs)
        self.free_tries = free_tries
        self.first_lock = first_lock
        self.longest_lock = longest_lock
        self.clock = clock
        self.max_names = max_names
        self.failures: dict[str, _Failures] = {}

    def check(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s; raises ``LoginLocked`` during a lock-out."""
        now = self.clock()
        failures = self.failures.get(username)
        if failures is not None and now < failures.locked_until:
            raise LoginLocked(username, failures.locked_until - now)
        expected = self.passwords.get(username)
        if expected is not None and hmac.compare_digest(password.encode(), expected.encode()):
            self.failures.pop(username, None)
            return True
        self._failed(username, now)
        return False

    def lock_seconds(self, count: int) -> float:
        """How long the ``count``-th wrong password in a row locks its name out (0: not)."""
        if count < self.free_tries:
            return 0.0
        doublings = min(count - self.free_tries, 60)  # no float overflow however long it runs
        return min(self.first_lock * 2.0**doublings, self.longest_lock)

    def _failed(self, username: str, now: float) -> None:
        failures = self.failures.pop(username, None) or _Failures()
        self.failures[username] = failures  # the most recent failure last
        while len(self.failures) > self.max_names:
            del self.failures[next(iter(self.failures))]
        failures.count += 1
        if failures.count >= self.free_tries:
            failures.locked_until = now + self.lock_seconds(failures.count)
