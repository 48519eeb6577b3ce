"""Audio helpers: PCM conversions, resampling (libswresample via PyAV), WAV files."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    arr = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray) else pcm
    return arr.astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample mono int16 or float32 audio; returns the same dtype."""
    if src_rate == dst_rate or audio.size == 0:
        return audio
    return Resampler(src_rate, dst_rate).process(audio, flush=True)


class Resampler:
    """Streaming mono resampler; keeps filter state between chunks."""

    def __init__(self, src_rate: int, dst_rate: int):
        import av

        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._av = av
        self._res = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
        self._pts = 0

    def process(self, audio: np.ndarray, *, flush: bool = False) -> np.ndarray:
        as_float = audio.dtype != np.int16
        pcm = float_to_pcm16(audio) if as_float else audio
        frame = self._av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.src_rate
        frame.pts = self._pts
        self._pts += pcm.size
        out = [f.to_ndarray().reshape(-1) for f in self._res.resample(frame)]
        if flush:
            out += [f.to_ndarray().reshape(-1) for f in self._res.resample(None)]
        result = np.concatenate(out) if out else np.zeros(0, np.int16)
        return pcm16_to_float(result) if as_float else result


def read_wav(path: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the sample rate of a PCM16 WAV file (stereo is downmixed)."""
    src = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with wave.open(src, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype("<i2")
        return data, w.getframerate()


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    pcm = float_to_pcm16(samples) if samples.dtype != np.int16 else samples
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
