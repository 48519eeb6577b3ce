"""`rtmedia up` supervises its tritonserver: SIGKILL it mid-session and the same
session's next turn works; when `rtmedia up` exits nothing it started is left."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from streaming.client import RealtimeClient
from tests.conftest import free_port
from tests.test_up import up_command

pytestmark = pytest.mark.triton


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _turn(url: str) -> str:
    client = await RealtimeClient(url).connect()
    try:
        await client.wait_for("session.created")
        await client.update({"type": "realtime", "output_modalities": ["text"],
                             "instructions": "Answer in one short sentence."})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}]}})
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done", timeout=30)
        return done.data["response"]["status"]
    finally:
        await client.close()


def test_killed_triton_is_restarted_and_nothing_is_left_behind(model_store, tmp_path):
    port, http_port = free_port(), free_port()
    cmd, env = up_command(model_store, tmp_path, port, http_port)
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    ws = f"ws://127.0.0.1:{port}/v1/realtime"
    try:
        deadline = time.monotonic() + 180
        while _status(base + "/readyz") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        assert asyncio.run(_turn(ws)) == "completed"
        triton = next(p for p in _children(proc.pid)
                      if b"tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes())
        stubs = _children(triton)
        assert stubs
        regions = {a.decode() for p in stubs for a in
                   Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                   if a.startswith(b"triton_python_backend_shm_region_")}
        assert regions
        os.kill(triton, signal.SIGKILL)
        t_kill = time.monotonic()
        while _status(base + "/readyz") == 200 and time.monotonic() - t_kill < 5:
            time.sleep(0.1)
        # back within seconds: restarted, models loaded, the client reconnected
        status = None
        while time.monotonic() - t_kill < 60:
            if _status(base + "/readyz") == 200:
                status = asyncio.run(_turn(ws))
                if status == "completed":
                    break
            time.sleep(0.5)
        recovered = time.monotonic() - t_kill
        print(f"\nturn works again {recovered:.1f} s after SIGKILL of tritonserver")
        assert status == "completed", (tmp_path / "up.log").read_text()
        assert recovered < 30
        assert not any(_alive(p) for p in stubs), "stubs of the killed server live on"
        assert not any((Path("/dev/shm") / r).exists() for r in regions), "shm left behind"
        new_triton = next(p for p in _children(proc.pid)
                          if b"tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes())
        new_stubs = _children(new_triton)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert not _alive(new_triton) and not any(_alive(p) for p in new_stubs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "restarting" in (tmp_path / "up.log").read_text()
