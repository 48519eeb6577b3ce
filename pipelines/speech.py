"""Synthetic test speech from espeak-ng (for tests, benchmarks and the CLI demos)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipelines.audio import pcm16_to_float, read_wav, resample


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_wav(text: str, path: Path, *, voice: str = "en-us", wpm: int = 160) -> Path:
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def espeak_speech(text: str, rate: int = 16000, **kwargs) -> np.ndarray:
    """Speech for ``text`` as mono float32 at ``rate``."""
    with tempfile.TemporaryDirectory() as tmp:
        pcm, src_rate = read_wav(espeak_wav(text, Path(tmp) / "speech.wav", **kwargs))
    return pcm16_to_float(resample(pcm, src_rate, rate))
