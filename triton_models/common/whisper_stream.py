"""Streaming transcription on top of a faster-whisper model, one state per stream.

Each audio stream (a Triton sequence) keeps the audio of its open window; every
chunk may trigger a partial decode (greedy, no timestamps: cheap), the END chunk a
final decode with word timestamps. A long window (captions without end-of-turn)
is cut at segment boundaries so cost per partial stays bounded, and the cut part
is sent as a final. Shared by the whisper and whisper_base models; stdlib + numpy
only, so the tests run it offline with a scripted decoder.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
IDLE_EXPIRY_S = 180.0

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class StreamState:
    language: str | None
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offset_s: float = 0.0  # stream time of audio[0]
    since_partial: int = 0  # samples added since the last partial decode
    last_partial: str = ""
    touched: float = field(default_factory=time.monotonic)


def short_window_model(base):
    """A WhisperModel whose encoder sees only the audio there is (+1 s), not 30 s of padding.

    faster-whisper pads every window to 30 s, so a 2 s utterance costs as much as a
    30 s one (~300 ms for tiny int8 on 2 cores). CTranslate2's encoder accepts
    shorter inputs; trimming the padding makes partials and finals 3-4x cheaper
    with the same WER on our test speech (bench: rtmedia bench models).
    """

    class ShortWindowWhisper(base):
        frames: int | None = None  # set per call from the audio length

        def encode(self, features):
            if self.frames and features.shape[-1] > self.frames:
                features = features[..., : self.frames]
            return super().encode(features)

    return ShortWindowWhisper


def encoder_frames(n_samples: int) -> int:
    """Encoder frames for this audio: whole seconds of content plus one (10 ms frames)."""
    seconds = -(-n_samples // SAMPLE_RATE) + 1
    return min(3000, seconds * 100)


def token_budget(n_samples: int) -> int:
    """Tokens a window can plausibly hold: greedy decoding on a window that ends in
    silence can loop on a phrase until 448 tokens (~1 s of CPU); this cuts it."""
    return int(8 * n_samples / SAMPLE_RATE) + 12


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def drop_repeats(text: str) -> str:
    """Remove a sentence that merely repeats the one before it: Whisper's typical
    hallucination when a window ends in silence."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        if sentence and (not out or _norm(sentence) != _norm(out[-1])):
            out.append(sentence)
    return " ".join(out)


def clean_segments(segments, duration_s: float) -> list:
    """Drop segments that start after the audio ends, are empty or repeat the previous one."""
    out = []
    for seg in segments:
        if seg.start >= duration_s - 0.05 or not _norm(seg.text):
            continue
        if out and _norm(seg.text) == _norm(out[-1].text):
            continue
        out.append(seg)
    return out


def describe(offset_s: float, segments, language: str | None,
             n_samples: int) -> tuple[str, dict]:
    """The final text and its details: segments and words in stream time."""
    segs = [{
        "start": round(offset_s + s.start, 3), "end": round(offset_s + s.end, 3),
        "text": drop_repeats(s.text),
        "words": [{"word": w.word.strip(), "start": round(offset_s + w.start, 3),
                   "end": round(offset_s + w.end, 3), "p": round(w.probability, 3)}
                  for w in (s.words or [])],
    } for s in segments]
    text = " ".join(s["text"] for s in segs).strip()
    return text, {"start": offset_s, "end": round(offset_s + n_samples / SAMPLE_RATE, 3),
                  "language": language, "segments": segs}


def window_cut(segments, n_samples: int) -> tuple[list, int]:
    """(segments to finalize, first sample kept open) for an over-long window: all but
    the last segment, which may still be growing; one segment is finalized whole."""
    if len(segments) > 1:
        return segments[:-1], min(n_samples, int(segments[-1].start * SAMPLE_RATE))
    return list(segments), n_samples


@dataclass
class WhisperSettings:
    english_only: bool = False
    default_language: str | None = "en"
    partial_every: int = SAMPLE_RATE // 2  # samples of new audio between partials
    max_window: int = 20 * SAMPLE_RATE
    max_chunk: int = 30 * SAMPLE_RATE
    beam_size: int = 1
    trim_encoder: bool = True


