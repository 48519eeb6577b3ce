"""Unit tier: the voice agent's real stages on scripted fakes and a fake clock (offline)."""

from __future__ import annotations

import asyncio
import itertools
import logging

import numpy as np
import pytest

from pipelines import frames as F
from pipelines.agent import AgentConfig, VoiceAgent
from pipelines.conversation import Conversation, Span, heard_text
from pipelines.ids import new_id
from pipelines.turns import TurnDetector
from pipelines.vad import VadConfig
from tests.fakes import (
    FakeClock,
    FakeSTT,
    FakeTrackSink,
    energy_classifier,
    fake_services,
    feed,
    silence,
    speech,
)

LONG_REPLY = ("Once upon a time a small dragon lived by the sea and every morning it "
              "counted the boats that sailed past its cave near the old lighthouse.")


def make_agent(clock: FakeClock, *, sink=None, reply: str | None = None, llm: dict | None = None,
               **config):
    llm = dict(llm or {})
    if reply is not None:
        llm["reply"] = reply
    services = fake_services(clock, **llm)
    agent = VoiceAgent(services, AgentConfig(**config), sink=sink, clock=clock,
                       session_id="sess_unit", vad_classifier=energy_classifier)
    return agent, services


def drain(agent: VoiceAgent) -> list[F.Frame]:
    out = []
    while not agent.frames.empty():
        out.append(agent.frames.get_nowait())
    return out


