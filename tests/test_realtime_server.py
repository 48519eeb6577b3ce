"""The media server end to end: OpenAI Realtime protocol over WebSocket on real models."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets

from pipelines.audio import float_to_pcm16, pcm16_to_float, resample
from pipelines.services import STTStream, chat
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate, words
from pipelines.triton_client import TritonClient
from streaming.client import RealtimeClient
from streaming.server import ROUTER, SESSIONS

pytestmark = pytest.mark.triton

CAPTION = "Live captions make meetings easier to follow for everyone in the room."
SILENCE = np.zeros(16000, np.float32)


def voice_session(rate: int = 24000, **extra) -> dict:
    return {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": rate},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}, **extra}


async def connect(server, **kw) -> RealtimeClient:
    client = await RealtimeClient(server.url).connect(**kw)
    created = await client.wait_for("session.created")
    assert created.type == "session.created"
    return client


async def collect_until(client: RealtimeClient, stop: str, timeout: float = 30) -> list:
    out = []
    async for ev in client.iter_events(timeout=timeout):
        out.append(ev)
        if ev.type in (stop, "connection.closed"):
            return out
    return out


async def test_health_ready_metrics(media_server):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(media_server.http + "/healthz") as r:
            assert r.status == 200
        async with http.get(media_server.http + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(media_server.http + "/metrics") as r:
            text = await r.text()
            assert "rtmedia_sessions_active" in text and "rtmedia_turn_latency_seconds" in text


async def test_live_captions_at_16khz(media_server):
    client = await connect(media_server, transcription=True)
    try:
        session = await client.update({"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        assert session["type"] == "transcription"
        audio = np.concatenate([SILENCE, espeak_speech(CAPTION), SILENCE])
        sender = asyncio.create_task(client.stream_audio(audio, 16000, pace=2.0))
        events = await collect_until(
            client, "conversation.item.input_audio_transcription.completed")
        await sender
    finally:
        await client.close()
    types = [e.type for e in events]
    assert "input_audio_buffer.speech_started" in types
    assert types.index("input_audio_buffer.speech_started") < \
        types.index("input_audio_buffer.speech_stopped")
    deltas = [e for e in events if e.type.endswith("input_audio_transcription.delta")]
    assert len(deltas) >= 2  # live captions while speaking
    assert deltas[0].t < events[-1].t
    final = events[-1].data
    assert word_error_rate(CAPTION, final["transcript"]) <= 0.35, final["transcript"]
    assert final["words"] and final["usage"]["type"] == "duration"
    assert not any(e.type.startswith("response.") for e in events)  # captions only


def turn_count(stage: str) -> float:
    from streaming.metrics import TURN_LATENCY

    return sum(
        s.value for m in TURN_LATENCY.collect() for s in m.samples
        if s.name.endswith("_count") and s.labels.get("stage") == stage)


async def transcribe_pcm(grpc_url: str, pcm24k: np.ndarray) -> str:
    client = TritonClient(grpc_url)
    stt = STTStream(client)
    try:
        audio = pcm16_to_float(resample(pcm24k, 24000, 16000))
        finals = [t for t in await stt.push(audio, end=True) if t.final]
    finally:
        await stt.close()
        await client.close()
    return finals[0].text if finals else ""


async def test_voice_agent_turn_with_the_openai_sdk(media_server, triton):
    """The official openai SDK's realtime client holds a turn with this server."""
    from openai import AsyncOpenAI

    before = {stage: turn_count(stage) for stage in ("stt_final", "first_token", "first_audio")}
    oa = AsyncOpenAI(base_url=media_server.http + "/v1", api_key="unused")
    question = espeak_speech("What colour is the sky on a sunny day?", rate=24000)
    audio_out, transcript, user_text = [], "", ""
    t_stop = t_first = None
    async with oa.realtime.connect(model="rtmedia-voice") as conn:
        await conn.session.update(session=voice_session(
            instructions="Answer in one short sentence."))
        sent = False
        async for event in conn:
            if event.type == "session.updated" and not sent:
                sent = True
                pcm = float_to_pcm16(np.concatenate([question, np.zeros(24000, np.float32)]))
                for i in range(0, pcm.size, 4800):  # 200 ms appends
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[i:i + 4800].tobytes()).decode())
            elif event.type == "input_audio_buffer.speech_stopped":
                t_stop = time.monotonic()
            elif event.type == "conversation.item.input_audio_transcription.completed":
                user_text = event.transcript
            elif event.type == "response.output_audio.delta":
                t_first = t_first or time.monotonic()
                audio_out.append(np.frombuffer(base64.b64decode(event.delta), "<i2"))
            elif event.type == "response.output_audio_transcript.delta":
                transcript += event.delta
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                assert event.response.status == "completed"
                break
    assert word_error_rate("What colour is the sky on a sunny day?", user_text) <= 0.5
    assert t_stop is not None and t_first is not None and t_first > t_stop
    reply = np.concatenate(audio_out)
    assert reply.size > 24000 * 0.5  # at least half a second of speech
    # the turn's latencies reached the metrics, whichever way the turn ended
    for stage, count in before.items():
        assert turn_count(stage) == count + 1, stage
    heard = await transcribe_pcm(triton.grpc_url, reply)
    assert len(words(heard)) >= 2, heard
    overlap = set(words(heard)) & set(words(transcript))
    assert len(overlap) >= max(1, len(set(words(transcript))) // 3), (heard, transcript)


async def test_text_item_and_manual_response(media_server):
    client = await connect(media_server)
    try:
        await client.update({"type": "realtime", "output_modalities": ["text"],
                             "audio": {"input": {"turn_detection": None}}})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}]}})
        assert (await client.wait_for("conversation.item.added")).type != "connection.closed"
        await client.send({"type": "response.create"})
        events = await collect_until(client, "response.done")
    finally:
        await client.close()
    assert any(e.type == "response.output_text.delta" for e in events)
    assert not any(e.type == "response.output_audio.delta" for e in events)
    assert events[-1].data["response"]["status"] == "completed"


