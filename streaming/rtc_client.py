"""An aiortc client of the media server's WebRTC endpoint (tests and benchmarks).

It sends a microphone track made from an array, opens the events data channel,
and records what comes back: event times, reply audio levels per 20 ms and the
avatar's mouth-region activity per video frame, all on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame, VideoFrame

from streaming.webrtc import allow_loopback_candidates


class ArrayMicrophone(MediaStreamTrack):
    """48 kHz mono audio from an array, 20 ms per frame in real time, then silence."""

    kind = "audio"

    def __init__(self, audio: np.ndarray, rate: int = 48000):
        super().__init__()
        self.pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        self.rate = rate
        self._n = 0
        self._start: float | None = None
        self.started_at: float | None = None

    def say(self, audio: np.ndarray) -> None:
        """Play ``audio`` from the next frame on (what was left to play is dropped)."""
        pos = self._n * (self.rate // 50)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        head = self.pcm[:pos]
        if head.size < pos:
            head = np.concatenate([head, np.zeros(pos - head.size, np.int16)])
        self.pcm = np.concatenate([head, pcm])

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = self.started_at = time.monotonic()
        step = self.rate // 50
        delay = self._start + self._n * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self.pcm[self._n * step:(self._n + 1) * step]
        if chunk.size < step:
            chunk = np.concatenate([chunk, np.zeros(step - chunk.size, np.int16)])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._n * step
        frame.time_base = fractions.Fraction(1, self.rate)
        self._n += 1
        return frame


class ColorCamera(MediaStreamTrack):
    """A camera that shows one colour (RGB), 10 frames a second, for tests."""

    kind = "video"

    def __init__(self, color: tuple[int, int, int], size: tuple[int, int] = (320, 240)):
        super().__init__()
        self.image = np.zeros((size[1], size[0], 3), np.uint8)
        self.image[:] = color
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> VideoFrame:
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._n / 10 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts, frame.time_base = self._n, fractions.Fraction(1, 10)
        self._n += 1
        return frame


@dataclass
class CallRecord:
    events: list[tuple[float, dict]] = field(default_factory=list)
    audio_levels: list[tuple[float, float]] = field(default_factory=list)  # (t, rms)
    video_frames: list[float] = field(default_factory=list)
    mouth: list[tuple[float, float]] = field(default_factory=list)  # (t, mean abs diff)

    def first(self, type_: str, after: float = 0.0) -> float | None:
        return next((t for t, e in self.events if e["type"] == type_ and t >= after), None)


class RtcCall:
    def __init__(self, base_url: str, mic: ArrayMicrophone, mouth_box=None,
                 session: dict | None = None, api_key: str | None = None,
                 camera: MediaStreamTrack | None = None):
        self.base_url = base_url
        self.camera = camera  # a video track to send (the user's camera), or none
        self.api_key = api_key
        self.mic = mic
        self.mouth_box = mouth_box
        self.session = session
        self.rec = CallRecord()
        self.pc: RTCPeerConnection | None = None
        self.channel = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> RtcCall:
        allow_loopback_candidates()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(self.mic)
        if self.camera is not None:  # sendrecv: our camera out, the avatar in
            self.pc.addTrack(self.camera)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        channel = self.channel = self.pc.createDataChannel("oai-events")

        @channel.on("open")
        def _open() -> None:
            if self.session:
                channel.send(json.dumps({"type": "session.update", "session": self.session}))

        @channel.on("message")
        def _msg(message) -> None:
            self.rec.events.append((time.monotonic(), json.loads(message)))

        @self.pc.on("track")
        def _track(track) -> None:
            self._tasks.append(asyncio.create_task(self._pull(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.base_url}/v1/realtime/calls", data=self.pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp",
                         **({"Authorization": f"Bearer {self.api_key}"}
                            if self.api_key else {})}) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"call refused ({resp.status}): {body}")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return self

    async def _pull(self, track) -> None:
        prev = None
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    x = frame.to_ndarray().astype(np.float32) / 32768.0
                    self.rec.audio_levels.append((now, float(np.sqrt(np.mean(x * x)))))
                else:
                    self.rec.video_frames.append(now)
                    if self.mouth_box:
                        x0, y0, x1, y1 = self.mouth_box
                        img = frame.to_ndarray(format="rgb24")[y0:y1, x0:x1].astype(np.int16)
                        if prev is not None:
                            self.rec.mouth.append((now, float(np.abs(img - prev).mean())))
                        prev = img

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
