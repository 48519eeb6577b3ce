"""The Triton models' pure helpers (triton_models/common), offline: no tritonserver."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from rtmedia_models_common.llm_text import SentenceBudget, check_max_tokens, parse_messages
from rtmedia_models_common.tts_text import (
    alignment,
    choose_voice,
    piper_phonemes,
    spread_phonemes,
)
from rtmedia_models_common.whisper_stream import (
    SAMPLE_RATE,
    StreamingTranscriber,
    WhisperSettings,
    clean_segments,
    describe,
    drop_repeats,
    encoder_frames,
    join_text,
    token_budget,
    window_cut,
)

from streaming.triton_server import render_repository

REPO = Path(__file__).resolve().parent.parent
COMMON_MODULES = ("sentences", "llm_text", "tts_text", "whisper_stream")


# -- the model files find common/ ------------------------------------------------------
def _import_model(path: Path, monkeypatch):
    """Import a model.py as Triton would, with a stand-in for the backend's utils."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in COMMON_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location(f"model_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["stt/whisper", "stt/whisper_base", "tts/piper", "agent/llm"])
def test_rendered_models_import_common_from_the_rendered_repository(model, tmp_path,
                                                                    monkeypatch):
    render_repository(tmp_path / "repo", "cpu")
    assert (tmp_path / "repo" / "common" / "sentences.py").is_file()
    module = _import_model(tmp_path / "repo" / model / "1" / "model.py", monkeypatch)
    assert hasattr(module, "TritonPythonModel")
    loaded = [sys.modules[n].__file__ for n in COMMON_MODULES if n in sys.modules]
    assert loaded and all(f.startswith(str(tmp_path / "repo" / "common")) for f in loaded)


@pytest.mark.parametrize("model", ["llm", "llm_qwen", "llm_qwen15"])
def test_llm_contexts_run_one_cpu_thread_each(model):
    """Three contexts (parallel auto on CPU) with two llama.cpp threads each put more
    OpenMP threads in the stub than cores, and libgomp then sleeps at every barrier:
    a reply alone took 42 ms a token, against 25 with one thread each."""
    config = (REPO / "triton_models" / "agent" / model / "config.pbtxt").read_text()
    assert 'key: "n_threads", value: { string_value: "1" }' in config


def test_whisper_base_runs_the_whisper_model_code():
    assert (REPO / "triton_models/stt/whisper_base/1/model.py").resolve() == \
        (REPO / "triton_models/stt/whisper/1/model.py").resolve()


# -- whisper ------------------------------------------------------------------------------
@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float = 0.9


@dataclass
class Seg:
    start: float
    end: float
    text: str
    words: list = field(default_factory=list)


class FakeWhisper:
    """Scripted decoder: records each call, answers from ``script(audio, kwargs)``."""

    def __init__(self, script):
        self.script = script
        self.calls: list[dict] = []
        self.frames = None

    def transcribe(self, audio, **kw):
        self.calls.append({"samples": audio.size, "frames": self.frames, **kw})
        return iter(self.script(audio, kw)), types.SimpleNamespace(language="en")


def _sec(s: float) -> np.ndarray:
    return np.zeros(int(s * SAMPLE_RATE), np.float32)


def test_drop_repeats_and_clean_segments():
    assert drop_repeats("Thank you. Thank you! Bye.") == "Thank you. Bye."
    segs = [Seg(0, 1, " Hello there."), Seg(1, 2, " hello there"), Seg(2, 2.5, " ..."),
            Seg(2.5, 3, " Bye."), Seg(3.0, 3.5, " ghost")]
    assert [s.text for s in clean_segments(segs, duration_s=3.02)] == [" Hello there.",
                                                                      " Bye."]
    # a decode that starts over after the question (seen in finals of the voice agent)
    echo = [Seg(0, 1.8, " What is the capital of France?"), Seg(1.8, 2.2, " What is the")]
    assert [s.text for s in clean_segments(echo, 2.5)] == [" What is the capital of France?"]
    twice = [*echo[:1], Seg(1.8, 2.0, " What is the capital of France?"), Seg(2.0, 2.2, " What")]
    assert [s.text for s in clean_segments(twice, 2.5)] == [" What is the capital of France?"]
    # an unfinished last segment that does not restart the one before it stays
    assert len(clean_segments([Seg(0, 1, " Hello."), Seg(1, 2, " And you")], 2.5)) == 2
    text, _ = describe(0.0, [Seg(0, 2, " What is the capital? What is the")], "en", 40000)
    assert text == "What is the capital?"
    # the loop spread over two segments (seen in a final of the avatar page's question)
    text, _ = describe(0.0, [Seg(0, 1.88, " What is the capital and France?"),
                             Seg(1.88, 2.02, " What is the capital and France? What")],
                       "en", 32640)
    assert text == "What is the capital and France?"
    assert join_text("What is the capital of France?",
                     "What is the capital of France?") == "What is the capital of France?"
    assert join_text("What is the capital of France?", "What is") == \
        "What is the capital of France?"
    assert join_text("It is late.", "Good night.") == "It is late. Good night."