async def test_barge_in_cancels_the_reply(media_server):
    client = await connect(media_server)
    try:
        # seed 1 makes this model tell a 400-token story: the reply is still running
        await client.update(voice_session(
            instructions="Tell a long story of at least ten sentences about a dragon.",
            max_output_tokens=400, temperature=0.7, seed=1))
        q = np.concatenate([espeak_speech("Tell me a long story please.", rate=24000),
                            np.zeros(12000, np.float32)])
        await client.stream_audio(q, 24000, pace=0)
        sender = asyncio.create_task(
            client.stream_audio(np.zeros(24000 * 3, np.float32), 24000, pace=1.0))
        events = []
        async for ev in client.iter_events():
            events.append(ev)
            if ev.type == "response.output_audio.delta":
                break
        rid = events[-1].data["response_id"]
        sender.cancel()
        interrupt = np.concatenate([espeak_speech("Stop, wait a moment.", rate=24000),
                                    np.zeros(24000, np.float32)])
        t_interrupt = time.monotonic()
        sender = asyncio.create_task(client.stream_audio(interrupt, 24000, pace=1.0))
        async for ev in client.iter_events():
            events.append(ev)
            if ev.type == "response.done" and ev.data["response"]["id"] == rid:
                break
        await asyncio.sleep(0.3)
        while not client.events.empty():
            events.append(client.events.get_nowait())
        sender.cancel()
    finally:
        await client.close()
    done = next(e for e in events if e.type == "response.done"
                and e.data["response"]["id"] == rid)
    first_audio = next(e for e in events if e.type == "response.output_audio.delta")
    # the interruption: the user's speech that started while the reply was playing
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"
               and first_audio.t <= e.t <= done.t][-1]
    assert done.data["response"]["status"] == "cancelled", done.data
    assert done.data["response"]["status_details"]["reason"] == "turn_detected"
    assert done.t >= started.t
    # speech onset (the first interrupting audio sent) -> reply cancelled
    assert done.t - t_interrupt < 0.5, done.t - t_interrupt
    late_audio = [e for e in events if e.type == "response.output_audio.delta"
                  and e.data["response_id"] == rid and e.t > done.t]
    assert not late_audio


