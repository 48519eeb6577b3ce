"""A video clip as what the video model reads: sampled frames with their times, and audio.

Frames are taken at evenly spaced times over the clip (at most ``max_frames``),
scaled to at most ``max_side`` pixels and JPEG-encoded; the audio track is
resampled to 16 kHz mono for the stt model, whose transcript goes with the frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pipelines.services import STT_RATE, STTStream
from pipelines.triton_client import TritonClient

STT_CHUNK = STT_RATE // 2


@dataclass
class Clip:
    frames: list[bytes]  # JPEG
    timestamps: list[float]  # seconds
    audio: np.ndarray  # float32, 16 kHz mono (empty without an audio track)
    duration_s: float


def decode_clip(source: str | bytes, *, max_frames: int = 8, max_seconds: float = 300.0,
                max_side: int = 512) -> Clip:
    """Decode a file path or the bytes of a clip; ValueError when it is not a video."""
    import av
    from PIL import Image

    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"not a readable video: {exc}") from None
    with container:
        if not container.streams.video:
            raise ValueError("the clip has no video track")
        vstream = container.streams.video[0]
        duration = _duration(container, vstream)
        if duration > max_seconds:
            raise ValueError(f"the clip is {duration:.0f} s long; the maximum is "
                             f"{max_seconds:.0f} s")
        n = max(1, min(max_frames, int(duration) + 1))
        targets = [duration * i / n for i in range(n)]
        frames: list[bytes] = []
        stamps: list[float] = []
        for frame in container.decode(vstream):
            t = float(frame.time or 0.0)
            if len(frames) < n and t + 1e-3 >= targets[len(frames)]:
                image = frame.to_image()
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
                buf = io.BytesIO()
                image.convert("RGB").save(buf, "JPEG", quality=85)
                frames.append(buf.getvalue())
                stamps.append(round(t, 2))
        if not frames:
            raise ValueError("no frame could be decoded from the clip")
    return Clip(frames, stamps, _audio(source), duration)


def _duration(container, vstream) -> float:
    if vstream.duration is not None and vstream.time_base is not None:
        return float(vstream.duration * vstream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def _audio(source: str | bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
        if not container.streams.audio:
            return np.zeros(0, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=STT_RATE)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


async def transcribe_clip(client: TritonClient, audio: np.ndarray, *, model: str = "whisper"
                          ) -> str:
    """The clip's speech as text, from the streaming stt model (its final transcripts)."""
    if audio.size < STT_RATE // 4:
        return ""
    stt = STTStream(client, model=model)
    finals: list[str] = []
    try:
        for i in range(0, audio.size, STT_CHUNK):
            last = i + STT_CHUNK >= audio.size
            for t in await stt.push(audio[i:i + STT_CHUNK], end=last):
                if t.final and t.text.strip():
                    finals.append(t.text.strip())
    finally:
        await stt.close()
    return " ".join(finals)
