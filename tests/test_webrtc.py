"""WebRTC end to end with an aiortc client: a spoken turn, reply audio and avatar video on
one timeline, and nothing left running when the peer goes away."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from pipelines.speech import espeak_speech
from streaming.rtc_client import ArrayMicrophone, RtcCall
from streaming.server import ROUTER, SESSIONS

pytestmark = pytest.mark.triton


def mouth_onset(samples: list[tuple[float, float]], after: float, level: float = 2.0) -> float:
    """When the mouth starts moving: the first of 3 changing frames out of 4 (a head
    motion step changes a single frame, speech keeps changing it)."""
    for i in range(len(samples) - 3):
        t = samples[i][0]
        if t > after and samples[i][1] > level and \
                sum(d > level for _, d in samples[i:i + 4]) >= 3:
            return t
    raise AssertionError("the mouth never moved")


async def test_bad_offer_is_refused(media_server):
    async with aiohttp.ClientSession() as http:
        async with http.post(media_server.http + "/v1/realtime/calls", data="hello",
                             headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_offer"
        async with http.post(media_server.http + "/v1/realtime/calls", json={"x": 1}) as r:
            assert r.status == 400


async def test_voice_turn_with_lip_synced_avatar(media_server):
    async with aiohttp.ClientSession() as http:
        async with http.get(media_server.http + "/v1/config") as r:
            mouth = (await r.json())["mouth"]
    speech = espeak_speech("What is the capital of France?", rate=48000)
    mic = ArrayMicrophone(np.concatenate([np.zeros(24000, np.float32), speech]))
    call = await RtcCall(media_server.http, mic, mouth_box=mouth, session={
        "type": "realtime", "instructions": "Answer in one short sentence.", "seed": 3,
        "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}).start()
    try:
        for _ in range(300):
            if call.rec.first("response.done"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # the reply plays out in real time after response.done
        assert media_server.app[SESSIONS]
    finally:
        await call.close()
    rec = call.rec
    stopped = rec.first("input_audio_buffer.speech_stopped")
    assert stopped is not None and rec.first("response.done") is not None
    loud = [t for t, level in rec.audio_levels if level > 0.02 and t > stopped]
    assert loud, "no reply audio arrived"
    # video at 25 fps (>= 20 over the call), paced by its clock
    span = rec.video_frames[-1] - rec.video_frames[0]
    assert len(rec.video_frames) / span >= 20
    # the mouth moves while the reply is heard and is still otherwise
    def heard(t: float) -> bool:
        return any(abs(t - a) < 0.06 for a in loud)
    speaking = [d for t, d in rec.mouth if heard(t)]
    before = [d for t, d in rec.mouth if t < stopped - 0.2]
    assert speaking and before
    assert np.median(speaking) > 3 * max(np.median(before), 0.1)
    # and it starts moving when the sound starts (not a second early or late)
    onset_audio = loud[0]
    onset_mouth = mouth_onset(rec.mouth, after=stopped)
    assert abs(onset_mouth - onset_audio) < 0.25, onset_mouth - onset_audio

    # The peer is gone: the session and its Triton streams are cleaned up.
    router = media_server.app[ROUTER]
    for _ in range(100):
        if not media_server.app[SESSIONS] and router.open_streams() == 0:
            break
        await asyncio.sleep(0.05)
    assert not media_server.app[SESSIONS]
    assert router.open_streams() == 0
