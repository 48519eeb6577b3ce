"""nginx/ as shipped, run by Debian's nginx in front of two media-server replicas on one
tritonserver (tests/deploy_stack.py): TLS with a test-made certificate, the openai SDK's
voice turn over wss://, WebRTC signalling, limits and headers, a drain, a replica gone."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import time
import urllib.request

import aiohttp
import numpy as np
import pytest
import websockets

from pipelines.audio import float_to_pcm16
from pipelines.speech import espeak_speech
from tests.deploy_stack import AUTH, KEY, http_status, wait_until

pytestmark = pytest.mark.triton

SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                    "Referrer-Policy", "Permissions-Policy")


def voice_session(**extra) -> dict:
    return {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}, **extra}


async def open_ws(stack, query: str = ""):
    ws = await websockets.connect(stack.nginx.wss + query, ssl=stack.nginx.ssl_context(),
                                  compression=None, max_size=None, additional_headers=AUTH)
    created = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert created["type"] == "session.created", created
    return ws, created["session"]["id"]


async def next_event(ws, type_: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if event["type"] == "error":
            raise AssertionError(event["error"])
        if event["type"] == type_:
            return event


def on_replicas(stack) -> list[float]:
    return [r.sessions_open() for r in stack.replicas]


def test_tls_redirect_headers_limits_and_private_metrics(deploy_stack):
    nginx, ctx = deploy_stack.nginx, deploy_stack.nginx.ssl_context()
    # plain HTTP is sent to HTTPS
    req = urllib.request.Request(f"http://127.0.0.1:{nginx.http_port}/index.html")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(req, timeout=3)
    assert redirect.value.code == 301
    assert redirect.value.headers["Location"].startswith("https://127.0.0.1/index.html")
    # the web demo over TLS, with the security headers
    with urllib.request.urlopen(nginx.https + "/index.html", timeout=3, context=ctx) as r:
        assert r.status == 200 and b"rtmedia" in r.read()
        for header in SECURITY_HEADERS:
            assert r.headers[header], header
        assert "max-age" in r.headers["Strict-Transport-Security"]
    # /metrics is not public (the replicas' own /metrics listener is what Prometheus reads)
    assert http_status(nginx.https + "/metrics", ctx) == 404
    # bodies over 1 MiB never reach a replica
    big = urllib.request.Request(nginx.https + "/v1/realtime/calls", data=b"x" * (2 << 20),
                                 headers={"Content-Type": "application/sdp"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as too_big:
        urllib.request.urlopen(big, timeout=5, context=ctx)
    assert too_big.value.code == 413
    # a certificate the client does not trust is refused (TLS is real)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(nginx.https + "/healthz", timeout=3,
                               context=ssl.create_default_context())


async def test_replicas_see_the_client_address_not_nginx(deploy_stack):
    """nginx passes X-Forwarded-For; the replicas trust it from nginx (127.0.0.1 here,
    RTMEDIA_TRUSTED_PROXIES), so their per-address limits and logs name the client."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            local_addr=("127.0.0.2", 0))) as http, http.get(
            deploy_stack.nginx.https + "/v1/models", ssl=deploy_stack.nginx.ssl_context(),
            headers={"Authorization": "Bearer sk-wrong"}) as r:
        assert r.status == 401
    await asyncio.sleep(0.2)
    logs = "".join(r.log.read_text(errors="replace") for r in deploy_stack.replicas)
    assert "refused GET /v1/models from 127.0.0.2" in logs


