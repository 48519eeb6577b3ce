"""POST /v1/chat/completions against the real tritonservers (realtime + heavy), with the
openai SDK: images to the multimodal model, a video to the video model (frames and the
stt model's transcript), text-only chats to the agent LLM; streaming as SSE; the API
key; busy, loading and bad requests."""

from __future__ import annotations

import asyncio
import base64
import io
from fractions import Fraction
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest

from bench.stack import free_port
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from pipelines.triton_client import TritonClient
from pipelines.video_clip import decode_clip, transcribe_clip

pytestmark = pytest.mark.triton
KEY = "sk-chat-test-0123456789"
SPOKEN = "Welcome to the kitchen. Today we bake bread."


def png_url(color=(200, 30, 30), size=(96, 64)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_clip(path, seconds: float = 4.0) -> None:
    """An MPEG-4 clip: frames changing colour every second and espeak speech (AAC)."""
    import av

    speech = espeak_speech(SPOKEN)  # 16 kHz float32
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(int(seconds * 10)):
            img = np.full((48, 64, 3), (i // 10) * 60 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        pcm = (np.clip(speech, -1, 1) * 32767).astype(np.int16)
        for i in range(0, pcm.size, 1024):
            block = pcm[i:i + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, i
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


@pytest.fixture(scope="module")
async def door(triton, heavy_triton, heavy_store, triton_settings, tmp_path_factory):
    from aiohttp import web

    from streaming.server import create_app

    videos = tmp_path_factory.mktemp("videos")
    write_clip(videos / "clip.mp4")
    settings = triton_settings.replace(
        port=free_port(), triton_url=triton.grpc_url, api_key=KEY,
        triton_urls={"multimodal": heavy_triton.grpc_url, "video": heavy_triton.grpc_url},
        video_dirs=(str(videos),), heavy_max_queue=0,
        heavy_idle_unload_s=0.0)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    yield SimpleNamespace(app=app, http=f"http://127.0.0.1:{settings.port}", videos=videos,
                          heavy=heavy_triton)
    await runner.cleanup()


@pytest.fixture
def openai_client(door):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=door.http + "/v1", api_key=KEY, max_retries=0)


def image_question(color=(200, 30, 30)) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "What does this sign say?"},
        {"type": "image_url", "image_url": {"url": png_url(color)}}]}]


async def test_image_non_stream_with_the_openai_sdk(openai_client):
    resp = await openai_client.chat.completions.create(
        model="rtmedia", messages=image_question(), max_tokens=8)
    assert resp.model == "rtmedia"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= resp.usage.completion_tokens <= 8


async def test_image_stream_with_the_openai_sdk(openai_client):
    stream = await openai_client.chat.completions.create(
        model="vlm", messages=image_question((0, 0, 255)), max_tokens=10, stream=True)
    deltas, reasons = [], []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        deltas.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert sum(bool(d) for d in deltas) >= 2  # streamed piece by piece
    assert reasons[-1] in ("stop", "length") and not any(reasons[:-1])


async def test_text_only_goes_to_the_llm(openai_client):
    resp = await openai_client.chat.completions.create(
        model="rtmedia", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12,
        temperature=0)
    assert resp.choices[0].message.content.strip()
    stream = await openai_client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
        stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.strip()


