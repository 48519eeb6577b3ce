"""The model repository on a real tritonserver with the real packaged models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import numpy as np
import pytest

from pipelines.audio import pcm16_to_float, resample
from pipelines.services import STTStream, chat, synthesize
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from pipelines.triton_client import TritonModelError

pytestmark = pytest.mark.triton

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
CHUNK = 8000  # 0.5 s at 16 kHz


async def transcribe(client, audio: np.ndarray, model: str = "whisper", language=None):
    stt = STTStream(client, model=model, language=language)
    partials, t0 = [], time.monotonic()
    try:
        for i in range(0, audio.size, CHUNK):
            last = i + CHUNK >= audio.size
            for t in await stt.push(audio[i:i + CHUNK], end=last):
                if t.final:
                    return partials, t
                partials.append((time.monotonic() - t0, t))
    finally:
        await stt.close()
    raise AssertionError("no final transcript")


async def test_stt_partials_then_final_with_timestamps(client):
    audio = espeak_speech(SENTENCE)
    partials, final = await transcribe(client, audio)
    assert word_error_rate(SENTENCE, final.text) <= 0.35, final.text
    assert len(partials) >= 2 and all(not p.final for _, p in partials)
    # partials come while audio is still being sent and converge to the final
    assert word_error_rate(final.text, partials[-1][1].text) <= 0.5
    words = final.words
    assert len(words) >= 8
    duration = audio.size / 16000
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w["start"] <= w["end"] <= duration + 0.5 for w in words)
    assert final.details["end"] == pytest.approx(duration, abs=0.01)


async def test_stt_streams_are_independent(client):
    """Two interleaved sequences on one model keep their own audio."""
    a = espeak_speech("Good morning, how are you today?")
    b = espeak_speech("Seven apples fell from the tall green tree.")
    s1, s2 = STTStream(client), STTStream(client)
    try:
        n = max(a.size, b.size)
        finals = {}
        for i in range(0, n, CHUNK):
            for key, stream, audio in (("a", s1, a), ("b", s2, b)):
                if key in finals or i >= audio.size:
                    continue
                for t in await stream.push(audio[i:i + CHUNK], end=i + CHUNK >= audio.size):
                    if t.final:
                        finals[key] = t.text
    finally:
        await s1.close()
        await s2.close()
    assert word_error_rate("Good morning, how are you today?", finals["a"]) <= 0.35
    assert word_error_rate("Seven apples fell from the tall green tree.", finals["b"]) <= 0.35


async def test_tts_streams_clauses_and_round_trips_through_stt(client):
    text = ("Hello, thank you for calling the support line today. "
            "Your order has shipped. It will arrive on Monday morning.")
    chunks, times, t0 = [], [], time.monotonic()
    async for chunk in synthesize(client, text):
        chunks.append(chunk)
        times.append(time.monotonic() - t0)
    assert len(chunks) >= 3  # streamed piece by piece
    assert chunks[0].alignment["text"].startswith("Hello")
    assert times[0] < times[-1] * 0.6  # first audio long before the last piece
    assert all(c.sample_rate == 22050 for c in chunks)
    phonemes = chunks[0].alignment["phonemes"]
    assert phonemes and all(p[1] <= p[2] for p in phonemes)
    assert phonemes[-1][2] <= len(chunks[0].audio) / 22050 + 0.05
    offsets = [c.alignment["offset_s"] for c in chunks]
    assert offsets == sorted(offsets)
    audio = np.concatenate([c.audio for c in chunks])
    _, final = await transcribe(client, pcm16_to_float(resample(audio, 22050, 16000)))
    assert word_error_rate(text, final.text) <= 0.3, final.text


async def test_tts_espeak_voice_for_indian_language(client):
    chunks = [c async for c in synthesize(client, "नमस्ते, आप कैसे हैं?", language="hi")]
    assert chunks and chunks[0].alignment["voice"] == "espeak"
    assert np.abs(chunks[0].audio).max() > 1000


async def test_llm_streams_tokens(client):
    tokens = [t async for t in chat(client, [{"role": "user", "content": "Name three colours."}],
                                    max_tokens=24, temperature=0.0, seed=1)]
    text_tokens = [t for t in tokens if t.text]
    assert len(text_tokens) >= 3
    assert tokens[-1].finish_reason in ("stop", "length")
    assert "".join(t.text for t in tokens).strip()


async def test_llm_reply_cut_for_length_ends_with_a_whole_sentence(client):
    """A reply that runs into MAX_TOKENS ends at a sentence end, not mid-sentence
    ("...So"), and says it was cut for length."""
    for seed, question in enumerate(["Tell me about dogs.", "Why is the sky blue?",
                                     "Explain how a car engine works."]):
        tokens = [t async for t in chat(client, [{"role": "user", "content": question}],
                                        max_tokens=24, temperature=0.0, seed=seed)]
        text = "".join(t.text for t in tokens).strip()
        assert tokens[-1].finish_reason == "length", (question, text)
        assert re.search(r"[.!?][\"')\]]*$", text), (question, text)
        assert len(text.split()) >= 5, (question, text)


async def test_llm_does_not_loop(client):
    """The repeat penalty (config.pbtxt) keeps the small model from looping: without it
    this reply lists the week over and over until MAX_TOKENS (68 % of its 4-grams repeat)."""
    messages = [{"role": "system", "content": "You are a helpful voice assistant. "
                 "Answer briefly."}, {"role": "user", "content": "List the days of the week."}]
    text = "".join([t.text async for t in chat(client, messages, max_tokens=100,
                                                 temperature=0.0, seed=1)])
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    assert grams and len(set(grams)) / len(grams) > 0.8, text


async def test_llm_cancel_stops_generation(client):
    long_msgs = [{"role": "user", "content": "Count from one to one thousand."}]
    # Reference: how long 200 tokens take when nobody cancels.
    t0 = time.monotonic()
    n = 0
    async for tok in chat(client, long_msgs, max_tokens=200, ignore_eos=True):
        n += bool(tok.text)
    full = time.monotonic() - t0
    assert n >= 150
    # Cancel two 1000-token requests after 5 tokens each (the model runs two replies
    # at once): if generation went on, the next request would wait for them (~10x
    # `full`).

    async def five_tokens_then_cancel():
        gen = chat(client, long_msgs, max_tokens=1000, ignore_eos=True)
        async with contextlib.aclosing(gen):
            seen = 0
            async for tok in gen:
                seen += bool(tok.text)
                if seen == 5:
                    break

    await asyncio.gather(five_tokens_then_cancel(), five_tokens_then_cancel())
    t1 = time.monotonic()
    first = None
    async for _tok in chat(client, [{"role": "user", "content": "Hi"}], max_tokens=4):
        first = time.monotonic() - t1
        break
    assert first is not None and first < full, (first, full)


async def test_llm_a_new_turn_does_not_wait_for_another_sessions_reply(client):
    """Two replies run at once: a turn that starts while another session's long reply
    is being generated gets its first token before that reply is done (one at a time,
    it came only after the other's last token)."""
    long_reply = chat(client, [{"role": "user", "content": "Count from one to a thousand."}],
                      max_tokens=300, ignore_eos=True)
    events: list[str] = []

    async def long_one():
        n = 0
        async for tok in long_reply:
            n += bool(tok.text)
            if n == 5:
                started.set()
        events.append("long done")

    started = asyncio.Event()
    task = asyncio.create_task(long_one())
    await asyncio.wait_for(started.wait(), 60)
    async for tok in chat(client, [{"role": "user", "content": "Hi"}], max_tokens=8):
        if tok.text:
            events.append("short first token")
            break
    await asyncio.wait_for(task, 120)
    assert events == ["short first token", "long done"], events


async def test_load_and_unload_through_repository_api(client):
    assert not await client.model_ready("whisper_base")
    await client.load("whisper_base")
    assert await client.model_ready("whisper_base")
    audio = espeak_speech("Please open the window.")
    _, final = await transcribe(client, audio, model="whisper_base", language="en")
    assert word_error_rate("Please open the window.", final.text) <= 0.5, final.text
    await client.unload("whisper_base")
    for _ in range(100):  # unload is asynchronous
        if not await client.model_ready("whisper_base"):
            break
        await asyncio.sleep(0.1)
    assert not await client.model_ready("whisper_base")
    index = {m["name"]: m["state"] for m in await client.index()}
    assert index["whisper"] == "READY"


async def _expect_error(client, model, inputs, match, **kw):
    with pytest.raises(TritonModelError, match=match):
        async with client.stream() as s:
            async for _ in s.infer(model, inputs, **kw):
                pass


async def test_bad_requests_get_clear_errors_and_others_keep_working(client):
    speech = espeak_speech("Open the door and close the window.")
    stt = STTStream(client)
    finals = []
    try:
        await stt.push(speech[:CHUNK])
        await _expect_error(client, "no_such_model", {"X": "a"}, "unknown model|not found")
        await _expect_error(client, "piper", {"TEXT": np.array([1.0], np.float32)},
                            "data-type")
        await _expect_error(client, "llm", {"MESSAGES": ["a", "b"]}, "shape")
        await _expect_error(client, "piper", {"TEXT": "x" * 5000}, "maximum is 4000")
        await _expect_error(client, "piper", {"TEXT": "hi", "LANGUAGE": "xx"}, "no voice")
        await _expect_error(client, "llm", {"MESSAGES": "not json"}, "not valid JSON")
        await _expect_error(client, "llm", {"MESSAGES": json.dumps([{"role": "x"}])},
                            "must be a non-empty JSON list")
        await _expect_error(client, "whisper",
                            {"AUDIO": np.zeros((1, 0), np.float32)}, "AUDIO is empty",
                            sequence_id=987654, sequence_start=True)
        await _expect_error(client, "whisper",
                            {"AUDIO": np.full((1, 100), np.nan, np.float32)}, "NaN",
                            sequence_id=987655, sequence_start=True)
        await _expect_error(client, "whisper",
                            {"AUDIO": np.zeros((1, 16000), np.float32),
                             "LANGUAGE": np.array([["hi"]], dtype=np.object_)},
                            "English-only", sequence_id=987656, sequence_start=True)
        # The stream that was open all along still finishes correctly.
        finals = [t for t in await stt.push(speech[CHUNK:], end=True) if t.final]
    finally:
        await stt.close()
    assert finals and word_error_rate("Open the door and close the window.", finals[0].text) <= 0.35
    assert await client.server_ready()
