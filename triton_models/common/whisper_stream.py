"""Streaming transcription on top of a faster-whisper model, one state per stream.

Each audio stream (a Triton sequence) keeps the audio of its open window; every
chunk may trigger a partial decode (greedy), the END chunk a final decode with
word timestamps. ``handle_batch`` serves all the streams of one Triton batch
together: the finals of the batch as one batched encode + decode, then the
partials as another (``BatchedWhisper``), each answer to its own stream.

Cost per partial stays bounded on long streams: with ``stable_commit`` the
segments that two consecutive partial hypotheses agree on (all but the open last
segment) are committed (decoded once with word timestamps, then dropped from the
window), so a partial decodes only the open tail; the stream's text is the
committed text plus the tail. Without agreement, a window longer than
``max_window`` is cut at its last segment boundary. Shared by the whisper and
whisper_base models; stdlib + numpy only at import, so the tests run it offline
with a scripted decoder.
"""

from __future__ import annotations

import re
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
IDLE_EXPIRY_S = 180.0
# A sentence in the language's own script ("this is a conversation in ..."), given to
# Whisper as the text before the window: without it the small multilingual models
# often write Hindi and its neighbours in Latin or Urdu script.
SCRIPT_PROMPTS = {
    "hi": "यह हिंदी में बातचीत है।", "mr": "हे मराठीत संभाषण आहे.",
    "bn": "এটি বাংলায় কথোপকথন।", "ta": "இது தமிழில் ஒரு உரையாடல்.",
    "te": "ఇది తెలుగులో సంభాషణ.", "kn": "ಇದು ಕನ್ನಡದಲ್ಲಿ ಸಂಭಾಷಣೆ.",
    "ml": "ഇത് മലയാളത്തിലുള്ള സംഭാഷണമാണ്.", "gu": "આ ગુજરાતીમાં વાતચીત છે.",
    "pa": "ਇਹ ਪੰਜਾਬੀ ਵਿੱਚ ਗੱਲਬਾਤ ਹੈ।",
}
NO_SPEECH_PROB = 0.6  # faster-whisper's defaults: skip a window that is silence
LOGPROB_THRESHOLD = -1.0
PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # faster-whisper's defaults for word timestamps
QUIET_RMS = 0.01  # audio after the last partial below this (-40 dBFS) adds no words
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float = 1.0


@dataclass
class Seg:
    """A decoded segment, times relative to its window (faster-whisper's Segment shape)."""
    start: float
    end: float
    text: str
    words: list = field(default_factory=list)


@dataclass
class Hypothesis:
    segments: list
    language: str | None
    decoded: object = None  # the decoder's handle on this decode (BatchedWhisper.commit)

    @property
    def text(self) -> str:
        return drop_repeats(" ".join(s.text.strip() for s in self.segments))


@dataclass
class Chunk:
    corrid: int
    audio: np.ndarray
    start: bool = False
    end: bool = False
    language: str | None = None
    # A speculative end of turn: answer a final of all the audio so far, but keep the
    # stream open. If only silence follows, the END's final is this one, not decoded
    # again; if speech resumes, the stream goes on (its committed prefix kept).
    flush: bool = False


@dataclass
class StreamState:
    language: str | None
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    offset_s: float = 0.0  # stream time of audio[0]
    since_partial: int = 0  # samples added since the last partial decode
    last_partial: str = ""
    touched: float = field(default_factory=time.monotonic)
    start_s: float = 0.0  # stream time where the open utterance began
    committed: list = field(default_factory=list)  # described segments, stream time
    committed_text: str = ""
    previous: list = field(default_factory=list)  # normalized segment texts, last partial
    cut_at: int | None = None  # a commit pending in this batch: samples of audio it takes
    last: Hypothesis | None = None  # the latest partial of the open window
    last_samples: int = 0  # the window it decoded
    agreed: int = 0  # segments of ``previous`` that the pending commit takes
    flushed: tuple | None = None  # (the answer of a FLUSH, the audio samples it covered)


