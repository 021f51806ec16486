"""Loaded by every Python process started with this folder on ``PYTHONPATH`` (the site module
imports ``sitecustomize`` at start-up): an audit hook that refuses every name lookup and
connection to a non-loopback address and writes each refusal, with where it came from, as a
JSON line to ``$LUNGCAM_NETWORK_LOG``. ``tests/test_offline.py`` starts the app with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import traceback

LOG = os.environ.get("LUNGCAM_NETWORK_LOG")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback(host: object) -> bool:
    if host is None:  # getaddrinfo(None, port): an address to bind, nothing is looked up
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name: looking it up would ask a DNS server
    return address.is_loopback or address.is_unspecified


def _outside(event: str, args: tuple) -> object | None:
    """The non-loopback host ``event`` would reach, or None."""
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0]
    elif event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX paths: this machine
            return None
        host = address[0]
    else:
        return None
    return None if _is_loopback(host) else host


def _hook(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    host = _outside(event, args)
    if host is None:
        return
    record = {
        "pid": os.getpid(),
        "argv": sys.argv,
        "event": event,
        "host": repr(host),
        "stack": traceback.format_stack()[:-1],
    }
    if LOG:
        with open(LOG, "a") as log:
            log.write(json.dumps(record) + "\n")
    raise OSError(f"network access to {host!r} refused by tests/offline/sitecustomize.py")


sys.addaudithook(_hook)
