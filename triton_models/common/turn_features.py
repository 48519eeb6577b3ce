"""Input of the smart-turn end-of-turn model: Whisper log-mel features of the last 8 s.

The smart-turn v3 classifier is a Whisper-tiny encoder trained on 8 s windows of
16 kHz speech that end where the speaker paused, left-padded with silence when
the turn is shorter. Its features are Whisper's: a centred 400-point STFT with a
periodic Hann window every 160 samples, power through 80 Slaney mel filters,
log10, floored 8 below the maximum, then scaled by (x + 4) / 4; the waveform is
normalized to zero mean and unit variance first. numpy only, so the model and
the unit tests share it.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
WINDOW_S = 8
WINDOW = RATE * WINDOW_S  # samples the model sees
N_FFT, HOP, N_MELS = 400, 160, 80


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    step = np.log(6.4) / 27.0
    return np.where(hz < 1000.0, hz * 3.0 / 200.0,
                    15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / step)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    step = np.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(step * (mel - 15.0)))


def mel_filters() -> np.ndarray:
    """[N_MELS, N_FFT//2+1] triangular filters, area-normalized (Slaney)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    bins = np.linspace(0, RATE // 2, N_FFT // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lo) / (mid - lo)
    falling = (hi - bins[None, :]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return tri * (2.0 / (hi - lo))


_FILTERS = mel_filters()
_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of the turn, silence-padded at the start when shorter."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size >= WINDOW:
        return audio[-WINDOW:]
    return np.concatenate([np.zeros(WINDOW - audio.size, np.float32), audio])


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[80, 800] float32 features of one 8 s window (see ``last_window``)."""
    x = last_window(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # [801, 201]
    mel = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))[:, :-1]  # drop the last frame
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)