Result = tuple  # (text, is_final, details)


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
    """Letters and digits of any script (Devanagari text must not normalize to nothing:
    its segments would be dropped as empty)."""
    return re.sub(r"[^\w ]|_", "", text.lower()).strip()


def drop_repeats(text: str) -> str:
    """Remove a sentence that merely repeats the one before it: Whisper's typical
    hallucination when a window ends in silence."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        if sentence and (not out or _norm(sentence) != _norm(out[-1])):
            out.append(sentence)
    return " ".join(out)


def drop_echo_tail(text: str) -> str:
    """Drop an unfinished last sentence that only restarts the one before it ("How are
    you? How are"): greedy decoding of a window ending in silence begins to loop."""
    parts = [p for p in _SENTENCE.split(text.strip()) if p]
    if len(parts) >= 2 and parts[-1][-1:] not in ".!?" and _norm(parts[-1]) and \
            _norm(parts[-2]).startswith(_norm(parts[-1])):
        parts.pop()
    return " ".join(parts)


def clean_segments(segments, duration_s: float) -> list:
    """Drop segments that start after the audio ends, are empty or repeat the previous
    one, and a last segment that only restarts the one before it ("What is the capital
    of France?" + "What is the"): greedy decoding of a window ending in silence starts
    over, and a final made of that decode carried the echo into the transcript."""
    out = []
    for seg in segments:
        if seg.start >= duration_s - 0.05 or not _norm(seg.text):
            continue
        if out and _norm(seg.text) == _norm(out[-1].text):
            continue
        out.append(seg)
    if len(out) >= 2 and out[-1].text.strip()[-1:] not in ".!?" and \
            _norm(out[-2].text).startswith(_norm(out[-1].text)):
        out.pop()
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
    text = drop_echo_tail(drop_repeats(" ".join(s["text"] for s in segs).strip()))
    return text, {"start": offset_s, "end": round(offset_s + n_samples / SAMPLE_RATE, 3),
                  "language": language, "segments": segs}


def _quiet(audio: np.ndarray) -> bool:
    """No words in it: empty, or below QUIET_RMS."""
    return audio.size == 0 or float(np.sqrt(np.mean(audio ** 2))) < QUIET_RMS


def window_cut(segments, n_samples: int) -> tuple[list, int]:
    """(segments to finalize, first sample kept open) for an over-long window: all but
    the last segment, which may still be growing; one segment is finalized whole."""
    if len(segments) > 1:
        return segments[:-1], min(n_samples, int(segments[-1].start * SAMPLE_RATE))
    return list(segments), n_samples


def agreed_prefix(previous: list[str], segments: list) -> int:
    """How many leading finished segments (all but the last) read the same as in the
    previous hypothesis: those are stable enough to commit."""
    k = 0
    for i, seg in enumerate(segments[:-1]):
        if i >= len(previous) or _norm(seg.text) != previous[i] or not _norm(seg.text):
            break
        k += 1
    return k


def join_text(*parts: str) -> str:
    """The committed text and the open tail's: a tail decoded over silence after a
    commit may say the committed sentence again (or begin to), which is dropped."""
    return drop_echo_tail(drop_repeats(" ".join(p.strip() for p in parts if p and p.strip())))


@dataclass
class WhisperSettings:
    english_only: bool = False
    default_language: str | None = "en"
    partial_every: int = SAMPLE_RATE // 2  # samples of new audio between partials
    max_window: int = 20 * SAMPLE_RATE
    max_chunk: int = 30 * SAMPLE_RATE
    beam_size: int = 1
    trim_encoder: bool = True
    # Commit segments two partials agree on once the open window is this long
    # (0: off, the whole window is decoded for every partial).
    stable_commit: int = 0
    max_batch: int = 16  # streams per batched decode
    bucket_s: float = 1.0  # encoder length granularity of a batch group (BatchedWhisper)
    # Rows per encoder call (0: the whole group in one). On CPU one: a batched encoder
    # call costs more than its rows one by one (their activations leave the cache:
    # 8 rows of 5 s, 405 vs 205 ms on one thread); the decode is batched either way.
    encoder_rows: int = 1
    # Under load partials come less often: the interval stretches from partial_every
    # (instance busy BUSY_FROM of the time or less) to this (BUSY_FULL or more), so a
    # busy CPU spends its time on fewer, still timely partials instead of queueing
    # every stream behind them. Finals are never delayed. 0: always partial_every.
    partial_every_busy: int = 0


BUSY_FROM, BUSY_FULL = 0.5, 0.9


class BusyMeter:
    """The share of the last ``window_s`` seconds this instance spent serving batches."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._spans: deque[tuple[float, float]] = deque()

    def add(self, start: float, end: float) -> None:
        self._spans.append((start, end))
        while self._spans and self._spans[0][1] < end - self.window_s:
            self._spans.popleft()

    def busy(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        since = now - self.window_s
        spent = sum(end - max(start, since) for start, end in self._spans if end > since)
        return min(1.0, spent / self.window_s)


class _Decoded:
    """One group's decode, kept for commit(): encoder output, windows, languages,
    tokenizers and the segments (token lists) of each row."""

    __slots__ = ("__weakref__", "encoded", "langs", "rows", "toks", "windows")

    def __init__(self, encoded, windows, langs, toks, rows):
        self.encoded, self.windows, self.langs, self.toks, self.rows = (
            encoded, windows, langs, toks, rows)


class TranscribeDecoder:
    """The unbatched path: one faster-whisper ``transcribe`` call per window (any model
    with faster-whisper's ``transcribe``; its ``frames`` attribute trims the encoder)."""

    def __init__(self, model, settings: WhisperSettings):
        self.model, self.settings = model, settings

    def _fit(self, n_samples: int) -> None:
        self.model.frames = encoder_frames(n_samples) if self.settings.trim_encoder else None

    def partials(self, windows, languages) -> list[Hypothesis]:
        out = []
        for audio, language in zip(windows, languages, strict=True):
            self._fit(audio.size)
            segments, info = self.model.transcribe(
                audio, language=language, initial_prompt=SCRIPT_PROMPTS.get(language or ""),
                beam_size=1, temperature=0.0,
                without_timestamps=not self.settings.stable_commit,
                condition_on_previous_text=False, max_new_tokens=token_budget(audio.size))
            out.append(Hypothesis(list(segments), getattr(info, "language", language)))
        return out

    def finals(self, windows, languages) -> list[Hypothesis]:
        out = []
        for audio, language in zip(windows, languages, strict=True):
            self._fit(audio.size)
            segments, info = self.model.transcribe(
                audio, language=language, initial_prompt=SCRIPT_PROMPTS.get(language or ""),
                beam_size=self.settings.beam_size,
                temperature=0.0, word_timestamps=True, condition_on_previous_text=False,
                max_new_tokens=min(440, token_budget(audio.size)))
            out.append(Hypothesis(list(segments), getattr(info, "language", language)))
        return out


def _script_tokens(tokenizer, language: str) -> list[int]:
    prompt = SCRIPT_PROMPTS.get(language)
    return tokenizer.encode(" " + prompt) if prompt else []


class BatchedWhisper:
    """Many windows as one CTranslate2 encoder call and one greedy decode.

    Windows are grouped by their trimmed encoder length (``bucket_s`` rounds it up,
    so more windows share a group at the price of padding): a group's features are
    zero-padded to that length, as faster-whisper pads to 30 s, and each row keeps
    its own prompt (language) and token budget, so every row decodes exactly as it
    would alone (Whisper's output changes with the amount of padding, which is why
    rows are not all padded to the longest). Finals add word timestamps with
    faster-whisper's alignment, one ``align`` call per group, cleaned up per stream.
    """

    def __init__(self, model, settings: WhisperSettings):
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model, self.settings = model, settings  # a faster_whisper.WhisperModel
        self._tokenizer_cls, self._suppressed = Tokenizer, get_suppressed_tokens
        self._tokenizers: dict[str, object] = {}
        # The encoder outputs of the latest partial decodes, for commit(): hypotheses hold
        # them weakly, so memory stays bounded however many streams wait on one.
        self._recent: deque = deque(maxlen=32)
        import ctranslate2

        self._storage = ctranslate2.StorageView.from_array

    def tokenizer(self, language: str):
        if language not in self._tokenizers:
            self._tokenizers[language] = self._tokenizer_cls(
                self.model.hf_tokenizer, self.model.model.is_multilingual,
                task="transcribe", language=language)
        return self._tokenizers[language]

    def frames(self, n_samples: int) -> int:
        if not self.settings.trim_encoder:
            return 3000
        bucket = max(100, int(self.settings.bucket_s * 100))
        return min(3000, -(-encoder_frames(n_samples) // bucket) * bucket)

    def _grouped(self, decode, windows, languages) -> list[Hypothesis]:
        """``decode`` per group of windows with the same encoder length and language (its
        prompt's length counts in CTranslate2's max_length), answers in order."""
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault((self.frames(w.size), languages[i] or ""), []).append(i)
        out: list = [None] * len(windows)
        for idx in groups.values():
            for i, hyp in zip(idx, decode([windows[i] for i in idx],
                                          [languages[i] for i in idx]), strict=True):
                out[i] = hyp
        return out

    def features(self, windows) -> np.ndarray:
        frames = max(self.frames(w.size) for w in windows)
        extractor = self.model.feature_extractor
        batch = np.zeros((len(windows), extractor.mel_filters.shape[0], frames), np.float32)
        for i, audio in enumerate(windows):
            f = extractor(audio)[:, :-1]  # the content frames, as transcribe takes them
            n = min(frames, f.shape[-1])
            batch[i, :, :n] = f[:, :n]
        return batch

    def _encode(self, features: np.ndarray):
        """The CTranslate2 encoder itself (a short_window_model's own trimming must not
        apply), ``encoder_rows`` rows per call, as one batch for the decoder."""
        rows = self.settings.encoder_rows or len(features)
        if rows >= len(features):
            return self.model.model.encode(self._storage(features))
        parts = [np.asarray(self.model.model.encode(self._storage(features[i:i + rows])))
                 for i in range(0, len(features), rows)]
        return self._storage(np.ascontiguousarray(np.concatenate(parts)))

    def _languages(self, encoded, languages) -> list[str]:
        if not self.model.model.is_multilingual:
            return ["en"] * len(languages)
        if all(languages):
            return list(languages)
        detected = self.model.model.detect_language(encoded)
        return [lang or d[0][0][2:-2] for lang, d in zip(languages, detected, strict=True)]

    def _decode(self, windows, languages, *, timestamps: bool, final: bool):
        encoded = self._encode(self.features(windows))
        langs = self._languages(encoded, languages)
        toks = [self.tokenizer(lang) for lang in langs]
        prompts = [self.model.get_prompt(t, _script_tokens(t, lang),
                                         without_timestamps=not timestamps)
                   for t, lang in zip(toks, langs, strict=True)]
        # One token budget per group, from its encoder length: CTranslate2 stops rows by
        # one max_length, and a row must stop where it would alone.
        budget = token_budget((max(self.frames(w.size) for w in windows) - 100) * 160)
        budget = min(440, budget) if final else budget
        max_length = min(self.model.max_length, max(len(p) for p in prompts) + budget)
        results = self.model.model.generate(
            encoded, prompts, beam_size=self.settings.beam_size if final else 1,
            length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            max_length=max_length, return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=list(self._suppressed(toks[0], [-1])),
            max_initial_timestamp_index=50)
        rows = []
        for audio, tok, result in zip(windows, toks, results, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob <= LOGPROB_THRESHOLD:
                tokens = []
            rows.append(self._segments(tok, tokens, audio.size / SAMPLE_RATE))
        return encoded, langs, toks, rows

    @staticmethod
    def _segments(tok, tokens: list[int], duration: float) -> list[dict]:
        """Split greedy output at its timestamp tokens; text after the last timestamp
        is an open segment that runs to the end of the window."""
        begin, segs, text, start = tok.timestamp_begin, [], [], None
        for t in tokens:
            if t >= begin:
                at = (t - begin) * 0.02
                if text:
                    segs.append({"start": start or 0.0, "end": at, "tokens": text, "seek": 0})
                    text, start = [], None
                else:
                    start = at
            elif t < tok.eot:
                text.append(t)
        if text:
            segs.append({"start": start or 0.0, "end": duration, "tokens": text, "seek": 0})
        return segs

    def partials(self, windows, languages) -> list[Hypothesis]:
        return self._grouped(self._partials, windows, languages)

    def finals(self, windows, languages) -> list[Hypothesis]:
        return self._grouped(self._finals, windows, languages)

    def _partials(self, windows, languages) -> list[Hypothesis]:
        encoded, langs, toks, rows = self._decode(
            windows, languages, timestamps=bool(self.settings.stable_commit), final=False)
        group = _Decoded(encoded, windows, langs, toks, rows)
        self._recent.append(group)
        ref = weakref.ref(group)
        return [Hypothesis([Seg(s["start"], s["end"], tok.decode(s["tokens"])) for s in segs],
                           lang, (ref, i))
                for i, (segs, tok, lang) in enumerate(zip(rows, toks, langs, strict=True))]

    def commit(self, hyps: list[Hypothesis], counts: list[int]) -> list[Hypothesis]:
        """The first ``counts[i]`` segments of partial hypotheses, with word timestamps
        aligned on the encoder output of their own decode: committing a stable prefix
        costs one alignment per group, not a second decode. None for a hypothesis whose
        decode is no longer kept."""
        out: list = [None] * len(hyps)
        groups: dict[int, tuple] = {}
        for j, (hyp, k) in enumerate(zip(hyps, counts, strict=True)):
            ref, row = hyp.decoded
            group = ref()
            if group is not None:
                groups.setdefault(id(group), (group, []))[1].append((j, row, k))
        for group, items in groups.values():
            encoded, windows, langs, toks, rows = (group.encoded, group.windows, group.langs,
                                                   group.toks, group.rows)
            chosen: list[list[dict]] = [[] for _ in rows]
            for _j, row, k in items:
                chosen[row] = [dict(seg) for seg in rows[row][:k]]
            words = self._words(encoded, windows, langs, toks, chosen)
            for j, row, _k in items:
                out[j] = Hypothesis([
                    Seg(seg["start"], seg["end"], toks[row].decode(seg["tokens"]),
                        [Word(w["word"], w["start"], w["end"], w["probability"]) for w in ws])
                    for seg, ws in zip(chosen[row], words[row], strict=True)], langs[row])
        return out

    def _finals(self, windows, languages) -> list[Hypothesis]:
        encoded, langs, toks, rows = self._decode(windows, languages, timestamps=True,
                                                  final=True)
        words = self._words(encoded, windows, langs, toks, rows)
        out = []
        for segs, tok, lang, seg_words in zip(rows, toks, langs, words, strict=True):
            out.append(Hypothesis([
                Seg(s["start"], s["end"], tok.decode(s["tokens"]),
                    [Word(w["word"], w["start"], w["end"], w["probability"]) for w in ws])
                for s, ws in zip(segs, seg_words, strict=True)], lang))
        return out

    def _words(self, encoded, windows, langs, toks, rows) -> list[list[list[dict]]]:
        """Word timings per row and segment: one batched alignment (rows of one
        language share the start sequence it needs), then faster-whisper's per-stream
        clean-up with that row's alignment alone, as if the row had been decoded alone."""
        model = self.model
        frames = [min(3000, int(w.size // 160)) for w in windows]
        text_tokens = [[t for s in segs for t in s["tokens"]] for segs in rows]
        alignments: list = [[] for _ in rows]
        for lang in set(langs):
            mine = [lg == lang and bool(t) for lg, t in zip(langs, text_tokens, strict=True)]
            if not any(mine):
                continue
            tok = toks[mine.index(True)]
            filler = tok.encode(" a")  # align needs text for every encoder row
            rows_text = [t if m else filler for t, m in zip(text_tokens, mine, strict=True)]
            found = model.find_alignment(tok, rows_text, encoded, frames)
            for i, m in enumerate(mine):
                if m:
                    alignments[i] = found[i]
        out = []
        for i, segs in enumerate(rows):
            if not segs or not alignments[i]:
                out.append([[] for _ in segs])
                continue
            model.find_alignment = lambda *a, _one=alignments[i], **k: [_one]
            try:
                model.add_word_timestamps([segs], toks[i], encoded, frames[i],
                                          PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0)
            finally:
                del model.find_alignment
            out.append([s.get("words", []) for s in segs])
        return out


class StreamingTranscriber:
    """Per-stream windows over one decoder. ``handle_batch`` answers the chunks of a
    Triton batch (finals first), ``handle`` one chunk. ``model`` is a decoder with
    batched ``partials``/``finals`` (``BatchedWhisper``) or a faster-whisper model with
    ``transcribe`` (served one window at a time)."""

    def __init__(self, model, settings: WhisperSettings, *,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.decoder = model if hasattr(model, "finals") else TranscribeDecoder(model, settings)
        self.model = model
        self.streams: dict[int, StreamState] = {}
        self.clock = clock
        self.meter = BusyMeter(clock=clock)
        self.partial_every = settings.partial_every  # now: stretched under load

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
               language: str | None, flush: bool = False) -> Result:
        out: list = []
        self.handle_batch([Chunk(corrid, audio, start, end, language, flush)],
                          lambda i, r: out.append(r))
        if isinstance(out[0], Exception):
            raise out[0]
        return out[0]

    def handle_batch(self, chunks: list[Chunk],
                     send: Callable[[int, Result | Exception], None]) -> None:
        """Answer every chunk through ``send(index, result or error)``: finals of all
        streams first (one batched decode), then partials (another), then the commits
        of stable prefixes the partials found. A stream with two chunks in one batch
        is served in two rounds, in order."""
        started = self.clock()
        self.partial_every = self._partial_every(started)
        try:
            self._rounds(chunks, send)
        finally:
            self.meter.add(started, self.clock())

    def _partial_every(self, now: float) -> int:
        base, most = self.settings.partial_every, self.settings.partial_every_busy
        if most <= base:
            return base
        load = (self.meter.busy(now) - BUSY_FROM) / (BUSY_FULL - BUSY_FROM)
        return base + int(min(1.0, max(0.0, load)) * (most - base))

    def _rounds(self, chunks: list[Chunk], send) -> None:
        rounds: list[list[int]] = []
        for i, c in enumerate(chunks):
            k = sum(1 for j in range(i) if chunks[j].corrid == c.corrid)
            while len(rounds) <= k:
                rounds.append([])
            rounds[k].append(i)
        for indexes in rounds:
            self._round([(i, chunks[i]) for i in indexes], send)

    def _round(self, items, send) -> None:
        finals, cuts, partials, reuse = [], [], [], []
        flushes: dict[int, StreamState] = {}
        answer = send

        def send(i: int, result) -> None:  # a FLUSH's final is kept for the END
            if i in flushes and isinstance(result, tuple):
                flushes[i].flushed = (result, flushes[i].audio.size)
            answer(i, result)

        for i, chunk in items:
            try:
                kind, state = self._accept(chunk)
            except ValueError as exc:
                send(i, exc)
                continue
            if chunk.flush and not chunk.end:
                flushes[i] = state
            if kind == "flushed":  # only silence since the FLUSH: its final again
                send(i, state.flushed[0])
            elif kind == "reuse":
                reuse.append((i, state))
            elif kind == "final":
                finals.append((i, state))
            elif kind == "cut":
                cuts.append((i, state))
            elif kind == "partial":
                partials.append((i, state))
            elif kind == "short":
                send(i, self._final(state, Hypothesis([], state.language)))
            else:
                send(i, ("", False, {}))
        if reuse:  # the last partial heard it all: time its words, no new decode
            try:
                hyps = self.decoder.commit([st.last for _, st in reuse],
                                           [len(st.last.segments) for _, st in reuse])
            except Exception:  # decode them instead
                hyps = [None] * len(reuse)
            for (i, state), hyp in zip(reuse, hyps, strict=True):
                if hyp is None:
                    finals.append((i, state))
                else:
                    send(i, self._final(state, hyp))
        self._run(finals, self._final, send, final=True)
        self._run(cuts, self._cut, send, final=True)
        commits: list = []
        self._run(partials, lambda st, hyp: self._partial(st, hyp, commits), send, final=False)
        if commits and hasattr(self.decoder, "commit"):
            try:
                done = self.decoder.commit([h for h, _ in commits],
                                           [st.agreed for _, st in commits])
            except Exception:  # the prefix stays open: a later partial commits it
                done = []
            for (_, state), hyp in zip(commits, done, strict=False):
                if hyp is not None:
                    self._commit(state, hyp)
        else:  # a decoder without it decodes the committed audio again, with words
            self._run([(None, st) for _, st in commits], self._commit, lambda i, r: None,
                      final=True)

    def _run(self, jobs, finish, send, *, final: bool) -> None:
        """Decode the windows of ``jobs`` in batches; ``finish(state, hypothesis)`` makes
        each stream's answer. With a decoder that groups windows by encoder length
        (``frames``), each group is answered as soon as it is decoded, shortest first:
        no stream waits for the longer windows of others. A failing decode fails only
        the streams in it."""
        size = max(1, self.settings.max_batch)
        key = getattr(self.decoder, "frames", None)
        groups: dict[int, list] = {}
        for job in jobs:
            groups.setdefault(key(self._window(job[1]).size) if key else 0, []).append(job)
        batches = [group[b:b + size] for _, group in sorted(groups.items())
                   for b in range(0, len(group), size)]
        for batch in batches:
            windows = [self._window(state) for _, state in batch]
            langs = [self._language(state) for _, state in batch]
            try:
                hyps = (self.decoder.finals if final else self.decoder.partials)(windows, langs)
            except Exception as exc:  # reported to each stream
                for i, _ in batch:
                    send(i, exc)
                continue
            for (i, state), hyp in zip(batch, hyps, strict=True):
                send(i, finish(state, hyp))

    def _accept(self, chunk: Chunk) -> tuple[str, StreamState]:
        # an END or FLUSH may come without audio (all of it went out already)
        self.check_chunk(chunk.audio, chunk.end or chunk.flush, chunk.language)
        state = self.streams.get(chunk.corrid)
        if chunk.start or state is None:
            language = chunk.language
            state = StreamState(language=None if language == "auto" else
                                (language or self.settings.default_language))
            self.streams[chunk.corrid] = state
        state.touched = time.monotonic()
        state.audio = np.concatenate([state.audio, chunk.audio.astype(np.float32, copy=False)])
        state.since_partial += chunk.audio.size
        state.cut_at = None
        if chunk.end or chunk.flush:
            if chunk.end:
                self.streams.pop(chunk.corrid, None)
            else:
                state.since_partial = 0  # the flush decodes everything heard so far
            if state.flushed is not None and _quiet(state.audio[state.flushed[1]:]):
                return "flushed", state
            state.flushed = None
            if state.audio.size < SAMPLE_RATE // 10:
                return "short", state
            if self._reusable(state):
                return "reuse", state
            return "final", state
        if state.audio.size > self.settings.max_window:
            return "cut", state
        if state.since_partial >= self.partial_every:
            state.since_partial = 0
            return "partial", state
        return "none", state

    def expire_idle(self, now: float | None = None) -> None:
        """Drop streams whose client vanished (the sequence batcher has released them)."""
        cutoff = (time.monotonic() if now is None else now) - IDLE_EXPIRY_S
        for corrid in [c for c, s in self.streams.items() if s.touched < cutoff]:
            del self.streams[corrid]

    # -- answers ----------------------------------------------------------------------------
    def _language(self, state: StreamState) -> str | None:
        return "en" if self.settings.english_only else state.language

    @staticmethod
    def _window(state: StreamState) -> np.ndarray:
        return state.audio if state.cut_at is None else state.audio[:state.cut_at]

    def _final(self, state: StreamState, hyp: Hypothesis) -> Result:
        segments = clean_segments(hyp.segments, state.audio.size / SAMPLE_RATE)
        text, details = describe(state.offset_s, segments, hyp.language, state.audio.size)
        if state.committed:  # the stable prefix was decoded with words already
            tail = details["segments"]
            if tail and _norm(tail[0]["text"]) == _norm(state.committed[-1]["text"]):
                tail = tail[1:]  # the committed sentence said again over silence
            details["segments"] = state.committed + tail
            details["start"] = state.start_s
            text = join_text(state.committed_text, text)
        return text, True, details

    def _reusable(self, state: StreamState) -> bool:
        """Whether the final can be the last partial with its words timed: it decoded
        with timestamps (stable commits on), it does not loop (greedy decoding of a
        window ending in silence may start over: a final decode is cleaner), and only
        silence came after its window."""
        last = state.last
        if not (self.settings.stable_commit and last is not None and last.segments
                and last.decoded is not None and hasattr(self.decoder, "commit")):
            return False
        raw = " ".join(seg.text.strip() for seg in last.segments)
        if drop_echo_tail(drop_repeats(raw)) != raw or \
                len(clean_segments(last.segments, state.last_samples / SAMPLE_RATE)) != \
                len(last.segments):
            return False
        return _quiet(state.audio[state.last_samples:])

    def _partial(self, state: StreamState, hyp: Hypothesis, commits: list) -> Result:
        state.last, state.last_samples = hyp, state.audio.size
        state.flushed = None  # more was heard since (and commits move the audio)
        text = join_text(state.committed_text, drop_echo_tail(hyp.text))
        if self.settings.stable_commit:
            agreed = agreed_prefix(state.previous, hyp.segments)
            state.previous = [_norm(s.text) for s in hyp.segments]
            if agreed and state.audio.size >= self.settings.stable_commit:
                cut = int(hyp.segments[agreed].start * SAMPLE_RATE)
                if 0 < cut < state.audio.size:
                    state.cut_at = cut
                    state.agreed = agreed
                    commits.append((hyp, state))
        if text != state.last_partial:
            state.last_partial = text
            return text, False, {"start": state.start_s}
        return "", False, {}

    def _commit(self, state: StreamState, hyp: Hypothesis) -> None:
        """Finalize the agreed prefix (with word timestamps) and drop its audio: later
        partials decode only the open tail."""
        cut = state.cut_at
        segments = clean_segments(hyp.segments, cut / SAMPLE_RATE)
        text, details = describe(state.offset_s, segments, hyp.language, cut)
        state.committed += details["segments"]
        state.committed_text = join_text(state.committed_text, text)
        state.audio = state.audio[cut:]
        state.offset_s += cut / SAMPLE_RATE
        state.previous = state.previous[state.agreed:]
        state.cut_at, state.last = None, None

    def _cut(self, state: StreamState, hyp: Hypothesis) -> Result:
        """An over-long window with no agreed prefix: finalize all but the last segment.
        With stable commits the cut joins the committed prefix (one final per
        utterance); without, it is sent as a final of its own."""
        segments = clean_segments(hyp.segments, state.audio.size / SAMPLE_RATE)
        done, keep_from = window_cut(segments, state.audio.size)
        text, details = describe(state.offset_s, done, hyp.language, keep_from)
        state.audio = state.audio[keep_from:]
        state.offset_s += keep_from / SAMPLE_RATE
        state.since_partial = 0
        state.previous, state.last, state.flushed = [], None, None
        if self.settings.stable_commit:
            state.committed += details["segments"]
            state.committed_text = join_text(state.committed_text, text)
            state.last_partial = state.committed_text
            return state.committed_text, False, {"start": state.start_s}
        state.last_partial = ""
        state.start_s = state.offset_s
        return text, True, details