class StreamingTranscriber:
    """Per-stream windows over one model; ``handle`` answers each chunk with
    (text, is_final, details). ``model`` is a faster-whisper WhisperModel made by
    ``short_window_model`` (its ``frames`` attribute trims the encoder input)."""

    def __init__(self, model, settings: WhisperSettings):
        self.model = model
        self.settings = settings
        self.streams: dict[int, StreamState] = {}

    def check_chunk(self, audio: np.ndarray, end: bool, language: str | None) -> None:
        s = self.settings
        if audio.size > s.max_chunk:
            raise ValueError(f"AUDIO chunk of {audio.size / SAMPLE_RATE:.1f} s is longer than "
                             f"the {s.max_chunk / SAMPLE_RATE:.0f} s maximum; send smaller "
                             "chunks")
        if audio.size == 0 and not end:
            raise ValueError("AUDIO is empty: send 16 kHz mono float32 samples")
        if not np.all(np.isfinite(audio)):
            raise ValueError("AUDIO contains NaN or infinite samples")
        if language and s.english_only and language not in ("en", "auto"):
            raise ValueError(f"this Whisper model is English-only; language {language!r} "
                             "needs a multilingual model (e.g. whisper_base)")

    def handle(self, corrid: int, audio: np.ndarray, *, start: bool, end: bool,
               language: str | None) -> tuple[str, bool, dict]:
        self.check_chunk(audio, end, language)
        state = self.streams.get(corrid)
        if start or state is None:
            state = StreamState(language=None if language == "auto" else
                                (language or self.settings.default_language))
            self.streams[corrid] = state
        state.touched = time.monotonic()
        state.audio = np.concatenate([state.audio, audio.astype(np.float32, copy=False)])
        state.since_partial += audio.size

        if end:
            self.streams.pop(corrid, None)
            text, details = self._final(state)
            return text, True, details
        if state.audio.size > self.settings.max_window:
            return self._commit_window(state)
        if state.since_partial >= self.settings.partial_every:
            state.since_partial = 0
            text = self._partial(state)
            if text != state.last_partial:
                state.last_partial = text
                return text, False, {"start": state.offset_s}
        return "", False, {}

    def expire_idle(self, now: float | None = None) -> None:
        """Drop streams whose client vanished (the sequence batcher has released them)."""
        cutoff = (time.monotonic() if now is None else now) - IDLE_EXPIRY_S
        for corrid in [c for c, s in self.streams.items() if s.touched < cutoff]:
            del self.streams[corrid]

    # -- decoding -------------------------------------------------------------------------
    def _language(self, state: StreamState) -> str | None:
        return "en" if self.settings.english_only else state.language

    def _fit_encoder(self, n_samples: int) -> None:
        self.model.frames = encoder_frames(n_samples) if self.settings.trim_encoder else None

    def _partial(self, state: StreamState) -> str:
        self._fit_encoder(state.audio.size)
        segments, _ = self.model.transcribe(
            state.audio, language=self._language(state), beam_size=1, temperature=0.0,
            without_timestamps=True, condition_on_previous_text=False,
            max_new_tokens=token_budget(state.audio.size),
        )
        return drop_repeats(" ".join(s.text.strip() for s in segments))

    def _segments(self, state: StreamState):
        audio = state.audio
        self._fit_encoder(audio.size)
        segments, info = self.model.transcribe(
            audio, language=self._language(state), beam_size=self.settings.beam_size,
            temperature=0.0, word_timestamps=True, condition_on_previous_text=False,
            max_new_tokens=min(440, token_budget(audio.size)),
        )
        return clean_segments(segments, audio.size / SAMPLE_RATE), info

    def _final(self, state: StreamState) -> tuple[str, dict]:
        if state.audio.size < SAMPLE_RATE // 10:
            return "", {"start": state.offset_s, "end": state.offset_s, "segments": []}
        segments, info = self._segments(state)
        return describe(state.offset_s, segments, info.language, state.audio.size)

    def _commit_window(self, state: StreamState) -> tuple[str, bool, dict]:
        """Finalize all but the last segment of an over-long window and keep the rest open."""
        segments, info = self._segments(state)
        done, keep_from = window_cut(segments, state.audio.size)
        text, details = describe(state.offset_s, done, info.language, keep_from)
        state.audio = state.audio[keep_from:]
        state.offset_s += keep_from / SAMPLE_RATE
        state.since_partial = 0
        state.last_partial = ""
        return text, True, details
