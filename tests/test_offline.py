"""No calls out: ``python app.py`` (the server and the model's process) looks up no name and
connects to no address beyond this machine, from start-up through one /predict.

``tests/offline/sitecustomize.py`` is put on ``PYTHONPATH`` of the app (the model's process
inherits it): its audit hook refuses every ``socket.getaddrinfo``/``connect`` to a
non-loopback host and writes down who asked. The switches that stop the libraries from
asking (``serving.runtime.stay_offline``) must come from the code, so the environment the
test starts the app in has none of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from gradio_client import Client

from tests.conftest import BUNDLED_MODEL, REPO, launch_app, predict_api, wait_for_app

HOOK = REPO / "tests" / "offline"
# What a user may have set to keep the libraries quiet; the app must not need any of it.
SWITCHES = (
    "GRADIO_ANALYTICS_ENABLED",
    "GRADIO_SHARE",
    "GRADIO_RUN_HISTORY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_UPDATE_CHECK",
    "DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "NO_ALBUMENTATIONS_UPDATE",
)


def test_the_hook_refuses_and_records_a_lookup_but_not_loopback(tmp_path):
    log = tmp_path / "network.jsonl"
    code = (
        "import socket\n"
        "socket.getaddrinfo('127.0.0.1', 80); socket.getaddrinfo('localhost', 80)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443)\n"
        "except OSError as err:\n"
        "    print('refused:', err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HOOK), "LUNGCAM_NETWORK_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "refused:" in out.stdout, out.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["host"]) for r in records] == [("socket.getaddrinfo", "'pypi.org'")]


@pytest.mark.slow
def test_the_app_makes_no_call_out_from_start_to_a_prediction(real_image, tmp_path, monkeypatch):
    for name in SWITCHES:  # the app must switch them off itself
        monkeypatch.delenv(name, raising=False)
    log = tmp_path / "network.jsonl"
    path = os.pathsep.join(p for p in (str(HOOK), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "LUNGCAM_NETWORK_LOG": str(log)}
    env["LUNGCAM_DATA_DIR"] = str(tmp_path / "data")
    process, port = launch_app(BUNDLED_MODEL, env=env)
    try:
        url = wait_for_app(process, port, timeout=300)
        label = predict_api(Client(url, verbose=False), real_image)[0]
        assert len(label["confidences"]) == 5  # both processes are up, the model loaded
        time.sleep(2)  # threads started at launch (analytics, version checks) have run
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    calls = "\n\n".join(
        f"{r['event']} {r['host']} from pid {r['pid']} {r['argv']}:\n{''.join(r['stack'])}"
        for r in records
    )
    assert not records, f"{len(records)} calls out:\n{calls}\n\napp output:\n{output}"