def test_budgets_and_encoder_frames():
    assert token_budget(SAMPLE_RATE * 2) == 28
    assert encoder_frames(1) == 200  # 1 s of content (rounded up) + 1 s
    assert encoder_frames(SAMPLE_RATE * 3) == 400
    assert encoder_frames(SAMPLE_RATE * 60) == 3000  # never past Whisper's 30 s


def test_describe_puts_words_on_the_stream_timeline():
    segs = [Seg(0.5, 1.5, " Hi there.", [Word(" Hi", 0.5, 0.8), Word(" there.", 0.8, 1.5)])]
    text, details = describe(10.0, segs, "en", SAMPLE_RATE * 2)
    assert text == "Hi there."
    assert details["end"] == 12.0 and details["language"] == "en"
    assert details["segments"][0]["words"] == [
        {"word": "Hi", "start": 10.5, "end": 10.8, "p": 0.9},
        {"word": "there.", "start": 10.8, "end": 11.5, "p": 0.9}]


def test_window_cut_keeps_the_last_segment_open():
    segs = [Seg(0, 5, "a"), Seg(5, 9, "b"), Seg(9.5, 21, "c")]
    done, keep = window_cut(segs, 21 * SAMPLE_RATE)
    assert [s.text for s in done] == ["a", "b"] and keep == int(9.5 * SAMPLE_RATE)
    done, keep = window_cut(segs[:1], 21 * SAMPLE_RATE)
    assert len(done) == 1 and keep == 21 * SAMPLE_RATE


def test_transcriber_partials_then_final():
    model = FakeWhisper(lambda audio, kw: [Seg(0, audio.size / SAMPLE_RATE, " Hello world.",
                                               [Word(" Hello", 0, 0.4)])])
    t = StreamingTranscriber(model, WhisperSettings(english_only=True))
    assert t.handle(7, _sec(0.3), start=True, end=False, language=None) == ("", False, {})
    assert t.handle(7, _sec(0.3), start=False, end=False, language=None) == (
        "Hello world.", False, {"start": 0.0})
    assert model.calls[-1]["without_timestamps"] and model.calls[-1]["language"] == "en"
    assert model.calls[-1]["frames"] == 200  # trimmed encoder input
    # the same partial again is not sent twice
    assert t.handle(7, _sec(0.5), start=False, end=False, language=None)[0] == ""
    text, final, details = t.handle(7, _sec(0.4), start=False, end=True, language=None)
    assert (text, final) == ("Hello world.", True)
    assert model.calls[-1]["word_timestamps"] and details["end"] == 1.5
    assert 7 not in t.streams


def test_transcriber_commits_an_over_long_window():
    def script(audio, kw):
        n = audio.size / SAMPLE_RATE
        return [Seg(0, 4, " One."), Seg(4, n - 1, " Two."), Seg(n - 1, n, " Three")]

    t = StreamingTranscriber(FakeWhisper(script), WhisperSettings(max_window=6 * SAMPLE_RATE))
    t.handle(1, _sec(4), start=True, end=False, language=None)
    text, final, details = t.handle(1, _sec(3), start=False, end=False, language=None)
    assert (text, final) == ("One. Two.", True) and details["end"] == 6.0
    state = t.streams[1]
    assert state.offset_s == 6.0 and state.audio.size == SAMPLE_RATE
    # later finals are on the stream timeline
    _, _, details = t.handle(1, _sec(0.5), start=False, end=True, language=None)
    assert details["start"] == 6.0 and details["segments"][0]["start"] == 6.0


def test_transcriber_rejects_bad_chunks_and_keeps_languages():
    model = FakeWhisper(lambda audio, kw: [])
    t = StreamingTranscriber(model, WhisperSettings(english_only=True,
                                                    max_chunk=2 * SAMPLE_RATE))
    with pytest.raises(ValueError, match="longer than"):
        t.handle(1, _sec(3), start=True, end=False, language=None)
    with pytest.raises(ValueError, match="AUDIO is empty"):
        t.handle(1, _sec(0), start=True, end=False, language=None)
    with pytest.raises(ValueError, match="NaN"):
        t.handle(1, np.full(10, np.nan, np.float32), start=True, end=False, language=None)
    with pytest.raises(ValueError, match="English-only"):
        t.handle(1, _sec(1), start=True, end=False, language="hi")
    assert t.streams == {}
    multi = StreamingTranscriber(model, WhisperSettings(default_language="en"))
    multi.handle(2, _sec(0.05), start=True, end=False, language="auto")
    multi.handle(3, _sec(0.05), start=True, end=False, language="hi")
    multi.handle(4, _sec(0.05), start=True, end=False, language=None)
    assert [multi.streams[i].language for i in (2, 3, 4)] == [None, "hi", "en"]
    # an END with too little audio decodes nothing
    assert multi.handle(4, _sec(0), start=False, end=True, language=None)[0] == ""
    assert len(model.calls) == 0
    multi.expire_idle(now=multi.streams[2].touched + 181)
    assert multi.streams == {}


