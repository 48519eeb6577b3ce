"""WebRTC transport (aiortc): SDP offer/answer over HTTP, events on a data channel,
microphone audio in, reply audio and talking-head video out on one timeline.

Audio and video stay together because the video track does not keep time of its
own for speech: each video frame shows the avatar frame for the reply audio the
audio track has *actually sent* so far (minus the receiver's extra audio
buffering). However late frames arrive or long a session runs, the mouth follows
the sound, never a clock that drifts away from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from pathlib import Path

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import AudioFrame, AudioResampler, VideoFrame

from pipelines.avatar import FPS, Avatar
from pipelines.router import ModelRouter
from pipelines.services import Services
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.vad import RATE
from streaming import metrics as M
from streaming.realtime import Limits, RealtimeSession

log = logging.getLogger(__name__)
OUT_RATE = 48000
AUDIO_PTIME = 0.02
VIDEO_CLOCK = 90000
PEER_SILENCE_TIMEOUT_S = 5.0
INBOUND_PREFETCH = 1  # audio packets aiortc buffers before decoding (its default: 4)


def allow_loopback_candidates() -> None:
    """aioice leaves 127.0.0.1 out of its host candidates; on a loopback-only network
    (tests, a kiosk talking to a local server) an offer then has none at all."""
    import aioice.ice as ice

    if getattr(ice.get_host_addresses, "_rtmedia", False):
        return
    original = ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    with_loopback._rtmedia = True  # type: ignore[attr-defined]
    ice.get_host_addresses = with_loopback


class ReplyAudioTrack(MediaStreamTrack):
    """48 kHz mono reply audio in 20 ms frames, paced by its own clock; silence between
    replies. Knows how much of the current reply it has sent (the sync reference)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[np.ndarray] = deque()
        self._start: float | None = None
        self._n = 0
        self.reply_sent = 0  # samples of the current reply sent
        self.reply_queued = 0  # samples of the current reply received
        self.reply_id: str | None = None
        self.first_sent_at: float | None = None

    def push(self, reply_id: str, pcm: np.ndarray) -> None:
        if reply_id != self.reply_id:
            self.reply_id, self.reply_sent, self.reply_queued = reply_id, 0, 0
            self.first_sent_at = None
        self._chunks.append(pcm)
        self.reply_queued += pcm.size

    def interrupt(self) -> None:
        """Stop at once; what was sent of the reply stays known (what was heard)."""
        self._chunks.clear()
        self.reply_queued = self.reply_sent

    @property
    def speaking(self) -> bool:
        return bool(self._chunks)

    def pending_samples(self) -> int:
        return self.reply_queued - self.reply_sent

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._chunks:
            head = self._chunks[0]
            k = min(n - filled, head.size)
            out[filled:filled + k] = head[:k]
            if k == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[k:]
            filled += k
        if filled and self.first_sent_at is None:
            self.first_sent_at = time.monotonic()
        self.reply_sent += filled
        return out

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._n * AUDIO_PTIME - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:  # we fell far behind (loop stall): resync, don't burst
            self._start = time.monotonic() - self._n * AUDIO_PTIME
        samples = int(OUT_RATE * AUDIO_PTIME)
        frame = AudioFrame.from_ndarray(self._take(samples).reshape(1, -1), format="s16",
                                        layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._n * samples
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        self._n += 1
        return frame


class AvatarVideoTrack(MediaStreamTrack):
    """25 fps talking head: reply frames indexed by the audio track's position, idle
    frames (blinks, head motion) otherwise."""

    kind = "video"

    def __init__(self, avatar: Avatar, audio: ReplyAudioTrack, audio_lead_s: float = 0.0):
        super().__init__()
        self.avatar = avatar
        self.audio = audio
        # how much more the receiver buffers audio than video (jitter buffers)
        self.audio_lead_s = audio_lead_s
        self.frames: dict[int, np.ndarray] = {}
        self.reply_id: str | None = None
        self._start: float | None = None
        self._n = 0
        self.speaking_frames = 0

    def add_frames(self, reply_id: str, first_index: int, frames: np.ndarray) -> None:
        if reply_id != self.reply_id:
            self.reply_id, self.frames = reply_id, {}
        for i, f in enumerate(frames):
            self.frames[first_index + i] = f

    def interrupt(self) -> None:
        self.frames, self.reply_id = {}, None

    def current(self, stream_t: float) -> np.ndarray:
        a = self.audio
        if a.reply_id is not None and a.reply_id == self.reply_id and a.reply_sent:
            pos = a.reply_sent / OUT_RATE - self.audio_lead_s
            idx = int(pos * FPS)
            if a.reply_sent < a.reply_queued or a.speaking:
                frame = self.frames.get(idx)
                if frame is not None:
                    self.speaking_frames += 1
                    return frame
        return self.avatar.frame(stream_t)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._n / FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:
            self._start = time.monotonic() - self._n / FPS
        try:
            image = self.current(self._n / FPS)
            frame = VideoFrame.from_ndarray(image, format="rgb24")
        except Exception:  # aiortc would end the track silently: log and show idle
            log.exception("avatar frame failed")
            frame = VideoFrame.from_ndarray(self.avatar.portrait, format="rgb24")
        frame.pts = int(self._n * VIDEO_CLOCK / FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._n += 1
        return frame


class AvatarMedia:
    """The audio sink of a WebRTC session (see pipelines.playout.AudioSink): reply audio
    to the audio track, and avatar frames for each TTS piece from the Triton avatar
    model to the video track. The audio track's clock says what has been played."""

    rate = OUT_RATE

    def __init__(self, router: ModelRouter, avatar: Avatar, avatar_name: str,
                 audio_lead_s: float = 0.0):
        self.router = router
        self.avatar_name = avatar_name
        self.audio = ReplyAudioTrack()
        self.video = AvatarVideoTrack(avatar, self.audio, audio_lead_s)
        self._tasks: set[asyncio.Task] = set()

    async def write(self, response_id: str, item_id: str, pcm: np.ndarray,
                    alignment: dict | None, offset_s: float) -> None:
        first_frames = asyncio.Event()
        task = asyncio.create_task(self._render(response_id, pcm, alignment, offset_s,
                                                first_frames))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Hold the first piece of a reply back until its first frames are there (at
        # most 150 ms), so the mouth never lags the first syllable.
        if offset_s == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_frames.wait(), 0.15)
        self.audio.push(response_id, pcm)

    async def _render(self, response_id: str, pcm: np.ndarray, alignment: dict | None,
                      offset_s: float, first_frames: asyncio.Event) -> None:
        route = self.router.route("avatar")
        inputs = {"AUDIO": pcm, "SAMPLE_RATE": np.array([OUT_RATE], np.int32),
                  "ALIGNMENT": json.dumps(alignment or {}),
                  "AVATAR": self.avatar_name,
                  "START_TIME": np.array([self.video._n / FPS], np.float32)}
        first_index = round(offset_s * FPS)
        try:
            async with route.client.stream() as stream:
                async for r in stream.infer(route.model, inputs):
                    self.video.add_frames(response_id,
                                          first_index + int(r.outputs["FIRST_FRAME"][0]),
                                          r.outputs["FRAMES"])
                    first_frames.set()
        except (TritonUnavailable, TritonModelError) as exc:
            log.warning("avatar frames failed (idle frames shown): %s", exc)
        finally:
            first_frames.set()

    def played_s(self, response_id: str) -> float:
        if self.audio.reply_id != response_id:
            return 0.0
        return self.audio.reply_sent / OUT_RATE

    def pending_s(self) -> float:
        return self.audio.pending_samples() / OUT_RATE

    async def flush(self) -> None:
        """Nothing to wait for: the audio track holds the whole reply."""

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.audio.interrupt()
        self.video.interrupt()

    async def close(self) -> None:
        self.clear()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ChannelSender:
    """Events to the data channel, bounded: aiortc queues every message a peer has not
    acknowledged (and ours before the channel opens) without limit, so a peer that
    stops reading would grow the server's memory for as long as its call lasts.
    Past ``max_bytes`` unsent the peer is dropped instead (``on_overflow``)."""

    def __init__(self, max_bytes: int, on_overflow) -> None:
        self.channel = None
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._on_overflow = on_overflow
        self.overflowed = False

    def attach(self, channel) -> None:
        self.channel = channel
        if channel.readyState == "open":
            self.flush()

    def flush(self) -> None:
        for data in self._pending:
            self.channel.send(data)
        self._pending.clear()
        self._pending_bytes = 0

    def send(self, data: str) -> None:
        if self.overflowed:
            raise ConnectionError("peer not reading")
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            unsent = channel.bufferedAmount
        else:
            unsent = self._pending_bytes
        if unsent + len(data) > self.max_bytes:
            self.overflowed = True
            self._pending.clear()
            self._on_overflow(f"{unsent} bytes unsent on the data channel")
            raise ConnectionError("peer not reading")
        if channel is not None and channel.readyState == "open":
            channel.send(data)
        else:
            self._pending.append(data)
            self._pending_bytes += len(data)


class WebRTCSession:
    """One peer connection: inbound mic audio -> the session; events on 'oai-events'."""

    def __init__(self, router: ModelRouter, avatar: Avatar, avatar_name: str, *,
                 kind: str = "realtime", ice_servers: list[dict] | None = None,
                 limits: Limits | None = None, on_closed=None,
                 services: Services | None = None, max_send_buffer_bytes: int = 1 << 20):
        allow_loopback_candidates()
        servers = [RTCIceServer(**s) for s in (ice_servers or [])]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.media = AvatarMedia(router, avatar, avatar_name)
        self.channel = None
        self.sender = ChannelSender(max_send_buffer_bytes, self._not_reading)
        # Data-channel messages are handled one at a time, in order, by one task.
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task] = set()
        self.closed = False
        self.session = RealtimeSession(self._send, router, kind=kind, limits=limits,
                                       media=self.media, services=services)
        self.pc.addTrack(self.media.audio)
        self.pc.addTrack(self.media.video)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def _send(self, event: dict) -> None:
        if self.closed:
            raise ConnectionError("peer connection closed")
        self.sender.send(json.dumps(event, separators=(",", ":")))

    def _not_reading(self, reason: str) -> None:
        M.ERRORS.labels("client_not_reading").inc()
        log.info("webrtc session %s: %s; closing it", self.session.id, reason)
        self._spawn(self.close())

    def _on_datachannel(self, channel) -> None:
        self.channel = channel
        channel.on("open")(self.sender.flush)
        self.sender.attach(channel)

        @channel.on("message")
        def _message(message) -> None:
            self._inbox.put_nowait(message)

        @channel.on("close")
        def _closed() -> None:  # the peer hung up (or its SCTP association died)
            self._spawn(self.close())

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            self._spawn(self._pump_audio(track))
        elif track.kind == "video":  # the browser's camera
            self._spawn(self._pump_camera(track))

    async def _pump_camera(self, track) -> None:
        """Keep the camera's latest frame: a user turn spoken while it shows something
        is answered from it by the multimodal model (pipelines/camera.py)."""
        from pipelines.camera import LatestFrame

        camera = LatestFrame()
        self.session.agent.camera = camera.jpeg
        try:
            while True:
                camera.put(await track.recv())
        except Exception as exc:  # MediaStreamError: the camera stopped or the peer left
            log.info("camera track ended (%s)", type(exc).__name__)
        finally:
            camera.clear()

    async def _handle_events(self) -> None:
        while True:
            await self.session.handle(await self._inbox.get())

    async def _pump_audio(self, track) -> None:
        """Opus-decoded 48 kHz (stereo) frames -> 16 kHz mono, once, for the pipeline."""
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        try:
            while True:
                # Browsers send audio all the time (silence included): none for this
                # long means the peer vanished; ICE consent would take ~30 s to say so.
                frame = await asyncio.wait_for(track.recv(), PEER_SILENCE_TIMEOUT_S)
                t0 = time.perf_counter()
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    M.AUDIO_SECONDS.labels("in").inc(pcm.size / RATE)
                    await self.session.agent.push_audio(pcm)
                M.FRAME_PROCESSING.observe(time.perf_counter() - t0)
        except Exception as exc:  # MediaStreamError / timeout when the peer goes away
            log.info("inbound audio ended (%s): closing the session", type(exc).__name__)
            self._spawn(self.close())

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close())

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        shorten_audio_prefetch(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.session.start()
        self._spawn(self._handle_events())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.session.close()
        await self.media.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.pc.close()
        if self._on_closed:
            self._on_closed(self)


def shorten_audio_prefetch(pc: RTCPeerConnection, packets: int = INBOUND_PREFETCH) -> None:
    """aiortc holds 4 audio packets (80 ms) before decoding, for smooth playback. Our
    inbound audio feeds the VAD and STT, not a speaker: one packet is enough, and the
    user's end of speech is seen 60 ms sooner. (A private attribute: ignored if absent.)"""
    for receiver in pc.getReceivers():
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if receiver.track and receiver.track.kind == "audio" and hasattr(buffer, "_prefetch"):
            buffer._prefetch = packets


def load_avatar(models_dir: Path, name: str) -> Avatar:
    folder = models_dir / "avatar" / name
    if not (folder / "avatar.json").is_file():
        raise FileNotFoundError(f"no avatar {name!r} in {folder.parent}; run `rtmedia models "
                                "install-defaults` or `rtmedia avatar prepare PHOTO`")
    return Avatar.load(folder)
