"""Idle sessions, and a Triton that is down or restarts under a live session."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from aiohttp import web

from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from streaming.client import RealtimeClient
from streaming.server import create_app
from streaming.triton_server import TritonServer
from tests.conftest import free_port

pytestmark = pytest.mark.triton


@contextlib.asynccontextmanager
async def serve(settings):
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    try:
        yield f"ws://127.0.0.1:{settings.port}/v1/realtime"
    finally:
        await runner.cleanup()


async def caption(client: RealtimeClient, text: str) -> dict:
    audio = np.concatenate([espeak_speech(text), np.zeros(12000, np.float32)])
    await client.stream_audio(audio, 16000, pace=0)
    await client.stream_audio(np.zeros(16000, np.float32), 16000, pace=4.0)
    ev = await client.wait_for("conversation.item.input_audio_transcription.completed",
                               "error", timeout=30)
    return ev.data


CAPTIONS = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 16000},
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}


async def test_idle_session_is_closed_with_an_error(triton_settings, triton):
    settings = triton_settings.replace(port=free_port(), triton_url=triton.grpc_url,
                                       idle_timeout_s=0.5)
    async with serve(settings) as url:
        client = await RealtimeClient(url).connect()
        await client.wait_for("session.created")
        ev = await client.wait_for("error", timeout=5)
        assert ev.data["error"]["code"] == "idle_timeout"
        assert (await client.wait_for("never", timeout=5)).type == "connection.closed"
        await client.close()


async def test_triton_down_then_restarted(triton_settings, tmp_path):
    """Triton unreachable: a clear error and the session goes on; when it is back, the
    same session transcribes again (the gRPC channel reconnects by itself)."""
    own = triton_settings.replace(
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), state_dir=tmp_path)
    server = TritonServer(own, models=["whisper"], log_path=tmp_path / "triton.log")
    settings = own.replace(port=free_port(), triton_url=server.grpc_url)
    async with serve(settings) as url:
        client = await RealtimeClient(url).connect(transcription=True)
        try:
            await client.wait_for("session.created")
            await client.update(CAPTIONS)
            down = await caption(client, "Is anybody there?")
            assert down["type"] == "error"
            assert down["error"]["code"] == "transcription_failed"
            assert "unavailable" in down["error"]["message"].lower()

            await asyncio.to_thread(server.start, wait_s=120)
            await asyncio.sleep(2.5)  # the longest reconnect backoff of the channel
            up = await caption(client, "Good evening and welcome back.")
            assert up["type"].endswith("transcription.completed"), up
            assert word_error_rate("Good evening and welcome back.", up["transcript"]) <= 0.4

            # Triton goes away in the middle of an utterance.
            audio = espeak_speech("This sentence will never be finished by the server.")
            await client.stream_audio(audio[: audio.size // 2], 16000, pace=0)
            await asyncio.to_thread(server.stop)
            await client.stream_audio(audio[audio.size // 2:], 16000, pace=0)
            await client.stream_audio(np.zeros(16000, np.float32), 16000, pace=4.0)
            ev = await client.wait_for("error", timeout=30)
            assert ev.data["error"]["code"] == "transcription_failed"
            # the session is still alive and answers protocol messages
            session = await client.update(CAPTIONS)
            assert session["type"] == "transcription"
        finally:
            await client.close()
            server.stop()