# -- tts ----------------------------------------------------------------------------------
VOICES = {"joe": object(), "amy": object()}
LANGS = {"en_us": "joe", "en": "joe", "de": "amy"}


def _voice(voice="", language="", text="Hi.", speed=1.0, espeak=True):
    return choose_voice(text, voice, language, speed, max_chars=100, voices=VOICES,
                        languages=LANGS, default_voice="joe", espeak=espeak)


def test_choose_voice():
    assert _voice() == ("Hi.", "joe", "en", 1.0)
    assert _voice(language="DE")[1:3] == ("amy", "de")
    assert _voice(language="en-GB")[1] == "joe"
    assert _voice(language="hi")[1] == "espeak"
    assert _voice(voice="amy", language="hi")[1] == "amy"
    for kw, match in [({"text": " "}, "TEXT is empty"), ({"text": "x" * 101}, "maximum is 100"),
                      ({"speed": 5.0}, "outside"), ({"voice": "bob"}, "unknown VOICE"),
                      ({"language": "xx"}, "no voice for language"),
                      ({"language": "hi", "espeak": False}, "no voice for language"),
                      ({"voice": "espeak", "espeak": False}, "not installed")]:
        with pytest.raises(ValueError, match=match):
            _voice(**kw)


def test_piper_phonemes_skip_pauses_but_keep_their_time():
    A = types.SimpleNamespace
    al = [A(phoneme="^", num_samples=100), A(phoneme="h", num_samples=200),
          A(phoneme=" ", num_samples=100), A(phoneme="i", num_samples=300),
          A(phoneme="$", num_samples=100)]
    assert piper_phonemes(al, 1000) == [["h", 0.1, 0.3], ["i", 0.4, 0.7]]
    assert piper_phonemes(None, 1000) == []


def test_spread_phonemes_and_alignment():
    assert spread_phonemes("nˈa ː m\n", 0.3) == [["n", 0.0, 0.1], ["a", 0.1, 0.2],
                                                 ["m", 0.2, 0.3]]
    assert spread_phonemes("", 1.0) == []
    rec = alignment("Hi.", 1.23456, 0.5, "joe", [])
    assert rec == {"text": "Hi.", "offset_s": 1.2346, "duration_s": 0.5, "voice": "joe",
                   "phonemes": []}
    json.dumps(rec)


# -- llm ----------------------------------------------------------------------------------
def test_parse_messages():
    ok = [{"role": "user", "content": "Hi"}]
    assert parse_messages(json.dumps(ok).encode(), 1000) == ok
    with pytest.raises(ValueError, match="maximum is 10"):
        parse_messages(json.dumps(ok).encode(), 10)
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_messages(b"not json", 1000)
    with pytest.raises(ValueError, match="non-empty JSON list"):
        parse_messages(b'[{"role": "x", "content": "a"}]', 1000)
    with pytest.raises(ValueError, match="non-empty JSON list"):
        parse_messages(b"[]", 1000)
    assert check_max_tokens(5, 10) == 5
    with pytest.raises(ValueError, match=r"outside 1\.\.10"):
        check_max_tokens(11, 10)


def _words(text: str) -> list[str]:
    """One 'token' per word, spaces leading, as chat models stream them."""
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w if i == 0 else " " + w)
    return out


def _run(text: str, max_tokens: int, margin: int, grace: int, eos: bool = True):
    budget = SentenceBudget(max_tokens, margin, grace)
    sent = []
    tokens = _words(text)[:budget.limit]
    for tok in tokens:
        out = budget.push(tok)
        if out:
            sent.append(out)
        if budget.done:
            break
    tail = budget.finish(model_stopped=eos and len(tokens) < budget.limit)
    if tail:
        sent.append(tail)
    return sent, budget


REPLY = ("Paris is the capital. It has many old museums and parks. "
         "Visitors come in spring because the weather is mild and the days")


def test_budget_streams_every_token_while_it_is_ample():
    sent, budget = _run("Paris is the capital.", 100, margin=10, grace=5)
    assert sent == ["Paris", " is", " the", " capital."] and budget.reason == "stop"