async def test_disconnect_mid_reply_leaves_nothing_running(media_server, triton):
    router = media_server.app[ROUTER]
    client = await connect(media_server)
    await client.update(voice_session(instructions="Tell a very long story about a ship.",
                                      max_output_tokens=600))
    q = np.concatenate([espeak_speech("Tell me a story.", rate=24000),
                        np.zeros(24000, np.float32)])
    await client.stream_audio(q, 24000, pace=0)
    await client.stream_audio(np.zeros(12000, np.float32), 24000, pace=4.0)
    ev = await client.wait_for("response.output_audio.delta", timeout=30)
    assert ev.type == "response.output_audio.delta"
    client.ws.transport.abort()  # the client vanishes: no close handshake
    await client.close()
    for _ in range(50):
        if not media_server.app[SESSIONS] and router.open_streams() == 0:
            break
        await asyncio.sleep(0.05)
    assert not media_server.app[SESSIONS]
    assert router.open_streams() == 0
    # The LLM instance is free at once (a still-running generation would hold it).
    c = TritonClient(triton.grpc_url)
    t0 = time.monotonic()
    async for _tok in chat(c, [{"role": "user", "content": "Hi"}], max_tokens=2):
        break
    await c.close()
    assert time.monotonic() - t0 < 1.0


BAD_INPUTS = [
    ("not json at all", "invalid_json"),
    (json.dumps({"no": "type"}), "invalid_event"),
    (json.dumps({"type": "session.frobnicate"}), "unknown_event"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
     "invalid_base64"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc")
                 .decode()}), "invalid_audio"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 44100}}}}}), "unsupported_sample_rate"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcmu"}}}}}), "unsupported_audio_format"),
    (json.dumps({"type": "input_audio_buffer.append",
                 "audio": "A" * (1 << 20)}), "message_too_large"),
    (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
]


async def test_bad_input_gets_error_events_and_the_session_goes_on(media_server):
    client = await connect(media_server)
    try:
        # audio before session.update: one clear error, and the audio is still used
        await client.append(np.zeros(480, np.int16))
        ev = await client.wait_for("error")
        assert ev.data["error"]["code"] == "session_not_configured"
        for raw, code in BAD_INPUTS:
            await client.ws.send(raw)
            ev = await client.wait_for("error")
            assert ev.data["error"]["code"] == code, (raw[:60], ev.data)
        # the session still works: a valid update is accepted with the old rate intact
        session = await client.update(voice_session(rate=16000))
        assert session["audio"]["input"]["format"]["rate"] == 16000
        # a flood of messages is rate limited, not fatal
        flood = json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(b"\0\0" * 160).decode()})
        for _ in range(600):
            await client.ws.send(flood)
        ev = await client.wait_for("error")
        assert ev.data["error"]["code"] == "rate_limited"
        await asyncio.sleep(1.0)  # the bucket refills
        while not client.events.empty():
            assert client.events.get_nowait().type != "connection.closed"
        session = await client.update(voice_session(rate=24000))
        assert session["audio"]["input"]["format"]["rate"] == 24000
    finally:
        await client.close()


async def test_session_limit_refuses_the_next_one_cleanly(media_server):
    limit = media_server.settings.max_sessions
    clients = [await connect(media_server) for _ in range(limit)]
    try:
        async with websockets.connect(media_server.url) as ws:
            refused = json.loads(await ws.recv())
            assert refused["type"] == "error" and refused["error"]["code"] == "session_limit"
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1013
        # the existing sessions are unharmed
        session = await clients[0].update(voice_session())
        assert session["type"] == "realtime"
    finally:
        for c in clients:
            await c.close()