async def test_video_file_and_frames_stream_text(openai_client, door):
    stream = await openai_client.chat.completions.create(
        model="rtmedia", max_tokens=8, stream=True, messages=[{"role": "user", "content": [
            {"type": "video_url",
             "video_url": {"url": f"file://{door.videos / 'clip.mp4'}"}},
            {"type": "text", "text": "What happens in this clip?"}]}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text
    frames = {"frames": [png_url((i * 80, 0, 0)) for i in range(3)],
              "timestamps": [0, 1.5, 3], "transcript": "we bake bread"}
    resp = await openai_client.chat.completions.create(
        model="rtmedia", max_tokens=6, messages=[{"role": "user", "content": [
            {"type": "video_frames", "video_frames": frames},
            {"type": "text", "text": "What is baked?"}]}])
    assert resp.model == "rtmedia" and resp.choices[0].message.content


async def test_clip_frames_timestamps_and_transcript(door, triton):
    clip = decode_clip(str(door.videos / "clip.mp4"), max_frames=4)
    assert len(clip.frames) == 4 and clip.frames[0][:2] == b"\xff\xd8"  # JPEG
    assert clip.timestamps == sorted(clip.timestamps) and clip.timestamps[0] == 0.0
    assert clip.timestamps[-1] >= 2.0
    client = TritonClient(triton.grpc_url)
    try:
        transcript = await transcribe_clip(client, clip.audio)
    finally:
        await client.close()
    assert word_error_rate(SPOKEN, transcript) <= 0.4, transcript


@pytest.mark.parametrize("body,status,fragment", [
    ({"messages": []}, 400, "non-empty"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
     400, "data: URLs"),
    ({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///etc/passwd"}}]}]},
     400, "RTMEDIA_VIDEO_DIRS"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     400, "image 0 is not"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999}, 400,
     "max_tokens"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "role"),
])
async def test_bad_requests(door, body, status, fragment):
    async with aiohttp.ClientSession() as http, http.post(
            door.http + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {KEY}"}) as r:
        data = await r.json()
        assert r.status == status, data
        assert fragment in data["error"]["message"]


async def test_needs_the_api_key(door):
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/chat/completions", "/v1/models/vlm/load"):
            async with http.post(door.http + path, json={}) as r:
                assert r.status == 401
        async with http.get(door.http + "/v1/models") as r:
            assert r.status == 401


async def test_loading_comment_then_tokens_and_busy_under_the_cap(door):
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(door.http + "/v1/models/vlm/unload") as r:
            assert r.status == 200 and (await r.json())["state"] == "unloaded"
        body = {"model": "vlm", "stream": True, "max_tokens": 200,
                "messages": image_question()}
        async with http.post(door.http + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            lines = []
            async for raw in r.content:
                lines.append(raw.decode().strip())
                if lines[-1].startswith("data: {") and '"content": "' in lines[-1] \
                        and '"content": ""' not in lines[-1]:
                    break  # the first token: the model is loaded and generating
            assert lines[0] == ": loading vlm", lines[:3]
            # the cap is one request per model and no queue: a second one is busy now
            async with http.post(door.http + "/v1/chat/completions",
                                 json={**body, "stream": False}) as busy:
                assert busy.status == 429
                assert busy.headers["Retry-After"] == "1"
                assert (await busy.json())["error"]["code"] == "busy"
        await asyncio.sleep(0.3)  # the cancelled request's slot is given back
        async with http.get(door.http + "/v1/models") as r:
            states = {m["id"]: m for m in (await r.json())["data"]}
            assert states["vlm"]["state"] == "ready" and states["vlm"]["running"] == 0
        async with http.get(door.http + "/metrics") as r:
            text = await r.text()
            assert 'rtmedia_model_load_seconds_count{model="vlm"}' in text
            assert 'rtmedia_heavy_requests_busy_total{model="vlm"}' in text


async def model_successes(http_url: str, name: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            f"{http_url}/v2/models/{name}/stats") as r:
        stats = (await r.json()).get("model_stats", [])  # none while unloaded
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


async def test_realtime_image_turn_goes_to_the_multimodal_model_and_is_spoken(door):
    from streaming.client import RealtimeClient

    url = door.http.replace("http://", "ws://") + "/v1/realtime"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http, \
            http.post(door.http + "/v1/models/vlm/unload") as r:
        assert r.status == 200  # the turn must wait for it to load
    before_vlm = await model_successes(door.heavy.http_url, "vlm")
    client = await RealtimeClient(url).connect(headers={"Authorization": f"Bearer {KEY}"})
    try:
        assert (await client.wait_for("session.created")).type == "session.created"
        await client.update({"type": "realtime", "max_output_tokens": 12,
                             "audio": {"input": {"turn_detection": None}}})
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": png_url((0, 120, 255))},
                {"type": "input_text", "text": "What am I holding?"}]}})
        added = await client.wait_for("conversation.item.added")
        assert [p["type"] for p in added.data["item"]["content"]] == [
            "input_image", "input_text"]
        await client.send({"type": "response.create"})
        events = []
        async for ev in client.iter_events(timeout=60):
            events.append(ev)
            if ev.type in ("response.done", "connection.closed"):
                break
        # a text-only turn after it stays on the LLM
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Thanks."}]}})
        await client.wait_for("conversation.item.added")
        between = await model_successes(door.heavy.http_url, "vlm")
        await client.send({"type": "response.create"})
        async for ev in client.iter_events(timeout=60):
            if ev.type in ("response.done", "connection.closed"):
                break
        # a bad image is refused at the protocol edge
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": "https://example.com/x.png"}]}})
        error = await client.wait_for("error")
    finally:
        await client.close()
    assert events[-1].type == "response.done", [e.type for e in events][-5:]
    assert events[-1].data["response"]["status"] == "completed", events[-1].data
    assert any(e.type == "response.output_audio.delta" for e in events)
    types = [e.type for e in events]
    assert "rtmedia.model.loading" in types  # told, then answered
    assert types.index("rtmedia.model.loading") < types.index("response.output_audio.delta")
    assert between == before_vlm + 1  # the image turn was answered by the vlm model
    assert await model_successes(door.heavy.http_url, "vlm") == between
    assert error.data["error"]["code"] == "invalid_image"


