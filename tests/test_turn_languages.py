"""Real tier: the end-of-turn model in Triton, a semantic_vad turn with the openai SDK,
and a Hindi turn (espeak-ng speech -> Devanagari transcript -> Hindi reply audio)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from pipelines.audio import float_to_pcm16, pcm16_to_float, resample
from pipelines.router import ModelRouter
from pipelines.services import STTStream, TritonTurnJudge
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from pipelines.triton_client import TritonClient, TritonModelError

pytestmark = pytest.mark.triton

DEVANAGARI = range(0x0900, 0x0980)


def devanagari(text: str) -> int:
    return sum(ord(c) in DEVANAGARI for c in text)


def trimmed(text: str, rate: int = 16000, *, tail_s: float = 0.0, **kw) -> np.ndarray:
    """espeak-ng speech without its own trailing silence, plus ``tail_s`` of silence."""
    audio = espeak_speech(text, rate=rate, **kw)
    end = np.nonzero(np.abs(audio) > 0.02)[0][-1] + 1
    return np.concatenate([audio[:end], np.zeros(int(tail_s * rate), np.float32)])


async def test_end_of_turn_model_tells_a_finished_question_from_a_cut_sentence(triton):
    judge = TritonTurnJudge(ModelRouter(triton.grpc_url))
    try:
        done, cut = await asyncio.gather(  # together: one batch in the model
            judge.complete(trimmed("What is the capital of France?", tail_s=0.12)),
            judge.complete(trimmed("So I was thinking that maybe we could", tail_s=0.12)))
        assert done >= 0.5 > cut, (done, cut)
        longer = await judge.complete(np.concatenate([np.zeros(9 * 16000, np.float32),
                                                      trimmed("Thank you.", tail_s=0.12)]))
        assert 0.0 <= longer <= 1.0
        client = TritonClient(triton.grpc_url)
        try:
            for bad, match in ((np.zeros(0, np.float32), "empty"),
                               (np.full(1600, np.nan, np.float32), "NaN")):
                with pytest.raises(TritonModelError, match=match):
                    async with client.stream() as s:
                        async for _ in s.infer("smart_turn", {"AUDIO": bad.reshape(1, -1)}):
                            pass
        finally:
            await client.close()
    finally:
        await judge.router.close()


async def test_semantic_vad_turn_with_the_openai_sdk(media_server):
    """A sentence cut by a 700 ms pause is one turn under semantic_vad (server_vad's
    400 ms silence would end it at the pause)."""
    from openai import AsyncOpenAI

    first = trimmed("So I was thinking that maybe we could", 24000, tail_s=0.7)
    second = trimmed("go to the beach tomorrow.", 24000, tail_s=1.5)
    pcm = float_to_pcm16(np.concatenate([first, second]))
    oa = AsyncOpenAI(base_url=media_server.http + "/v1", api_key="unused")
    transcripts, audio, types = [], [], []
    async with oa.realtime.connect(model="rtmedia-voice") as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "Answer in one short sentence.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "semantic_vad",
                                                   "eagerness": "high"}}}})
        sender = None
        async for event in conn:
            types.append(event.type)
            if event.type == "session.updated" and sender is None:
                td = event.session.audio.input.turn_detection
                assert (td.type, td.eagerness) == ("semantic_vad", "high")

                async def send() -> None:
                    for i in range(0, pcm.size, 4800):  # 200 ms appends at real time
                        await conn.input_audio_buffer.append(
                            audio=base64.b64encode(pcm[i:i + 4800].tobytes()).decode())
                        await asyncio.sleep(0.2)

                sender = asyncio.create_task(send())
            elif event.type == "conversation.item.input_audio_transcription.completed":
                transcripts.append(event.transcript)
            elif event.type == "response.output_audio.delta":
                audio.append(np.frombuffer(base64.b64decode(event.delta), "<i2"))
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                assert event.response.status == "completed"
                break
        await sender
    assert types.count("input_audio_buffer.speech_stopped") == 1, types
    assert len(transcripts) == 1, transcripts
    assert word_error_rate("So I was thinking that maybe we could go to the beach tomorrow.",
                           transcripts[0]) <= 0.4, transcripts
    assert np.concatenate(audio).size > 24000 * 0.3


@pytest.fixture
async def whisper_base(triton):
    client = TritonClient(triton.grpc_url)
    await client.load("whisper_base")
    yield client
    await client.unload("whisper_base")
    for _ in range(100):  # unload is asynchronous; the next test expects it gone
        if not await client.model_ready("whisper_base"):
            break
        await asyncio.sleep(0.1)
    await client.close()


async def test_a_hindi_turn_end_to_end(media_server, whisper_base):
    """Hindi speech (espeak-ng) -> Devanagari transcript from the multilingual Whisper ->
    a reply the LLM was told to give in Hindi -> spoken by the Hindi espeak-ng voice."""
    from openai import AsyncOpenAI

    question = trimmed("नमस्ते, आज मौसम कैसा है?", 24000, tail_s=1.5, voice="hi")
    pcm = float_to_pcm16(question)
    oa = AsyncOpenAI(base_url=media_server.http + "/v1", api_key="unused")
    user, reply, audio = "", "", []
    async with oa.realtime.connect(model="rtmedia-voice") as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "You are a helpful assistant. Be brief.",
            "seed": 7,  # extension: the same sampling every run
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "whisper", "language": "hi"},
                                "turn_detection": {"type": "server_vad"}}}})
        async for event in conn:
            if event.type == "session.updated" and not audio and not user:
                for i in range(0, pcm.size, 4800):
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[i:i + 4800].tobytes()).decode())
            elif event.type == "conversation.item.input_audio_transcription.completed":
                user = event.transcript
            elif event.type == "response.output_audio_transcript.delta":
                reply += event.delta
            elif event.type == "response.output_audio.delta":
                audio.append(np.frombuffer(base64.b64decode(event.delta), "<i2"))
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                assert event.response.status == "completed"
                break
    assert devanagari(user) >= 5, user
    spoken = np.concatenate(audio)
    assert spoken.size > 24000 * 0.5, reply
    assert devanagari(reply) >= 3, reply  # the LLM answered in Hindi
    # the reply audio is Hindi speech: the multilingual Whisper hears Devanagari in it
    stt = STTStream(whisper_base, model="whisper_base", language="hi")
    try:
        heard = [t for t in await stt.push(
            pcm16_to_float(resample(spoken, 24000, 16000))[:16000 * 20], end=True) if t.final]
    finally:
        await stt.close()
    assert heard and devanagari(heard[0].text) >= 3, (reply, heard)
