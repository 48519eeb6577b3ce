"""Resource bounds at the transport: idle sessions that answer pings, clients that never
read, message sizes in bytes, and a /metrics that hostile event types cannot break.
A real media server on a loopback port; none of this needs Triton (it points at a closed
port), so the tests run in the unit tier."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import numpy as np
import pytest
import websockets

from bench.stack import free_port
from streaming import metrics as M
from streaming.server import SESSIONS
from tests.test_auth import KEY, keyed_settings, serve

AUTH = {"Authorization": "Bearer " + KEY}


async def test_idle_timeout_fires_for_a_client_that_answers_pings(tmp_path):
    """Pings and pongs (the client's here, every 0.2 s; the server's own heartbeat works
    the same way) are not activity: a client that sends no message is closed."""
    async with serve(keyed_settings(tmp_path, idle_timeout_s=1.0)) as s:
        t0 = time.monotonic()
        async with websockets.connect(s.ws, additional_headers=AUTH, ping_interval=0.2,
                                      ping_timeout=5) as ws:
            events = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 6)))
            elapsed = time.monotonic() - t0
        assert [e["type"] for e in events] == ["session.created", "error"]
        assert events[1]["error"]["code"] == "idle_timeout"
        assert ws.close_code == 1000
        assert 0.9 <= elapsed < 3.0
        assert not s.app[SESSIONS]


async def test_messages_keep_a_session_alive(tmp_path):
    async with serve(keyed_settings(tmp_path, idle_timeout_s=0.6)) as s:
        async with websockets.connect(s.ws, additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            for _ in range(8):  # 2 s of a message every 0.25 s
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                await asyncio.sleep(0.25)
            assert ws.state is websockets.protocol.State.OPEN
            # then silence: closed within the idle time
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 3)


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


async def _raw_upgrade(port: int) -> socket.socket:
    """A WebSocket client that will never read: a tiny receive buffer, the handshake
    read once, then only writes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_never_reads_is_dropped(tmp_path):
    """Every session.update is answered by a session.updated echoing 8 kB of
    instructions; the client reads none of it. The server must close it once a send
    blocks for send_timeout_s, instead of queueing what it cannot send for ever."""
    settings = keyed_settings(tmp_path, send_timeout_s=1.0, idle_timeout_s=60)
    async with serve(settings) as s:
        sock = await _raw_upgrade(settings.port)
        update = _frame(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": "x" * 7900}}).encode())
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        peak_queue = 0
        dropped_at = None
        try:
            while time.monotonic() - t0 < 30:
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, update), 0.5)
                except TimeoutError:
                    pass  # our own send buffer is full too: the server stopped reading
                except OSError:  # reset: the server dropped us
                    dropped_at = time.monotonic()
                    break
                for session in s.app[SESSIONS]:
                    out = getattr(session, "out", None)
                    if out is not None:
                        peak_queue = max(peak_queue, out.qsize())
                if not s.app[SESSIONS] and time.monotonic() - t0 > 0.5:
                    dropped_at = time.monotonic()
                    break
                await asyncio.sleep(1 / 150)  # under the 200/s rate limit
        finally:
            sock.close()
        assert dropped_at is not None, "the never-reading client was never dropped"
        # the kernel buffers fill first (a few MB on loopback), then 1 s of blocked send
        assert dropped_at - t0 < 20
        assert peak_queue < 1000, f"{peak_queue} events queued for a client not reading"
        errors = M.ERRORS.labels("client_not_reading")._value.get()
        assert errors >= 1


async def test_message_size_counts_bytes(tmp_path):
    """The limit is in bytes: a message of 3,000 characters but 6,000 UTF-8 bytes is
    over a 4,096-byte limit (error, the session goes on); above the hard cap (twice the
    limit, at least 64 KiB) the socket closes with 1009."""
    async with serve(keyed_settings(tmp_path, max_message_bytes=4096)) as s:
        async with websockets.connect(s.ws, additional_headers=AUTH, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            text = "é" * 3000  # 3,000 characters, 6,000 bytes
            msg = json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": text}]}}, ensure_ascii=False)
            assert len(msg) < 4096 < len(msg.encode())
            await ws.send(msg)
            ev = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert ev["type"] == "error" and ev["error"]["code"] == "message_too_large", ev
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            ev = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert ev["type"] == "input_audio_buffer.cleared"
            # 40,000 characters, 80,000 bytes: over the 64 KiB hard cap
            await ws.send(json.dumps({"type": "x", "pad": "é" * 40000}, ensure_ascii=False))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009


async def test_hostile_event_types_do_not_break_metrics(tmp_path):
    """A lone surrogate as the type once made every later scrape fail (HTTP 500), and
    every unknown type became a label value."""
    assert M.event_label("\ud800") == "unknown"
    assert M.event_label("session.update") == "session.update"
    assert M.event_label("response.audio.delta") == "response.audio.delta"
    assert M.event_label(None) == "unknown"  # type: ignore[arg-type]
    async with serve(keyed_settings(tmp_path)) as s:
        async with websockets.connect(s.ws, additional_headers=AUTH) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "\ud800"}))  # JSON escape of a lone surrogate
            for i in range(50):
                await ws.send(json.dumps({"type": f"made.up.{i}"}))
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            for _ in range(52):
                await asyncio.wait_for(ws.recv(), 5)
        async with s.client.get(s.http + "/metrics", headers=AUTH) as r:
            assert r.status == 200
            text = await r.text()
        assert "made.up" not in text
        for line in text.splitlines():
            if line.startswith("rtmedia_frames_total{"):
                label = line.split('type="', 1)[1].split('"', 1)[0]
                assert label in M.KNOWN_EVENTS or label in ("unknown", "invalid"), line


@pytest.mark.triton
async def test_webrtc_idle_means_no_message_and_no_speech(triton, triton_settings):
    """Browsers send microphone packets all the time, silence included: a call whose
    data channel is silent and whose microphone hears no speech is idle. A call that
    sends a data-channel message now and then is not."""
    from streaming.rtc_client import ArrayMicrophone, RtcCall

    settings = triton_settings.replace(port=free_port(), triton_url=triton.grpc_url,
                                       idle_timeout_s=1.5)
    async with serve(settings) as s:
        quiet = await RtcCall(s.http, ArrayMicrophone(np.zeros(4800, np.float32))).start()
        busy = await RtcCall(s.http, ArrayMicrophone(np.zeros(4800, np.float32))).start()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 4:
                if busy.channel.readyState == "open":
                    busy.channel.send(json.dumps({"type": "input_audio_buffer.clear"}))
                await asyncio.sleep(0.4)
            quiet_errors = [e for _, e in quiet.rec.events if e["type"] == "error"]
            busy_errors = [e for _, e in busy.rec.events if e["type"] == "error"]
            open_calls = len(s.app[SESSIONS])
        finally:
            await quiet.close()
            await busy.close()
    assert [e["error"]["code"] for e in quiet_errors] == ["idle_timeout"]
    assert not busy_errors, busy_errors
    assert open_calls == 1  # the busy one
