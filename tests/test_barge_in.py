"""Barge-in while the reply is *playing*, on both transports, on the real models.

The reply is generated much faster than it plays; speech 2 s into playback must
stop the audio (within 150 ms of the speech_started event) and leave only the
heard words of the reply in the conversation history.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipelines.speech import espeak_speech
from streaming.client import RealtimeClient
from streaming.rtc_client import ArrayMicrophone, RtcCall
from streaming.server import SESSIONS

pytestmark = pytest.mark.triton

STORY = ("Tell a long story of at least ten sentences about a dragon who lives by the sea.")
INTERRUPT = "Stop please, wait a moment, I have another question."


def session_of(server, kind=None):
    sessions = list(server.app[SESSIONS])
    assert len(sessions) == 1
    return sessions[0].session if hasattr(sessions[0], "session") else sessions[0]


async def test_websocket_barge_in_during_playout(media_server):
    client = await RealtimeClient(media_server.url).connect()
    events = []

    async def collect(until: float) -> None:
        with_timeout = max(0.0, until - time.monotonic())
        try:
            async with asyncio.timeout(with_timeout):
                while True:
                    events.append(await client.events.get())
        except TimeoutError:
            pass

    try:
        await client.update({"type": "realtime", "instructions": STORY, "seed": 1,
                             "max_output_tokens": 200, "audio": {"input": {
                                 "format": {"type": "audio/pcm", "rate": 24000},
                                 "turn_detection": {"type": "server_vad",
                                                    "create_response": True}}}})
        question = np.concatenate([espeak_speech("Tell me a story please.", rate=24000),
                                   np.zeros(12000, np.float32)])
        await client.stream_audio(question, 24000, pace=0)
        silence = asyncio.create_task(
            client.stream_audio(np.zeros(24000 * 60, np.float32), 24000, pace=1.0))
        first = await client.wait_for("response.output_audio.delta", timeout=60)
        events.append(first)
        rid = first.data["response_id"]
        await collect(first.t + 2.0)  # 2 s of the reply plays
        silence.cancel()
        speech = np.concatenate([espeak_speech(INTERRUPT, rate=24000),
                                 np.zeros(24000 * 2, np.float32)])
        sender = asyncio.create_task(client.stream_audio(speech, 24000, pace=1.0))
        await collect(time.monotonic() + 2.5)
        sender.cancel()
        server_session = session_of(media_server)
        history = [(i.id, i.role, i.text) for i in server_session.agent.conversation.items]
    finally:
        await client.close()

    started = next(e for e in events if e.type == "input_audio_buffer.speech_started"
                   and e.t > first.t)
    audio = [e for e in events if e.type == "response.output_audio.delta"
             and e.data["response_id"] == rid]
    late = [e.t - started.t for e in audio if e.t > started.t]
    assert not late or max(late) <= 0.15, late
    done = next(e for e in events if e.type == "response.done"
                and e.data["response"]["id"] == rid)
    truncated = next(e for e in events if e.type == "conversation.item.truncated")
    order = [e.type for e in events]
    assert order.index("input_audio_buffer.speech_started") < \
        order.index("conversation.item.truncated")
    heard_ms = truncated.data["audio_end_ms"]
    # paced: what the client was sent by the interruption is what it played plus <= 0.7 s
    sent_s = sum(len(e.data["delta"]) * 3 / 4 / 2 for e in audio if e.t <= started.t) / 24000
    print(f"\nWS barge-in: speech_started {started.t - first.t:.2f} s into the reply; "
          f"heard {heard_ms} ms, sent {sent_s:.2f} s; last delta after speech_started: "
          f"{max(late) * 1000 if late else 0:.0f} ms; status {done.data['response']['status']}")
    # heard: what was sent, less what the client still had buffered (at most the 0.5 s
    # lead + one 0.2 s delta); on a busy CPU generation may lag playback (sent < 2 s)
    assert heard_ms / 1000 <= sent_s + 0.01
    assert heard_ms / 1000 >= min(sent_s, started.t - first.t) - 0.75, (heard_ms, sent_s)
    item = next(h for h in history if h[0] == truncated.data["item_id"])
    full = done.data["response"]["output"][0]["content"][0]["transcript"]
    assert item[1] == "assistant" and item[2] and full.startswith(item[2])
    if sent_s - heard_ms / 1000 > 0.5:  # audio was sent that was never heard
        assert len(item[2]) < len(full)


async def test_webrtc_barge_in_during_playout(media_server):
    speech = espeak_speech("Tell me a story please.", rate=48000)
    mic = ArrayMicrophone(np.concatenate([np.zeros(24000, np.float32), speech]))
    call = await RtcCall(media_server.http, mic, session={
        "type": "realtime", "instructions": STORY, "seed": 1, "max_output_tokens": 80,
        "audio": {"input": {"turn_detection": {"type": "server_vad",
                                               "create_response": False}}}}).start()
    try:
        # the question is answered by an explicit response.create once committed
        for _ in range(300):
            if call.rec.first("input_audio_buffer.committed"):
                break
            await asyncio.sleep(0.05)
        call.channel.send('{"type": "response.create"}')
        loud_at = None
        for _ in range(600):
            stopped = call.rec.first("input_audio_buffer.committed") or 0.0
            loud = [t for t, level in call.rec.audio_levels if level > 0.02 and t > stopped]
            if loud:
                loud_at = loud[0]
                break
            await asyncio.sleep(0.05)
        assert loud_at is not None, "no reply audio"
        await asyncio.sleep(max(0.0, loud_at + 2.0 - time.monotonic()))
        generated = call.rec.first("response.done") is not None
        mic.say(espeak_speech(INTERRUPT, rate=48000))
        await asyncio.sleep(2.5)
        server_session = session_of(media_server)
        history = [(i.id, i.role, i.text) for i in server_session.agent.conversation.items]
    finally:
        await call.close()
    rec = call.rec
    started = rec.first("input_audio_buffer.speech_started", after=loud_at)
    assert started is not None
    after = [(t - started, level) for t, level in rec.audio_levels
             if 0.15 <= t - started <= 1.5]
    assert after and max(level for _, level in after) < 0.01, after[:10]
    loud_after = [t - started for t, level in rec.audio_levels
                  if level > 0.02 and t > started]
    cleared = rec.first("output_audio_buffer.cleared", after=loud_at)
    truncated = next(e for t, e in rec.events if e["type"] == "conversation.item.truncated")
    assert cleared is not None and cleared >= started
    print(f"\nWebRTC barge-in: reply generated before the speech: {generated}; last loud "
          f"audio {max(loud_after, default=0) * 1000:.0f} ms after speech_started; heard "
          f"{truncated['audio_end_ms']} ms")
    # heard <= what played before the speech (less when a busy CPU left gaps)
    assert 500 <= truncated["audio_end_ms"] <= (started - loud_at) * 1000 + 300
    item = next(h for h in history if h[0] == truncated["item_id"])
    assert item[1] == "assistant" and item[2]
