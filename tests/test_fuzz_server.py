"""Fuzzing the real server: bad messages on several connections while a healthy
session takes a voice turn; nothing leaks, nothing is logged as a crash."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import websockets

from pipelines.speech import espeak_speech
from streaming.client import RealtimeClient
from streaming.server import ROUTER, SESSIONS
from tests.fuzz import messages

pytestmark = pytest.mark.triton


async def fuzz_connection(url: str, seed: int, count: int) -> tuple[int, int]:
    """Send ``count`` fuzz messages; (bad messages sent, error events received)."""
    bad, errors = 0, 0
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        await ws.recv()  # session.created
        for raw, must, _ in messages(count, seed=seed):
            bad += bool(must)
            await ws.send(raw)
        # every bad message is answered; then the socket is still open
        await ws.send('{"type": "conversation.item.create", "event_id": "last", "item": '
                      '{"type": "message", "role": "user", "content": '
                      '[{"type": "input_text", "text": "still there?"}]}}')
        async with asyncio.timeout(30):
            while True:
                import json

                event = json.loads(await ws.recv())
                errors += event["type"] == "error"
                if event["type"] == "conversation.item.added" and \
                        event["item"]["content"][0]["text"] == "still there?":
                    break
    return bad, errors


async def test_fuzzing_three_connections_beside_a_healthy_turn(media_server, caplog):
    router = media_server.app[ROUTER]
    healthy = await RealtimeClient(media_server.url).connect()
    await healthy.wait_for("session.created")
    await healthy.update({"type": "realtime", "instructions": "Answer in one sentence.",
                          "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                              "turn_detection": {"type": "server_vad"}}}})
    question = np.concatenate([espeak_speech("What colour is the sky?", rate=24000),
                               np.zeros(24000, np.float32)])
    with caplog.at_level(logging.WARNING):
        fuzzers = [asyncio.create_task(fuzz_connection(media_server.url, seed, 350))
                   for seed in (1, 2, 3)]
        await healthy.stream_audio(question, 24000, pace=1.0)
        done = await healthy.wait_for("response.done", timeout=60)
        results = await asyncio.gather(*fuzzers)
    await healthy.close()
    assert done.data["response"]["status"] == "completed"
    for bad, errors in results:
        assert errors >= bad, (bad, errors)
    for _ in range(100):
        if not media_server.app[SESSIONS] and router.open_streams() == 0:
            break
        await asyncio.sleep(0.05)
    assert not media_server.app[SESSIONS] and router.open_streams() == 0
    crashes = [r for r in caplog.records if r.exc_info]
    assert not crashes, crashes[0].getMessage()