def kinds(frames: list[F.Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


# -- turn detection ----------------------------------------------------------------------
def turn_events(audio: np.ndarray, **vad) -> list[tuple[str, int]]:
    det = TurnDetector(VadConfig(**vad), energy_classifier)
    return [(e.kind, e.at_ms) for e in det.feed(audio) if e.kind != "audio"]


def test_vad_start_pause_stop():
    events = turn_events(np.concatenate([silence(0.5), speech(1.0), silence(0.6)]))
    assert [k for k, _ in events] == ["started", "paused", "stopped"]
    assert events[0][1] == 500  # speech onset, not the moment it was confirmed
    assert events[2][1] == 1500  # where the voice ended


def test_vad_pause_then_resume_is_one_turn():
    audio = np.concatenate([speech(0.5), silence(0.2), speech(0.5), silence(0.6)])
    assert [k for k, _ in turn_events(audio)] == ["started", "paused", "resumed", "paused",
                                                  "stopped"]


def test_vad_ignores_a_click_and_keeps_only_the_preroll():
    det = TurnDetector(VadConfig(prefix_padding_ms=300), energy_classifier)
    assert [e.kind for e in det.feed(np.concatenate([silence(2.0), speech(0.04),
                                                     silence(1.0)]))] == []
    started = next(e for e in det.feed(speech(0.2)) if e.kind == "started")
    assert started.audio is not None and started.audio.size == 16000 * 300 // 1000


# -- a whole turn ---------------------------------------------------------------------------
async def test_turn_transcript_reply_and_history():
    clock = FakeClock()
    metrics = []
    agent, services = make_agent(clock)
    agent._on_metric = lambda stage, v: metrics.append(stage)
    await feed(agent, clock, np.concatenate([speech(1.0), silence(0.6)]))
    await clock.advance(5)
    frames = drain(agent)
    names = kinds(frames)
    assert [n for n in names if n != "TranscriptDelta"][:3] == [
        "SpeechStarted", "SpeechStopped", "BufferCommitted"]
    assert "TranscriptDelta" in names
    assert names.index("TranscriptCompleted") < names.index("ResponseStarted")
    done = [f for f in frames if isinstance(f, F.ResponseDone)]
    assert len(done) == 1 and done[0].status == "completed"
    assert done[0].transcript == "Sure. The answer is forty two."
    # every delta before response.done (WebSocket: the audio is all sent by then)
    assert names.index("ResponseDone") > max(i for i, n in enumerate(names)
                                             if n == "ResponseAudioDelta")
    assert [(i.role, i.text) for i in agent.conversation.items] == [
        ("user", "one two three four"), ("assistant", "Sure. The answer is forty two.")]
    assert sorted(set(metrics)) == ["first_audio", "first_token", "stt_final"]
    # the LLM knows whose conversation it is (one saved prompt state per session)
    assert services.llm.conversations == ["sess_unit"]
    await agent.close()


async def test_speculative_reply_starts_before_the_silence_confirms_the_turn():
    clock = FakeClock()
    agent, services = make_agent(clock)
    await feed(agent, clock, speech(1.0))
    t_voice_end = clock.now()
    await feed(agent, clock, silence(0.3))  # past the 120 ms pause, before 400 ms
    assert len(services.llm.requests) == 1  # already thinking
    assert not [f for f in drain(agent) if isinstance(f, F.ResponseStarted)]  # held back
    await feed(agent, clock, silence(0.3))
    await clock.advance(0.05)
    frames = drain(agent)
    started = [f for f in frames if isinstance(f, F.ResponseStarted)]
    assert len(started) == 1
    assert services.llm.requests[0][-1] == {"role": "user", "content": "one two three four"}
    assert clock.now() - t_voice_end < 0.7
    await agent.close()


async def test_a_speculative_reply_finished_before_the_turn_ends_is_done_at_release():
    """A short reply (LLM and TTS all done while the silence is still being confirmed)
    must end with response.done when it is released, not wait for an end it was sent
    while held (the WebRTC camera turn's hang in CI)."""
    clock = FakeClock()
    agent, services = make_agent(clock, reply="Yes.", llm={"first_token_s": 0.01})
    await feed(agent, clock, speech(1.0))
    await feed(agent, clock, silence(0.35))  # the held reply is complete by now
    assert services.llm.finished == 1  # and nothing shown yet
    assert not [f for f in drain(agent) if isinstance(f, F.ResponseStarted)]
    await feed(agent, clock, silence(0.3))
    await clock.advance(2)
    done = [f for f in drain(agent) if isinstance(f, F.ResponseDone)]
    assert [(d.status, d.transcript) for d in done] == [("completed", "Yes.")]
    assert not agent.responding
    await agent.close()


async def test_speculation_taken_back_when_the_user_goes_on():
    clock = FakeClock()
    agent, services = make_agent(clock, llm={"first_token_s": 0.05})
    await feed(agent, clock, np.concatenate([speech(0.5), silence(0.3)]))
    assert len(services.llm.requests) == 1  # the guess
    await feed(agent, clock, np.concatenate([speech(0.5), silence(0.6)]))
    await clock.advance(5)
    frames = drain(agent)
    assert len([f for f in frames if isinstance(f, F.ResponseStarted)]) == 1
    assert len([f for f in frames if isinstance(f, F.ResponseDone)]) == 1
    finals = [f for f in frames if isinstance(f, F.TranscriptCompleted)]
    assert [f.transcript for f in finals] == ["one two three four"]  # all 1.0 s of voice
    assert services.llm.requests[-1][-1]["content"] == "one two three four"
    # one STT sequence: flushed at each pause, going on after the first, then ended
    assert len(services.stt.sessions) == 1 and services.stt.sessions[0].closed
    assert [p for p in services.stt.sessions[0].pushes if p != "audio"] == \
        ["flush", "flush", "end"]
    assert [i.role for i in agent.conversation.items] == ["user", "assistant"]
    await agent.close()


async def test_a_flush_goes_out_while_an_answer_is_in_flight():
    """On a busy model (300 ms an answer) the pause's FLUSH is sent at once, queued in
    Triton behind the request in flight, instead of a round trip later."""
    clock = FakeClock()
    agent, services = make_agent(clock)
    services.stt.partial_s = 0.3
    await feed(agent, clock, speech(1.0))
    session = services.stt.sessions[0]
    assert "flush" not in session.pushes
    await feed(agent, clock, silence(0.16))  # the 120 ms pause, and 40 ms more
    assert session.pushes[-1] == "flush"
    await feed(agent, clock, silence(1.0))
    await clock.advance(3)
    assert [p for p in session.pushes if p != "audio"] == ["flush", "end"]
    finals = [f for f in drain(agent) if isinstance(f, F.TranscriptCompleted)]
    assert [f.transcript for f in finals] == ["one two three four"]
    await agent.close()


async def test_a_speculative_reply_that_failed_while_held_is_answered_at_the_turns_end():
    """The guess failed before the silence confirmed the turn (a heavy model at its cap):
    releasing it would release nothing and the turn would never be answered."""
    clock = FakeClock()
    agent, services = make_agent(clock)
    services.llm.fail_next = 1
    await feed(agent, clock, speech(1.0))
    await feed(agent, clock, silence(0.3))
    assert len(services.llm.requests) == 1 and not agent.responding  # the guess failed
    await feed(agent, clock, silence(0.3))
    await clock.advance(5)
    frames = drain(agent)
    done = [f for f in frames if isinstance(f, F.ResponseDone)]
    assert [d.status for d in done] == ["completed"]
    assert len(services.llm.requests) == 2
    await agent.close()


# -- barge-in -------------------------------------------------------------------------------
async def ask(agent, clock, wait_s: float):
    await feed(agent, clock, np.concatenate([speech(1.0), silence(0.5)]))
    await clock.advance(wait_s)


async def test_barge_in_during_generation_cancels_the_llm():
    clock = FakeClock()
    agent, services = make_agent(clock, reply=LONG_REPLY, llm={"token_s": 0.3})
    await ask(agent, clock, 1.0)
    assert agent.responding
    drain(agent)
    await feed(agent, clock, speech(0.2))
    frames = drain(agent)
    names = kinds(frames)
    assert names.index("SpeechStarted") < names.index("ResponseDone")
    done = next(f for f in frames if isinstance(f, F.ResponseDone))
    assert (done.status, done.reason) == ("cancelled", "turn_detected")
    assert services.llm.cancelled == 1
    assert not agent.speaking
    after = names[names.index("SpeechStarted"):]
    assert "ResponseAudioDelta" not in after
    await agent.close()


@pytest.mark.parametrize("sink_kind", ["websocket", "track"])
async def test_barge_in_during_playout_stops_audio_and_keeps_what_was_heard(sink_kind):
    """The reply is generated in ~1 s and takes ~8 s to play; speech at 2 s of playback
    stops it, and the history holds the words of those ~2 s."""
    clock = FakeClock()
    sink = FakeTrackSink(clock) if sink_kind == "track" else None
    agent, services = make_agent(clock, sink=sink, reply=LONG_REPLY)
    await ask(agent, clock, 0.0)
    # wait for the first audio, then let 2 s of it play
    for _ in range(200):
        frames = drain(agent)
        if any(isinstance(f, F.ResponseAudioDelta) for f in frames) or \
                (sink is not None and sink.queued):
            break
        await clock.advance(0.01)
    await clock.advance(2.0)
    assert services.llm.finished == 1  # generation is over: only playout remains
    assert agent.speaking
    drain(agent)
    t_speech = clock.now()
    await feed(agent, clock, speech(0.12))  # detected after 100 ms of voice
    frames = drain(agent)
    assert not agent.speaking and agent.sink.pending_s() == 0
    stop = next(f for f in frames if isinstance(f, F.OutputInterrupted))
    names = kinds(frames)
    assert names.index("SpeechStarted") < names.index("OutputInterrupted")
    assert "ResponseAudioDelta" not in names[names.index("SpeechStarted"):]
    heard_s = stop.audio_end_ms / 1000
    assert 2.0 <= heard_s <= 2.0 + (clock.now() - t_speech) + 0.05
    item = agent.conversation.get(stop.item_id)
    assert item.truncated and item.text == stop.transcript
    words = len(item.text.split())
    assert 5 <= words <= 8, item.text  # 0.3 s a word: ~2.1 s heard
    assert LONG_REPLY.startswith(item.text)
    await agent.close()


async def test_client_truncate_keeps_the_heard_words():
    clock = FakeClock()
    agent, _ = make_agent(clock)
    await ask(agent, clock, 5.0)
    item = agent.conversation.items[-1]
    assert item.role == "assistant" and item.audio_s > 1.5
    assert agent.truncate(item.id, 900) == "Sure. The answer"
    with pytest.raises(ValueError):
        agent.truncate(agent.conversation.items[0].id, 100)  # a user item
    await agent.close()


# -- honest failures ---------------------------------------------------------------------------
async def test_a_bug_in_tts_fails_the_response_loudly(caplog):
    clock = FakeClock()
    agent, services = make_agent(clock)
    services.tts.fail_on = "answer"
    with caplog.at_level(logging.ERROR):
        await ask(agent, clock, 3.0)
    frames = drain(agent)
    done = next(f for f in frames if isinstance(f, F.ResponseDone))
    assert done.status == "failed" and "ValueError" in done.reason
    assert any(isinstance(f, F.ErrorFrame) and f.code == "response_failed" for f in frames)
    assert any("sess_unit" in r.getMessage() for r in caplog.records)
    await agent.close()


async def test_stt_failure_is_reported_and_the_next_turn_works():
    clock = FakeClock()
    agent, services = make_agent(clock)
    services.stt.fail = True
    await ask(agent, clock, 1.0)
    frames = drain(agent)
    assert any(isinstance(f, F.ErrorFrame) and f.code == "transcription_failed" for f in frames)
    services.stt.fail = False
    await ask(agent, clock, 3.0)
    assert any(isinstance(f, F.ResponseDone) and f.status == "completed" for f in drain(agent))
    await agent.close()


async def test_close_cancels_everything():
    clock = FakeClock()
    agent, services = make_agent(clock, reply=LONG_REPLY, llm={"token_s": 0.3})
    await ask(agent, clock, 1.0)
    assert agent.responding
    await agent.close()
    assert services.llm.cancelled == 1 and not agent._tasks


# -- pieces ----------------------------------------------------------------------------------
def test_heard_text_is_proportional_inside_a_piece():
    spans = [Span("Sure.", 0.0, 0.5), Span("The answer is forty two.", 0.5, 2.0)]
    assert heard_text(spans, 0.4) == ""
    assert heard_text(spans, 0.5) == "Sure."
    assert heard_text(spans, 1.1) == "Sure. The answer"
    assert heard_text(spans, 5.0) == "Sure. The answer is forty two."


def test_conversation_keeps_the_last_items_and_a_stable_prefix():
    conv = Conversation(max_items=4)
    prefixes = []
    for i in range(9):
        conv.add(f"item{i}", "user", f"message {i}")
        prefixes.append(conv.items[0].id)
        assert len(conv.items) <= 4
    assert [m["content"] for m in conv.messages("be brief")] == [
        "be brief", "message 6", "message 7", "message 8"]
    # the first item (the prompt's prefix) changes only when half is dropped
    assert sum(a != b for a, b in itertools.pairwise(prefixes)) == 2


def test_ids_are_unique_and_time_ordered():
    ids = [new_id("item") for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("item_") and len(i) == 5 + 26 for i in ids)
    assert ids[0][:15] <= ids[-1][:15]  # the time part sorts


async def test_close_while_the_final_transcript_is_decoding():
    clock = FakeClock()
    agent, services = make_agent(clock, llm={"first_token_s": 0.05})
    services.stt.final_s = 0.5
    await feed(agent, clock, np.concatenate([speech(1.0), silence(0.42)]))
    assert agent._utt is None  # committed, the final still decoding
    await agent.close()
    await clock.advance(2.0)
    assert all(s.closed for s in services.stt.sessions)
    assert services.llm.requests == [] or services.llm.cancelled == len(services.llm.requests)
    assert not [f for f in drain(agent) if isinstance(f, F.ResponseStarted)]


async def test_an_endless_turn_is_cut_and_memory_stays_bounded():
    clock = FakeClock()
    agent, _ = make_agent(clock, max_utterance_s=2.0, respond=False)
    await feed(agent, clock, speech(7.0))
    frames = drain(agent)
    assert len([f for f in frames if isinstance(f, F.BufferCommitted)]) == 3
    assert agent._utt is not None and agent._utt.audio_samples <= 2 * 16000
    await agent.close()


def _utterance(clock):
    from pipelines.transcriber import Utterance

    stt, finals = FakeSTT(clock), []
    utt = Utterance("item_1", stt, None, on_partial=lambda *a: None,
                    on_final=lambda u, text, d: finals.append((text, round(clock.now(), 2))),
                    on_failed=lambda *a: None)
    return utt, stt, finals


async def test_a_flush_answered_after_speech_resumed_is_not_a_final():
    clock = FakeClock()
    utt, stt, finals = _utterance(clock)
    utt.push(speech(0.5))
    utt.end(speculative=True)  # the pause
    await asyncio.sleep(0)
    utt.resume()  # the user went on before the flush was answered
    utt.push(speech(0.5))
    await clock.advance(0.5)
    assert finals == []  # the flush's answer is stale: not a final of the turn
    utt.confirmed = True
    utt.end()
    await clock.advance(0.5)
    assert [t for t, _ in finals] == ["one two three four"] and utt.done  # one sequence
    assert len(stt.sessions) == 1


async def test_a_turn_confirmed_while_its_flush_runs_gets_one_final():
    clock = FakeClock()
    utt, stt, finals = _utterance(clock)
    utt.push(speech(0.5))
    utt.end(speculative=True)
    await asyncio.sleep(0)
    utt.confirmed = True  # the silence confirmed the turn before the flush came back
    utt.push(silence(0.3))
    utt.end()
    t0 = clock.now()
    await clock.advance(0.5)
    # the flush's answer is the final (not the END's, one STT round trip later)
    assert finals == [("one two", round(t0 + stt.final_s, 2))] and utt.done
    assert stt.sessions[0].pushes[-2:] == ["flush", "end"]


async def test_streams_of_utterances_cancelled_before_they_ran_are_closed():
    """A pause and its resume in one batch of audio (or a close right after speech
    started) cancel an STT task before it ran: its stream was open already and stayed
    open in Triton (two per Hindi turn in the real tier)."""
    from pipelines.transcriber import Utterance

    clock = FakeClock()
    stt = FakeSTT(clock)

    def ignore(*_args) -> None:
        pass

    utt = Utterance("item_1", stt, None, on_partial=ignore, on_final=ignore,
                    on_failed=ignore)
    utt.push(speech(0.2))
    utt.end(speculative=True)
    utt.resume()
    await utt.cancel()  # its task never ran
    assert len(stt.sessions) == 1 and stt.sessions[0].closed

    quick = Utterance("item_2", stt, None, on_partial=ignore, on_final=ignore,
                      on_failed=ignore)
    await quick.cancel()  # closed before its task ever ran
    assert stt.sessions[-1].closed
