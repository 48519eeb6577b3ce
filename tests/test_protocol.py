"""Unit tier: the Realtime protocol session on scripted fakes (offline, fake clock)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np

from pipelines.audio import float_to_pcm16
from pipelines.turns import TurnDetector
from streaming.realtime import RealtimeSession
from tests.fakes import (
    FakeClock,
    FakeTrackSink,
    energy_classifier,
    fake_services,
    settle,
    silence,
    speech,
)

LONG_REPLY = ("Once upon a time a small dragon lived by the sea and every morning it "
              "counted the boats that sailed past its cave near the old lighthouse.")


class Harness:
    def __init__(self, *, media=None, reply: str = LONG_REPLY, **session) -> None:
        self.clock = FakeClock()
        self.services = fake_services(self.clock, reply=reply)
        self.events: list[dict] = []
        if media == "track":
            media = FakeTrackSink(self.clock, rate=48000)
        self.session = RealtimeSession(self._send, None, services=self.services,
                                       clock=self.clock, media=media, **session)
        agent = self.session.agent
        agent._vad_classifier = energy_classifier
        agent.turns = TurnDetector(agent.config.vad, energy_classifier)

    async def _send(self, event: dict) -> None:
        self.events.append(event)

    async def start(self) -> Harness:
        await self.session.start()
        await self.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm",
                                                               "rate": 16000}}}}})
        return self

    async def send(self, event: dict) -> None:
        await self.session.handle(json.dumps(event))
        await settle()

    async def talk(self, audio: np.ndarray) -> None:
        """Append 20 ms pieces at real time on the fake clock."""
        for i in range(0, audio.size, 320):
            pcm = float_to_pcm16(audio[i:i + 320]).tobytes()
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(pcm).decode()})
            await self.clock.advance(0.02)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def first(self, type_: str) -> dict:
        return next(e for e in self.events if e["type"] == type_)

    async def close(self) -> None:
        await self.session.close()


async def until(h: Harness, type_: str, limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if type_ in h.types():
            return
        await h.clock.advance(0.02)
    raise AssertionError(f"no {type_} in {h.types()}")


async def test_websocket_barge_in_event_order_and_truncation():
    h = await Harness().start()
    await h.talk(np.concatenate([speech(1.0), silence(0.5)]))
    await until(h, "response.output_audio.delta")
    await h.clock.advance(2.0)
    mark = len(h.events)
    await h.talk(speech(0.2))
    later = h.types()[mark:]
    assert later.index("input_audio_buffer.speech_started") < later.index("response.done") \
        < later.index("conversation.item.truncated")
    cut = later.index("input_audio_buffer.speech_started")
    assert "response.output_audio.delta" not in later[cut:]
    assert "output_audio_buffer.cleared" not in later  # a WebRTC-only event
    done = next(e for e in h.events[mark:] if e["type"] == "response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    truncated = h.first("conversation.item.truncated")
    assert 1800 <= truncated["audio_end_ms"] <= 2600
    item = h.session.agent.conversation.get(truncated["item_id"])
    assert LONG_REPLY.startswith(item.text) and 4 <= len(item.text.split()) <= 9
    await h.close()


async def test_client_clear_on_webrtc_stops_audio_after_generation():
    h = await Harness(media="track").start()
    await h.talk(np.concatenate([speech(1.0), silence(0.5)]))
    await until(h, "response.done")  # generation over: the track holds ~8 s of audio
    await h.clock.advance(1.0)
    assert h.session.agent.speaking
    mark = len(h.events)
    await h.send({"type": "output_audio_buffer.clear"})
    assert h.types()[mark:] == ["output_audio_buffer.cleared", "conversation.item.truncated"]
    assert not h.session.agent.speaking and h.session.media.cleared
    await h.close()


async def test_truncate_from_the_client():
    h = await Harness(reply="Sure. The answer is forty two.").start()
    await h.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text",
                                                         "text": "What is it?"}]}})
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    item_id = h.first("response.done")["response"]["output"][0]["id"]
    await h.send({"type": "conversation.item.truncate", "item_id": "item_nope",
                  "content_index": 0, "audio_end_ms": 10})
    await h.send({"type": "conversation.item.truncate", "item_id": item_id,
                  "content_index": 0, "audio_end_ms": -5})
    await h.send({"type": "conversation.item.truncate", "item_id": item_id,
                  "content_index": 0, "audio_end_ms": 900})
    codes = [e["error"]["code"] for e in h.events if e["type"] == "error"]
    assert codes == ["item_not_found", "invalid_audio_end_ms"]
    assert h.types()[-1] == "conversation.item.truncated"
    assert h.session.agent.conversation.get(item_id).text == "Sure. The answer"
    # the next reply reads the truncated history
    await h.send({"type": "response.create"})
    await until(h, "response.created")
    assert {"role": "assistant", "content": "Sure. The answer"} in h.services.llm.requests[-1]
    await h.close()


async def test_failure_inside_a_reply_is_reported_as_failed():
    h = await Harness(reply="Sure. The answer is forty two.").start()
    h.services.tts.fail_on = "answer"
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    done = h.first("response.done")["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["error"]["message"].startswith("internal error")
    assert h.first("error")["error"]["code"] == "response_failed"
    await h.close()


async def test_text_only_replies_do_not_synthesize():
    h = await Harness(reply="Sure. The answer is forty two.").start()
    await h.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    assert "response.output_text.delta" in h.types()
    assert "response.output_audio.delta" not in h.types()
    assert h.services.tts.texts == []
    await h.close()


async def test_a_bug_in_a_handler_gets_an_error_and_the_session_goes_on(monkeypatch):
    h = await Harness().start()

    async def broken(event):
        raise KeyError("boom")

    monkeypatch.setitem(h.session.__dict__, "_commit", broken)
    await h.send({"type": "input_audio_buffer.commit"})
    assert h.events[-1]["type"] == "error"
    assert h.events[-1]["error"]["code"] == "server_error"
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    await h.close()


async def test_webrtc_data_channel_events_are_handled_in_order(monkeypatch):
    """A slow event must not be overtaken by the next one (one task per message did)."""
    from pipelines.avatar import Annotation, Avatar, Box
    from streaming.webrtc import WebRTCSession

    face = Annotation(Box(128, 128, 100, 120), (Box(105, 110, 20, 10), Box(150, 110, 20, 10)),
                      Box(128, 170, 40, 16))
    avatar = Avatar(np.full((256, 256, 3), 128, np.uint8), face)
    rtc = WebRTCSession(None, avatar, "test", services=fake_services(FakeClock()))
    order: list[str] = []

    async def handle(message: str) -> None:
        order.append("start " + message)
        if message == "slow":
            await asyncio.sleep(0.05)
        order.append("end " + message)

    monkeypatch.setattr(rtc.session, "handle", handle)

    class Channel:
        readyState = "open"

        def __init__(self) -> None:
            self.handlers = {}

        def on(self, name):
            def register(fn):
                self.handlers[name] = fn
                return fn
            return register

        def send(self, data) -> None:
            pass

    channel = Channel()
    rtc._on_datachannel(channel)
    rtc._spawn(rtc._handle_events())
    channel.handlers["message"]("slow")
    channel.handlers["message"]("fast")
    await asyncio.sleep(0.2)
    assert order == ["start slow", "end slow", "start fast", "end fast"]
    await rtc.close()