def test_budget_holds_back_near_the_limit_and_finishes_the_sentence_in_grace():
    # limit 8: the second sentence (tokens 5..11) ends within the grace.
    sent, budget = _run(REPLY, 8, margin=4, grace=5)
    assert sent == ["Paris", " is", " the", " capital.", " It has many old museums and parks."]
    assert budget.reason == "length" and budget.tokens == 12  # saw " Visitors": ended


def test_budget_drops_an_unfinished_tail_when_the_grace_runs_out():
    sent, budget = _run(REPLY, 14, margin=4, grace=5)
    assert "".join(sent) == "Paris is the capital. It has many old museums and parks."
    assert budget.reason == "length" and budget.tokens == 19


def test_budget_releases_held_text_when_the_model_ends_the_reply():
    sent, budget = _run("Paris is the capital. It is big and old", 8, margin=6, grace=5)
    assert "".join(sent) == "Paris is the capital. It is big and old"
    assert budget.reason == "stop"


def test_budget_does_not_take_an_abbreviation_for_a_sentence_end():
    text = "Yes, I can. I met Dr. Smith at 5 p.m. on Monday. Then we"
    sent, budget = _run(text, 6, margin=3, grace=8)
    assert sent == ["Yes,", " I", " can.", " I met Dr. Smith at 5 p.m. on Monday."]
    assert budget.reason == "length"


def test_budget_margin_is_at_most_half_the_budget():
    sent, budget = _run(REPLY, 8, margin=100, grace=5)
    assert sent[:4] == ["Paris", " is", " the", " capital."]  # streamed at once
    assert "".join(sent) == "Paris is the capital. It has many old museums and parks."
    assert budget.margin == 4


def test_budget_sends_a_fragment_rather_than_nothing():
    sent, budget = _run("one two three four five six seven eight nine ten", 3, margin=2,
                        grace=2)
    assert "".join(sent) == "one two three four five" and budget.reason == "length"


def test_budget_when_the_generator_stops_at_its_own_limit():
    budget = SentenceBudget(4, margin=2, grace=3)
    assert [budget.push(tok) for tok in ["Yes.", " Of", " it", " is"]] == [
        "Yes.", " Of", "", ""]
    assert not budget.done
    # " Of" went out before the margin; " it is" is held and dropped.
    assert budget.finish(model_stopped=False) == "" and budget.reason == "length"


# -- the LLM's prompt cache: one saved state per conversation ----------------------------
@dataclass
class _State:
    llama_state_size: int = 1000


def _llm_cache(tmp_path, monkeypatch, capacity: int = 1 << 30):
    render_repository(tmp_path / "repo", "cpu")
    module = _import_model(tmp_path / "repo" / "agent" / "llm" / "1" / "model.py", monkeypatch)
    return module.conversation_cache(capacity)


def _turns(cache, conversation: str | None, histories: list[list[int]]) -> None:
    """Each history as one turn would: look up its prefix, then save prompt + reply."""
    for tokens in histories:
        cache.begin(conversation)
        if tokens in cache:
            cache[tokens]
        cache[[*tokens, 9, 9]] = _State()


def test_prompt_cache_keeps_a_conversations_newest_state_after_its_history_is_cut(
        tmp_path, monkeypatch):
    system = list(range(100, 140))  # the instructions every session shares
    long = system + list(range(1, 60))
    cut = system + list(range(40, 70))  # the client halved its history: little is shared
    for conversation in ("session-a", None):
        cache = _llm_cache(tmp_path, monkeypatch)
        _turns(cache, conversation, [long, [*long, 1, 2, 3], cut, [*cut, 4, 5]])
        if conversation:  # named: the old version goes when the new one is saved
            assert list(cache.cache_state) == [tuple([*cut, 4, 5, 9, 9])]
        else:  # unnamed: only extensions replace their source
            assert len(cache.cache_state) == 2


def test_prompt_cache_never_drops_another_conversations_state(tmp_path, monkeypatch):
    system = list(range(100, 140))
    cache = _llm_cache(tmp_path, monkeypatch)
    _turns(cache, "a", [[*system, 1, 2]])
    _turns(cache, "b", [[*system, 1, 2, 3]])  # served from a's state (longest prefix)
    _turns(cache, "a", [[*system, 1, 2, 9, 9, 5]])
    assert set(cache.cache_state) == {tuple([*system, 1, 2, 3, 9, 9]),
                                      tuple([*system, 1, 2, 9, 9, 5, 9, 9])}
    assert cache.conversations() == 2


def test_prompt_cache_forgets_ids_of_evicted_states(tmp_path, monkeypatch):
    cache = _llm_cache(tmp_path, monkeypatch, capacity=5 * 1000)
    for i in range(100):
        _turns(cache, f"session-{i}", [[i, i + 1, i + 2]])
    assert len(cache.cache_state) == 5
    assert cache.conversations() <= 2 * 5 + 16 + 1