async def test_webrtc_camera_turn_is_answered_by_the_multimodal_model(door):
    """A question spoken while the camera (a WebRTC video track) shows something goes to
    the multimodal model with the camera's latest frame; the reply is heard."""
    from streaming.rtc_client import ArrayMicrophone, ColorCamera, RtcCall

    before = await model_successes(door.heavy.http_url, "vlm")
    speech = espeak_speech("What am I holding?", rate=48000)
    mic = ArrayMicrophone(np.concatenate([np.zeros(24000, np.float32), speech]))
    call = await RtcCall(door.http, mic, api_key=KEY, camera=ColorCamera((250, 40, 40)),
                         session={"type": "realtime", "max_output_tokens": 12,
                                  "audio": {"input": {"turn_detection":
                                                      {"type": "server_vad"}}}}).start()
    try:
        for _ in range(600):
            if call.rec.first("response.done"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        await call.close()
    done = next((e for _, e in call.rec.events if e["type"] == "response.done"), None)
    assert done is not None, "no response.done; events: " + ", ".join(
        f"{t:.2f} {e['type']}" for t, e in call.rec.events)
    assert done["response"]["status"] == "completed", done
    assert await model_successes(door.heavy.http_url, "vlm") == before + 1
    stopped = call.rec.first("input_audio_buffer.speech_stopped")
    assert any(level > 0.02 for t, level in call.rec.audio_levels if t > stopped)


async def test_realtime_image_turn_is_refused_as_busy_at_the_cap(door):
    """The cap is one request per heavy model, no queue: while a chat completion holds
    vlm, a Realtime image turn fails at once with error code busy (no waiting)."""
    from streaming.client import RealtimeClient

    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "vlm", "stream": True, "max_tokens": 400, "messages": image_question()}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(
            door.http + "/v1/chat/completions", json=body) as held:
        async for raw in held.content:  # until the first token: vlm is busy with it
            if b'"content": "' in raw and b'"content": ""' not in raw:
                break
        url = door.http.replace("http://", "ws://") + "/v1/realtime"
        client = await RealtimeClient(url).connect(headers=headers)
        try:
            await client.wait_for("session.created")
            await client.update({"type": "realtime", "output_modalities": ["text"],
                                 "audio": {"input": {"turn_detection": None}}})
            await client.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [
                    {"type": "input_image", "image_url": png_url()},
                    {"type": "input_text", "text": "What is it?"}]}})
            await client.wait_for("conversation.item.added")
            await client.send({"type": "response.create"})
            error = await client.wait_for("error")
            done = await client.wait_for("response.done")
        finally:
            await client.close()
    assert error.data["error"]["code"] == "busy", error.data
    assert done.data["response"]["status"] == "failed"


async def test_text_requests_are_capped_too(door):
    """Text-only chats go to the agent LLM, which voice turns share: the same per-replica
    cap applies (one running, no queue in this server): the second is busy."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"stream": True, "max_tokens": 400, "messages": [
        {"role": "user", "content": "Count from one to one thousand, one number a line."}]}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(door.http + "/v1/chat/completions", json=body) as held:
            async for raw in held.content:
                if b'"content": "' in raw and b'"content": ""' not in raw:
                    break
            async with http.post(door.http + "/v1/chat/completions",
                                 json={**body, "stream": False}) as busy:
                assert busy.status == 429, await busy.text()
