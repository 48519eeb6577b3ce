"""Streaming Whisper as a decoupled Triton python model.

Each audio stream is a Triton sequence. The model keeps, per sequence, the audio
of the open window; every chunk may trigger a partial decode (greedy, no
timestamps: cheap), the END chunk a final decode with word timestamps. A long
window (captions without end-of-turn) is cut at segment boundaries so cost per
partial stays bounded, and the cut part is sent as a final.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

SAMPLE_RATE = 16000
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


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


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


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
    """Drop segments that start after the audio ends or repeat the previous one."""
    out = []
    for seg in segments:
        if seg.start >= duration_s - 0.05 or not _norm(seg.text):
            continue
        if out and _norm(seg.text) == _norm(out[-1].text):
            continue
        out.append(seg)
    return out


def _param(args_cfg: dict, key: str, default: str) -> str:
    return args_cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from faster_whisper import WhisperModel

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        weights = store / _param(cfg, "weights", "stt/whisper-tiny.en")
        if not (weights / "model.bin").is_file():
            raise pb_utils.TritonModelException(
                f"Whisper weights not found in {weights}; run `rtmedia models install-defaults`"
            )
        gpu = args.get("model_instance_kind") == "GPU"
        self.trim = _param(cfg, "trim_encoder", "true").lower() == "true"
        self.model = short_window_model(WhisperModel)(
            str(weights),
            device="cuda" if gpu else "cpu",
            device_index=int(args.get("model_instance_device_id", 0)),
            compute_type=_param(cfg, "compute_type", "float16" if gpu else "int8"),
            cpu_threads=int(_param(cfg, "cpu_threads", "2")),
            local_files_only=True,
        )
        self.english_only = weights.name.endswith(".en")
        self.default_language = _param(cfg, "language", "en") or None
        self.partial_every = int(float(_param(cfg, "partial_interval_s", "0.5")) * SAMPLE_RATE)
        self.max_window = int(float(_param(cfg, "max_window_s", "20")) * SAMPLE_RATE)
        self.max_chunk = int(float(_param(cfg, "max_chunk_s", "30")) * SAMPLE_RATE)
        self.beam_size = int(_param(cfg, "beam_size", "1"))
        self.streams: dict[int, StreamState] = {}
        self.logger = pb_utils.Logger
        # Warm up so the first user does not pay for lazy initialisation.
        list(self.model.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en",
                                   beam_size=1, without_timestamps=True)[0])

    # -- Triton entry -----------------------------------------------------------------
    def execute(self, requests):
        # Finals first: a user waits on an end of turn, while a partial that comes a
        # little later only updates a caption (matters when many streams share a batch).
        requests = sorted(requests, key=lambda r: not bool(_scalar(r, "END")))
        for request in requests:
            sender = request.get_response_sender()
            try:
                outputs = self._handle(request)
                sender.send(self._response(*outputs), flags=FINAL)
            except Exception as exc:  # a bad request must not take the model down
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        self._expire_idle()
        return None

    def _handle(self, request) -> tuple[str, bool, dict]:
        corrid = int(_scalar(request, "CORRID"))
        start = bool(_scalar(request, "START"))
        end = bool(_scalar(request, "END"))
        audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1)
        lang_t = pb_utils.get_input_tensor_by_name(request, "LANGUAGE")
        language = _decode(lang_t.as_numpy().reshape(-1)[0]) if lang_t is not None else None

        if audio.size > self.max_chunk:
            raise ValueError(f"AUDIO chunk of {audio.size / SAMPLE_RATE:.1f} s is longer than "
                             f"the {self.max_chunk / SAMPLE_RATE:.0f} s maximum; send smaller "
                             "chunks")
        if audio.size == 0 and not end:
            raise ValueError("AUDIO is empty: send 16 kHz mono float32 samples")
        if not np.all(np.isfinite(audio)):
            raise ValueError("AUDIO contains NaN or infinite samples")
        if language and self.english_only and language not in ("en", "auto"):
            raise ValueError(f"this Whisper model is English-only; language {language!r} "
                             "needs a multilingual model (e.g. whisper_base)")

        state = self.streams.get(corrid)
        if start or state is None:
            state = StreamState(language=None if language == "auto" else
                                (language or self.default_language))
            self.streams[corrid] = state
        state.touched = time.monotonic()
        state.audio = np.concatenate([state.audio, audio.astype(np.float32, copy=False)])
        state.since_partial += audio.size

        if end:
            self.streams.pop(corrid, None)
            text, details = self._final(state, state.audio)
            return text, True, details
        if state.audio.size > self.max_window:
            return self._commit_window(state)
        if state.since_partial >= self.partial_every:
            state.since_partial = 0
            text = self._partial(state)
            if text != state.last_partial:
                state.last_partial = text
                return text, False, {"start": state.offset_s}
        return "", False, {}

    # -- decoding -------------------------------------------------------------------------
    def _language(self, state: StreamState) -> str | None:
        return "en" if self.english_only else state.language

    def _fit_encoder(self, n_samples: int) -> None:
        """Encoder frames for this audio: whole seconds of content plus one (10 ms frames)."""
        seconds = -(-n_samples // SAMPLE_RATE) + 1
        self.model.frames = min(3000, seconds * 100) if self.trim else None

    @staticmethod
    def _token_budget(n_samples: int) -> int:
        """Tokens a window can plausibly hold: greedy decoding on a window that ends in
        silence can loop on a phrase until 448 tokens (~1 s of CPU); this cuts it."""
        return int(8 * n_samples / SAMPLE_RATE) + 12

    def _partial(self, state: StreamState) -> str:
        self._fit_encoder(state.audio.size)
        segments, _ = self.model.transcribe(
            state.audio, language=self._language(state), beam_size=1, temperature=0.0,
            without_timestamps=True, condition_on_previous_text=False,
            max_new_tokens=self._token_budget(state.audio.size),
        )
        return drop_repeats(" ".join(s.text.strip() for s in segments))

    def _segments(self, state: StreamState, audio: np.ndarray):
        self._fit_encoder(audio.size)
        segments, info = self.model.transcribe(
            audio, language=self._language(state), beam_size=self.beam_size,
            temperature=0.0, word_timestamps=True, condition_on_previous_text=False,
            max_new_tokens=min(440, self._token_budget(audio.size)),
        )
        return clean_segments(segments, audio.size / SAMPLE_RATE), info

    def _final(self, state: StreamState, audio: np.ndarray) -> tuple[str, dict]:
        if audio.size < SAMPLE_RATE // 10:
            return "", {"start": state.offset_s, "end": state.offset_s, "segments": []}
        segments, info = self._segments(state, audio)
        return self._describe(state, segments, info, audio.size)

    def _describe(self, state, segments, info, n_samples) -> tuple[str, dict]:
        off = state.offset_s
        segs = [{
            "start": round(off + s.start, 3), "end": round(off + s.end, 3),
            "text": drop_repeats(s.text),
            "words": [{"word": w.word.strip(), "start": round(off + w.start, 3),
                       "end": round(off + w.end, 3), "p": round(w.probability, 3)}
                      for w in (s.words or [])],
        } for s in segments]
        text = " ".join(s["text"] for s in segs).strip()
        return text, {"start": off, "end": round(off + n_samples / SAMPLE_RATE, 3),
                      "language": info.language, "segments": segs}

    def _commit_window(self, state: StreamState) -> tuple[str, bool, dict]:
        """Finalize all but the last segment of an over-long window and keep the rest open."""
        segments, info = self._segments(state, state.audio)
        if len(segments) > 1:
            keep_from = int(segments[-1].start * SAMPLE_RATE)
            done = segments[:-1]
        else:
            keep_from = state.audio.size
            done = segments
        text, details = self._describe(state, done, info, keep_from)
        state.audio = state.audio[keep_from:]
        state.offset_s += keep_from / SAMPLE_RATE
        state.since_partial = 0
        state.last_partial = ""
        return text, True, details

    # -- helpers ----------------------------------------------------------------------------
    def _response(self, text: str, final: bool, details: dict):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("TEXT", np.array([[text.encode()]], dtype=np.object_)),
            pb_utils.Tensor("IS_FINAL", np.array([[final]], dtype=bool)),
            pb_utils.Tensor("DETAILS", np.array([[json.dumps(details).encode()]],
                                                dtype=np.object_)),
        ])

    def _expire_idle(self) -> None:
        """Drop streams whose client vanished (the sequence batcher has released them)."""
        cutoff = time.monotonic() - 180
        for corrid in [c for c, s in self.streams.items() if s.touched < cutoff]:
            del self.streams[corrid]

    def finalize(self) -> None:
        self.streams.clear()


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0] if tensor is not None else 0


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
