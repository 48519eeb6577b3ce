"""Unit tier: semantic end of turn (policy, eagerness, failures) and the language route,
on scripted fakes and a fake clock."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import frames as F
from pipelines.agent import AgentConfig, VoiceAgent
from pipelines.languages import answer_in, multilingual_stt
from pipelines.router import ModelRouter
from pipelines.services import Transcript
from pipelines.turns import SEMANTIC, SemanticTurn, TurnDetector, transcript_verdict
from pipelines.vad import VadConfig
from streaming.events import ProtocolError, parse_event
from tests.fakes import (
    FakeClock,
    FakeSTT,
    FakeTTS,
    energy_classifier,
    fake_services,
    feed,
    settle,
    silence,
    speech,
)
from triton_models.common.turn_features import WINDOW, last_window, log_mel

POLICY = SemanticTurn("test", complete_ms=300, incomplete_ms=2000, unknown_ms=500)


class FakeJudge:
    """Answers after ``latency_s`` on the fake clock: the scripted probabilities in
    order (the last one repeats); records the audio it was asked about."""

    def __init__(self, clock: FakeClock, *probabilities: float, latency_s: float = 0.05,
                 fail: bool = False) -> None:
        self.clock, self.latency_s, self.fail = clock, latency_s, fail
        self.probabilities = list(probabilities)
        self.asked: list[np.ndarray] = []

    async def complete(self, audio: np.ndarray) -> float:
        self.asked.append(audio)
        await self.clock.sleep(self.latency_s)
        if self.fail:
            from pipelines.triton_client import TritonUnavailable

            raise TritonUnavailable("Triton unavailable: scripted failure")
        return self.probabilities.pop(0) if len(self.probabilities) > 1 else \
            self.probabilities[0]


def semantic_agent(clock: FakeClock, judge: FakeJudge | None, policy: SemanticTurn = POLICY,
                   **config) -> VoiceAgent:
    services = fake_services(clock)
    services.turn = judge
    vad = VadConfig(silence_ms=policy.incomplete_ms)
    return VoiceAgent(services, AgentConfig(vad=vad, semantic=policy, **config), clock=clock,
                      vad_classifier=energy_classifier)


def stops(frames: list) -> list[F.SpeechStopped]:
    return [f for f in frames if isinstance(f, F.SpeechStopped)]


def drain(agent: VoiceAgent) -> list:
    out = []
    while not agent.frames.empty():
        out.append(agent.frames.get_nowait())
    return out


async def test_incomplete_pause_does_not_end_the_turn_complete_one_ends_it_soon():
    clock = FakeClock()
    judge = FakeJudge(clock, 0.1, 0.9)  # first pause: mid-sentence; second: done
    agent = semantic_agent(clock, judge)
    # "I would like to book a table for ... four people."
    await feed(agent, clock, np.concatenate([silence(0.2), speech(1.0), silence(0.8)]))
    assert stops(drain(agent)) == []  # 800 ms of silence, but the model said incomplete
    assert agent.end_of_turn.verdicts == [(0.1, 2000)]
    await feed(agent, clock, speech(0.6))
    assert agent.turns.end_silence_ms == 2000  # speech resumed: the long silence again
    await feed(agent, clock, silence(0.28))
    assert stops(drain(agent)) == []
    await feed(agent, clock, silence(0.04))  # 320 ms: the short silence has passed
    stopped = stops(drain(agent))
    assert len(stopped) == 1 and stopped[0].audio_end_ms == 2600
    assert agent.end_of_turn.verdicts[-1] == (0.9, 300)
    # the judge heard the turn so far: pre-roll + speech + the 120 ms of pause
    assert judge.asked[0].size == pytest.approx(16000 * (0.2 + 1.0 + 0.12), abs=320)
    await agent.close()


async def test_incomplete_verdict_still_ends_the_turn_after_the_long_silence():
    clock = FakeClock()
    agent = semantic_agent(clock, FakeJudge(clock, 0.2))
    await feed(agent, clock, np.concatenate([speech(1.0), silence(1.9)]))
    assert stops(drain(agent)) == []
    await feed(agent, clock, silence(0.2))
    assert [s.audio_end_ms for s in stops(drain(agent))] == [1000]
    await agent.close()


@pytest.mark.parametrize("judge_kind", ["failing", "absent"])
async def test_without_a_verdict_the_turn_ends_on_the_plain_silence(judge_kind, caplog):
    clock = FakeClock()
    judge = FakeJudge(clock, 0.9, fail=True) if judge_kind == "failing" else None
    agent = semantic_agent(clock, judge)
    await feed(agent, clock, np.concatenate([speech(1.0), silence(0.48)]))
    assert stops(drain(agent)) == []
    await feed(agent, clock, silence(0.04))
    assert len(stops(drain(agent))) == 1
    assert agent.end_of_turn.verdicts == [(None, 500)]
    if judge_kind == "failing":
        assert "end-of-turn model unavailable" in caplog.text
    await agent.close()


async def test_a_verdict_for_a_pause_the_user_talked_through_is_dropped():
    clock = FakeClock()
    judge = FakeJudge(clock, 0.95, latency_s=0.3)  # slow model
    agent = semantic_agent(clock, judge)
    await feed(agent, clock, np.concatenate([speech(1.0), silence(0.2), speech(1.0),
                                             silence(0.2)]))
    # the first question was cancelled when speech resumed (its answer never applied);
    # the second is still pending
    assert agent.end_of_turn.verdicts == []
    await feed(agent, clock, silence(0.26))  # the second answer: complete
    assert agent.end_of_turn.verdicts == [(0.95, 300)]
    assert len(stops(drain(agent))) == 1
    await agent.close()


async def test_semantic_reply_starts_sooner_than_a_long_server_vad_silence():
    """The speculative reply (started at the pause) is released at the short silence."""
    clock = FakeClock()
    agent = semantic_agent(clock, FakeJudge(clock, 0.9))
    await feed(agent, clock, np.concatenate([speech(1.0), silence(1.0)]))
    frames = drain(agent)
    stopped_at = [i for i, f in enumerate(frames) if isinstance(f, F.SpeechStopped)]
    audio_at = [i for i, f in enumerate(frames) if isinstance(f, F.ResponseAudioDelta)]
    assert stopped_at and audio_at and audio_at[0] > stopped_at[0]
    await agent.close()


def test_vad_end_silence_is_reset_when_speech_resumes():
    det = TurnDetector(VadConfig(silence_ms=2000), energy_classifier)
    det.feed(np.concatenate([speech(0.5), silence(0.2)]))
    det.end_silence_ms = 300
    det.feed(speech(0.3))
    assert det.end_silence_ms == 2000
    det.end_silence_ms = 300
    kinds = [e.kind for e in det.feed(silence(0.4)) if e.kind != "audio"]
    assert kinds == ["paused", "stopped"]
    assert det.recent_audio().size == 0 or det.recent_audio().size <= 8 * 16000


def test_recent_audio_keeps_the_last_8_seconds_of_the_turn():
    det = TurnDetector(VadConfig(silence_ms=2000), energy_classifier)
    det.feed(np.concatenate([silence(0.3), speech(10.0)]))
    assert det.recent_audio().size == 8 * 16000


class SaysSTT(FakeSTT):
    """Its finals say ``text``."""

    def __init__(self, clock: FakeClock, text: str) -> None:
        super().__init__(clock)
        self.text = text

    def final(self, heard: str) -> Transcript:
        return Transcript(self.text, True)


def test_transcript_verdict():
    assert transcript_verdict("I would like to book a table for.") is False
    assert transcript_verdict("So I was thinking that maybe we could") is False
    assert transcript_verdict("What is the capital of France?") is True
    assert transcript_verdict("आज मौसम कैसा है।") is True
    assert transcript_verdict("four people tonight") is None
    assert transcript_verdict("") is None


@pytest.mark.parametrize("said, p, ends_after_ms", [
    ("I would like to book a table for.", 0.9, 2000),  # the words win: mid-sentence
    ("What is the capital of France?", 0.1, 300),  # a finished sentence, model unsure
    ("one two three", 0.9, 300),  # words tell nothing: the model decides
    ("one two three", 0.1, 2000),
])
async def test_the_words_so_far_and_the_model_decide_together(said, p, ends_after_ms):
    clock = FakeClock()
    agent = semantic_agent(clock, FakeJudge(clock, p))
    agent.services.stt = SaysSTT(clock, said)
    await feed(agent, clock, np.concatenate([speech(1.0), silence(2.2)]))
    stopped = stops(drain(agent))
    assert len(stopped) == 1 and stopped[0].audio_end_ms == 1000
    assert agent.end_of_turn.verdicts == [(p, ends_after_ms)]
    await agent.close()


# -- the protocol ------------------------------------------------------------------------
def _update(td: dict):
    return parse_event(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": td}}}}), max_bytes=1 << 20).body


def test_semantic_vad_eagerness_is_parsed_and_checked():
    td = _update({"type": "semantic_vad", "eagerness": "high"}).session.turn_detection
    assert (td.type, td.eagerness) == ("semantic_vad", "high")
    assert _update({"type": "semantic_vad"}).session.turn_detection.eagerness is None
    for bad in ({"type": "semantic_vad", "eagerness": "eager"},
                {"type": "server_vad", "eagerness": "low"},
                {"type": "semantic_vad", "eagerness": 3}):
        with pytest.raises(ProtocolError) as err:
            _update(bad)
        assert err.value.code == "invalid_turn_detection"


async def test_session_update_maps_eagerness_onto_the_policy_and_back():
    from streaming.realtime import RealtimeSession

    clock = FakeClock()
    events: list[dict] = []

    async def send(event: dict) -> None:
        events.append(event)

    session = RealtimeSession(send, None, services=fake_services(clock), clock=clock)
    await session.start()
    for eagerness, policy in (("low", SEMANTIC["low"]), ("high", SEMANTIC["high"])):
        await session.handle(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "semantic_vad", "eagerness": eagerness}}}}}))
        await settle()
        cfg = session.agent.config
        assert cfg.semantic == policy and cfg.vad.silence_ms == policy.incomplete_ms
        td = events[-1]["session"]["audio"]["input"]["turn_detection"]
        assert td["type"] == "semantic_vad" and td["eagerness"] == eagerness
    assert SEMANTIC["high"].complete_ms < SEMANTIC["auto"].complete_ms \
        < SEMANTIC["low"].complete_ms
    await session.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}}))
    await settle()
    cfg = session.agent.config
    assert cfg.semantic is None and cfg.vad.silence_ms == VadConfig.silence_ms
    assert session.agent.end_of_turn is None
    await session.close()


# -- languages ---------------------------------------------------------------------------
async def test_multilingual_whisper_for_any_language_but_english():
    assert [multilingual_stt(x) for x in (None, "", "en", "en-US", "hi", "auto", "ta")] == \
        [False, False, False, False, True, True, True]
    router = ModelRouter("a:1", {"stt": "stt-host:1"})
    assert router.route("stt_multilingual").model == "whisper_base"
    assert router.route("turn").model == "smart_turn"
    # served where STT is
    assert router.route("turn").client is router.route("stt").client


def test_the_llm_is_told_the_users_language():
    said = answer_in("Be brief.", "hi")
    assert said.startswith("Be brief.") and "Hindi" in said and "Devanagari" in said
    assert answer_in("Be brief.", "en") == answer_in("Be brief.", "auto") == "Be brief."


class LanguageTTS(FakeTTS):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.languages: list[str | None] = []

    def synthesize(self, text: str, *, voice: str | None, language: str | None):
        self.languages.append(language)
        return super().synthesize(text, voice=voice, language=language)


class HindiSTT(FakeSTT):
    """Hears Hindi: the final carries Devanagari and the detected language."""

    def final(self, heard: str) -> Transcript:
        return Transcript("नमस्ते", True, {"language": "hi"})


@pytest.mark.parametrize("language", ["hi", "auto"])
async def test_reply_in_the_users_language(language):
    clock = FakeClock()
    services = fake_services(clock)
    services.stt, services.tts = HindiSTT(clock), LanguageTTS(clock)
    agent = VoiceAgent(services, AgentConfig(language=language, tts_language=language),
                       clock=clock, vad_classifier=energy_classifier)
    await feed(agent, clock, np.concatenate([speech(1.0), silence(1.5)]))
    await clock.advance(2.0)
    system = services.llm.requests[-1][0]["content"]
    assert "Hindi" in system and "Devanagari" in system
    assert agent.reply_language == "hi"
    assert services.tts.languages[-1] == "hi"
    await agent.close()


# -- the model's input -------------------------------------------------------------------
def test_features_see_the_last_8_s_padded_at_the_start():
    short = np.ones(16000, np.float32)
    window = last_window(short)
    assert window.size == WINDOW and not window[:-16000].any() and window[-16000:].all()
    long = np.arange(WINDOW + 500, dtype=np.float32)
    assert last_window(long)[0] == 500
    rng = np.random.default_rng(0)
    mel = log_mel(rng.standard_normal(3 * 16000).astype(np.float32) * 0.1)
    assert mel.shape == (80, 800) and mel.dtype == np.float32
    assert np.isfinite(mel).all() and mel.max() - mel.min() <= 2.0 + 1e-6  # 8 log10 / 4
    # silence before the speech is the floor; the speech at the end is above it
    assert mel[:, :400].mean() < mel[:, -200:].mean()


def test_segments_in_other_scripts_survive_the_clean_up():
    """Whisper's Hindi comes in Devanagari: it must not be dropped as "empty"."""
    from triton_models.common.whisper_stream import SCRIPT_PROMPTS, Seg, clean_segments

    segs = [Seg(0.0, 1.0, " नमस्ते दोस्तों"), Seg(1.0, 2.0, " नमस्ते दोस्तों"),
            Seg(2.0, 3.0, " आज मौसम अच्छा है।")]
    assert [s.text for s in clean_segments(segs, 3.0)] == [" नमस्ते दोस्तों",
                                                           " आज मौसम अच्छा है।"]
    assert all(not p.isascii() for p in SCRIPT_PROMPTS.values())