async def test_openai_sdk_voice_turn_over_wss(deploy_stack):
    from openai import AsyncOpenAI

    nginx = deploy_stack.nginx
    oa = AsyncOpenAI(base_url=nginx.https + "/v1", api_key=KEY)
    question = espeak_speech("What colour is the sky on a sunny day?", rate=24000)
    audio_out, user_text = [], ""
    async with oa.realtime.connect(model="rtmedia-voice", websocket_connection_options={
            "ssl": nginx.ssl_context()}) as conn:
        await conn.session.update(session=voice_session(
            instructions="Answer in one short sentence."))
        sent = False
        async for event in conn:
            if event.type == "session.updated" and not sent:
                sent = True
                pcm = float_to_pcm16(np.concatenate([question, np.zeros(24000, np.float32)]))
                for i in range(0, pcm.size, 4800):
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[i:i + 4800].tobytes()).decode())
            elif event.type == "conversation.item.input_audio_transcription.completed":
                user_text = event.transcript
            elif event.type == "response.output_audio.delta":
                audio_out.append(np.frombuffer(base64.b64decode(event.delta), "<i2"))
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                assert event.response.status == "completed"
                break
    assert "sky" in user_text.lower()
    assert np.concatenate(audio_out).size > 24000 * 0.5
    # the access log names the replica that served the upgrade (101)
    assert " 101 " in nginx.access_log()


async def test_webrtc_signalling_through_nginx(deploy_stack):
    """The SDP offer/answer goes through nginx; the call's media and data channel then
    connect to the replica directly (as TURN or host candidates would in production).
    The call resumes a conversation a WebSocket session began (?resume=)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from streaming.rtc_client import ArrayMicrophone
    from streaming.webrtc import allow_loopback_candidates

    allow_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(ArrayMicrophone(np.zeros(4800, np.float32)))
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("oai-events")
    events: asyncio.Queue = asyncio.Queue()
    channel.on("message", lambda m: events.put_nowait(json.loads(m)))
    ws, sid = await open_ws(deploy_stack)
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Remember the word teapot."}]}}))
    await next_event(ws, "conversation.item.added")
    await ws.close()
    await asyncio.sleep(0.3)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http, http.post(
                deploy_stack.nginx.https + f"/v1/realtime/calls?resume={sid}",
                data=pc.localDescription.sdp, ssl=deploy_stack.nginx.ssl_context(),
                headers={"Content-Type": "application/sdp", **AUTH}) as resp:
            answer = await resp.text()
            assert resp.status == 201, answer
            assert resp.headers["Strict-Transport-Security"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        first = await asyncio.wait_for(events.get(), 15)
        assert first["type"] == "session.created" and first["session"]["id"] == sid
        item = await asyncio.wait_for(events.get(), 5)
        assert item["type"] == "conversation.item.added"
        assert item["item"]["content"][0]["text"] == "Remember the word teapot."
    finally:
        await pc.close()


async def test_drain_then_replica_gone(deploy_stack):
    """SIGTERM to the replica holding a session: it turns unready, new sessions go to the
    other replica, the open session finishes its work, then the replica exits; with it
    gone every new session lands on the other."""
    stack = deploy_stack
    await asyncio.to_thread(wait_until, lambda: sum(on_replicas(stack)) == 0, 20,
                            "no sessions left from earlier tests")
    ws, _ = await open_ws(stack)
    try:
        counts = on_replicas(stack)
        assert sorted(counts) == [0, 1], counts
        busy = stack.replicas[counts.index(1)]
        other = stack.replicas[counts.index(0)]
        busy.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: http_status(busy.http + "/readyz") == 503,
                                10, "draining replica unready")
        # new sessions: all on the other replica (nginx retries the 503 there)
        others = [await open_ws(stack) for _ in range(3)]
        assert other.sessions_open() == 3 and busy.sessions_open() == 1
        for w, _ in others:
            await w.close()
        # the open session still holds a text turn on the draining replica
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "max_output_tokens": 16,
            "instructions": "Answer in a few words."}}))
        await next_event(ws, "session.updated")
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        done = await next_event(ws, "response.done")
        assert done["response"]["status"] == "completed"
        assert busy.proc.poll() is None  # still draining while the session is open
    finally:
        await ws.close()
    assert await asyncio.to_thread(busy.proc.wait, 15) == 0
    # the replica is gone: nginx passes new sessions to the other
    for _ in range(3):
        w, _ = await open_ws(stack)
        await w.close()
    log = stack.nginx.access_log()
    assert f"127.0.0.1:{busy.port}" in log  # the failed try is in the upstream list
    await asyncio.to_thread(stack.restart, busy)
