"""A small Realtime-protocol client (websockets) for the CLI, the benchmarks and tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import websockets

from pipelines.audio import float_to_pcm16, pcm16_to_float, read_wav, resample


@dataclass
class Event:
    data: dict
    t: float  # monotonic receive time

    @property
    def type(self) -> str:
        return self.data.get("type", "")


@dataclass
class RealtimeClient:
    url: str  # ws://host:port/v1/realtime
    api_key: str | None = None  # the server's RTMEDIA_API_KEY or a client secret (ek_...)
    ws: websockets.ClientConnection | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task | None = None

    async def connect(self, *, transcription: bool = False, headers: dict | None = None
                      ) -> RealtimeClient:
        url = self.url + ("?intent=transcription" if transcription else "")
        headers = dict(headers or {})
        if self.api_key:
            headers.setdefault("Authorization", f"Bearer {self.api_key}")
        self.ws = await websockets.connect(url, compression=None, max_size=None,
                                           additional_headers=headers)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.events.put_nowait(Event(json.loads(raw), time.monotonic()))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.events.put_nowait(Event({"type": "connection.closed"}, time.monotonic()))

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def update(self, session: dict) -> dict:
        await self.send({"type": "session.update", "session": session})
        ev = await self.wait_for("session.updated", "error")
        if ev.type == "error":
            raise RuntimeError(ev.data["error"]["message"])
        return ev.data["session"]

    async def append(self, pcm16: np.ndarray) -> None:
        await self.send({"type": "input_audio_buffer.append",
                         "audio": base64.b64encode(pcm16.astype("<i2").tobytes()).decode()})

    async def stream_audio(self, audio: np.ndarray, rate: int, *, pace: float = 1.0,
                           chunk_ms: int = 20) -> float:
        """Send float32 audio in chunks; ``pace`` 1.0 is real time, 0 as fast as possible.

        Returns the monotonic time the last chunk was sent."""
        step = rate * chunk_ms // 1000
        start = time.monotonic()
        pcm = float_to_pcm16(audio)
        for n, i in enumerate(range(0, pcm.size, step)):
            await self.append(pcm[i:i + step])
            if pace:
                delay = start + (n + 1) * chunk_ms / 1000 / pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        return time.monotonic()

    async def wait_for(self, *types: str, timeout: float = 30.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.events.get()
                if ev.type in types or ev.type == "connection.closed":
                    return ev

    async def iter_events(self, timeout: float = 30.0) -> AsyncIterator[Event]:
        while True:
            async with asyncio.timeout(timeout):
                ev = await self.events.get()
            yield ev
            if ev.type == "connection.closed":
                return

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def load_audio(path: str, rate: int) -> np.ndarray:
    pcm, src = read_wav(path)
    return pcm16_to_float(resample(pcm, src, rate))


def pcm_from_delta(event: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
