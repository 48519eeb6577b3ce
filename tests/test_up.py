"""`rtmedia up`, the main command: Triton + media server + web demo, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.triton


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def up_command(model_store, tmp_path, port: int, http_port: int) -> tuple[list[str], dict]:
    """`rtmedia up` on free loopback ports with the test store: (argv, environment)."""
    env = dict(os.environ, AI_MODELS_DIR=str(model_store.root), RTMEDIA_STATE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "streaming.cli", "up", "--port", str(port),
           "--http-port", str(http_port), "--grpc-port", str(free_port()),
           "--metrics-port", str(free_port())]
    return cmd, env


def test_rtmedia_up_serves_and_stops(model_store, tmp_path):
    port, http_port = free_port(), free_port()
    cmd, env = up_command(model_store, tmp_path, port, http_port)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(base + "/readyz")
            except OSError:
                time.sleep(0.5)
                continue
            if status == 200:
                ready = json.loads(body)
                break
            time.sleep(0.5)
        assert ready and ready["ready"], proc.stdout.read() if proc.poll() is not None else ""
        assert _get(base + "/healthz")[0] == 200
        status, page = _get(base + "/index.html")
        assert status == 200 and b"rtmedia" in page
        assert b"rtmedia_sessions_active" in _get(base + "/metrics")[1]
        # every default model (the avatar, the multilingual Whisper and the end-of-turn
        # model included) is loaded in the Triton it started
        index = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index",
                                       data=b"{}", method="POST")
        with urllib.request.urlopen(index, timeout=5) as r:
            states = {m["name"]: m.get("state") for m in json.loads(r.read())}
        assert all(states.get(m) == "READY" for m in ("whisper", "piper", "llm", "avatar",
                                                      "whisper_base", "smart_turn"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert "rtmedia media server on" in out and "stopping tritonserver" in out
    with pytest.raises(OSError):  # Triton went down with it
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=1)