async def test_a_pause_inside_the_turn_does_not_end_it(media_server):
    """The agent starts thinking on a 120 ms pause, but a user who goes on talking gets
    one transcript of the whole turn and one reply, with no trace of the guess."""
    client = await connect(media_server)
    try:
        await client.update(voice_session(instructions="Answer in one short sentence."))
        first = espeak_speech("Hello there.", rate=24000)
        second = espeak_speech("Please tell me the time in London.", rate=24000)
        # espeak ends each phrase with ~350 ms of silence: trim to leave a 250 ms pause
        pause = np.zeros(int(0.25 * 24000), np.float32)
        last = np.nonzero(np.abs(first) > 0.02)[0][-1]
        audio = np.concatenate([first[:last], pause, second, np.zeros(24000, np.float32)])
        sender = asyncio.create_task(client.stream_audio(audio, 24000, pace=1.0))
        events = await collect_until(client, "response.done", timeout=40)
        await sender
        await asyncio.sleep(0.5)
        while not client.events.empty():
            events.append(client.events.get_nowait())
    finally:
        await client.close()
    types = [e.type for e in events]
    assert "error" not in types and not any(t.endswith("transcription.failed") for t in types)
    assert types.count("conversation.item.input_audio_transcription.completed") == 1
    assert types.count("response.created") == 1 and types.count("response.done") == 1
    completed = next(e for e in events if e.type.endswith("transcription.completed"))
    assert word_error_rate("Hello there. Please tell me the time in London.",
                           completed.data["transcript"]) <= 0.4, completed.data
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    done = next(e for e in events if e.type == "response.done")
    assert done.data["response"]["status"] == "completed"


async def test_beta_clients_get_beta_event_names(media_server):
    client = RealtimeClient(media_server.url)
    await client.connect(headers={"OpenAI-Beta": "realtime=v1"})
    try:
        await client.wait_for("session.created")
        await client.update({"modalities": ["text"], "turn_detection": None,
                             "input_audio_format": "pcm16"})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hi."}]}})
        await client.send({"type": "response.create"})
        events = await collect_until(client, "response.done")
    finally:
        await client.close()
    types = {e.type for e in events}
    assert "conversation.item.created" in types and "response.text.delta" in types
    assert "response.output_text.delta" not in types


async def test_caption_command_line(media_server, tmp_path):
    import sys

    from pipelines.audio import write_wav

    wav = tmp_path / "speech.wav"
    write_wav(wav, espeak_speech(CAPTION), 16000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streaming.cli", "caption", str(wav), "--url", media_server.url,
        "--fast", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    last = out.decode().strip().splitlines()[-1].split("\r")[-1].replace("\x1b[K", "")
    assert word_error_rate(CAPTION, last) <= 0.35, out.decode()


async def test_captions_span_a_short_pause(media_server):
    """Captions also finish early on a pause; speech that goes on continues the line."""
    client = await connect(media_server, transcription=True)
    try:
        await client.update({"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        # a long first sentence: its speculative final is still being decoded when
        # the speech resumes
        first = espeak_speech("Good morning everyone, and welcome to the weekly planning "
                              "meeting of the product team.")
        second = espeak_speech("Let us begin the weekly meeting.")
        last = np.nonzero(np.abs(first) > 0.02)[0][-1]
        audio = np.concatenate([first[:last], np.zeros(4800, np.float32), second, SILENCE])
        sender = asyncio.create_task(client.stream_audio(audio, 16000, pace=1.0))
        events = await collect_until(
            client, "conversation.item.input_audio_transcription.completed")
        await sender
    finally:
        await client.close()
    assert not any(e.type == "error" or e.type.endswith("failed") for e in events), events
    final = events[-1].data["transcript"]
    assert word_error_rate("Good morning everyone, and welcome to the weekly planning "
                           "meeting of the product team. Let us begin the weekly meeting.",
                           final) <= 0.35, final
