"""Batched streaming Whisper: a batch of streams decodes as one, each stream's answer
is its own and the same as when it is alone; stable prefixes are committed so a
partial decodes only the open tail."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import pytest
from rtmedia_models_common.whisper_stream import (
    SAMPLE_RATE,
    BatchedWhisper,
    Chunk,
    Hypothesis,
    Seg,
    StreamingTranscriber,
    WhisperSettings,
    Word,
    agreed_prefix,
    drop_echo_tail,
)

from pipelines.services import STTStream
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate


def _sec(s: float, value: float = 0.0) -> np.ndarray:
    return np.full(int(s * SAMPLE_RATE), value, np.float32)


class FakeBatch:
    """Scripted batched decoder: ``script(kind, audio)`` gives the segments of a window;
    every call is recorded with the window lengths it got."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[str, list[float]]] = []

    def _run(self, kind, windows, languages):
        self.calls.append((kind, [w.size / SAMPLE_RATE for w in windows]))
        return [Hypothesis(self.script(kind, w), lang) for w, lang in
                zip(windows, languages, strict=True)]

    def partials(self, windows, languages):
        return self._run("partials", windows, languages)

    def finals(self, windows, languages):
        return self._run("finals", windows, languages)


def _by_level(kind, audio):
    """A stream's text names the sample value it sent: answers cannot be swapped."""
    n = audio.size / SAMPLE_RATE
    return [Seg(0, n, f" stream {round(float(audio[-1]) * 10)}", [Word(" stream", 0, n)])]


def test_a_batch_decodes_finals_first_then_partials_each_to_its_own_stream():
    dec = FakeBatch(_by_level)
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True))
    chunks = [Chunk(k, _sec(0.6, k / 10), start=True) for k in (1, 2, 3)]
    chunks.insert(1, Chunk(5, _sec(1.0, 0.5), start=True, end=True))
    chunks.append(Chunk(6, np.full(10, np.nan, np.float32), start=True))
    chunks.append(Chunk(7, _sec(0.1, 0.7), start=True))  # too little audio for a partial
    sent: list = []
    t.handle_batch(chunks, lambda i, r: sent.append((i, r)))
    assert dec.calls == [("finals", [1.0]), ("partials", [0.6, 0.6, 0.6])]
    order = [i for i, _ in sent]
    assert order.index(1) < min(order.index(0), order.index(2), order.index(3))
    answers = dict(sent)
    assert answers[1][:2] == ("stream 5", True)
    assert [answers[i][:2] for i in (0, 2, 3)] == [("stream 1", False), ("stream 2", False),
                                                  ("stream 3", False)]
    assert isinstance(answers[4], ValueError) and answers[5] == ("", False, {})
    assert set(t.streams) == {1, 2, 3, 7}


def test_a_flush_answers_a_final_and_keeps_the_stream_for_its_end():
    """A speculative end of turn (FLUSH): a final now, the stream kept. Silence, then
    END: the same final without a decode. Speech again: the stream goes on, and the
    END decodes what it heard."""
    dec = FakeBatch(lambda kind, audio: [Seg(0, audio.size / SAMPLE_RATE,
                                             f" {kind} {audio.size / SAMPLE_RATE:.1f}")])
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True))

    def one(corrid, audio, **kw):
        return t.handle(corrid, audio, start=kw.get("start", False), end=kw.get("end", False),
                        language="en", flush=kw.get("flush", False))[:2]

    one(1, _sec(1.0, 0.5), start=True)
    assert one(1, _sec(0.2, 0.5), flush=True) == ("finals 1.2", True)
    assert 1 in t.streams
    calls = len(dec.calls)
    assert one(1, _sec(0.4), end=True) == ("finals 1.2", True)  # only silence since
    assert len(dec.calls) == calls and 1 not in t.streams

    one(2, _sec(1.0, 0.5), start=True)
    assert one(2, _sec(0.1, 0.5), flush=True) == ("finals 1.1", True)
    one(2, _sec(0.6, 0.5))  # the user went on: a partial of all of it
    assert dec.calls[-1] == ("partials", [1.7])
    assert one(2, _sec(0.3, 0.5), end=True) == ("finals 2.0", True)

    one(3, _sec(1.0, 0.5), start=True)  # all its audio went out before the pause
    assert one(3, _sec(0), flush=True) == ("finals 1.0", True)


def test_groups_of_equal_encoder_length_are_answered_as_each_is_decoded_shortest_first():
    class Grouping(FakeBatch):
        def frames(self, n_samples: int) -> int:
            return -(-n_samples // SAMPLE_RATE)  # whole seconds

    dec = Grouping(_by_level)
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True))
    log: list = []
    dec.script = lambda kind, audio: log.append("decode") or _by_level(kind, audio)
    t.handle_batch([Chunk(1, _sec(2.5, 0.1), start=True), Chunk(2, _sec(0.6, 0.2), start=True),
                    Chunk(3, _sec(2.2, 0.3), start=True)], lambda i, r: log.append(i))
    assert dec.calls == [("partials", [0.6]), ("partials", [2.5, 2.2])]
    assert log == ["decode", 1, "decode", "decode", 0, 2]  # stream 2 answered first


def test_two_chunks_of_one_stream_in_one_batch_are_served_in_order():
    dec = FakeBatch(_by_level)
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True))
    sent: list = []
    t.handle_batch([Chunk(1, _sec(0.6, 0.1), start=True), Chunk(2, _sec(0.6, 0.2), start=True),
                    Chunk(1, _sec(0.4, 0.3), end=True)], lambda i, r: sent.append((i, r)))
    assert dec.calls == [("partials", [0.6, 0.6]), ("finals", [1.0])]
    assert dict(sent)[2][:2] == ("stream 3", True) and 1 not in t.streams


def test_a_decoder_failure_fails_only_the_streams_in_that_batch():
    def script(kind, audio):
        if kind == "finals":
            raise RuntimeError("decoder broke")
        return _by_level(kind, audio)

    t = StreamingTranscriber(FakeBatch(script), WhisperSettings(english_only=True))
    sent: list = []
    t.handle_batch([Chunk(1, _sec(1.0, 0.1), start=True, end=True),
                    Chunk(2, _sec(0.6, 0.2), start=True)], lambda i, r: sent.append((i, r)))
    answers = dict(sent)
    assert isinstance(answers[0], RuntimeError) and answers[1][0] == "stream 2"


def test_agreed_prefix_and_echo_tail():
    segs = [Seg(0, 2, " One."), Seg(2, 4, " Two."), Seg(4, 5, " Thr")]
    assert agreed_prefix(["one", "two", "three"], segs) == 2
    assert agreed_prefix(["one", "too"], segs) == 1
    assert agreed_prefix([], segs) == 0
    assert agreed_prefix(["one"], segs[:1]) == 0  # the last segment is never committed
    assert drop_echo_tail("How are you today? How are") == "How are you today?"
    assert drop_echo_tail("Hello there. I am") == "Hello there. I am"


def test_stable_prefix_is_committed_and_partials_decode_only_the_tail():
    def script(kind, audio):
        n = audio.size / SAMPLE_RATE
        if kind == "finals" and n <= 2.0:  # the committed piece, decoded with words
            return [Seg(0, 1.9, " One.", [Word(" One.", 0.2, 1.9)])]
        return [Seg(0, 2, " One."), Seg(2, n, " Two", [Word(" Two", 2.1, n)])]

    dec = FakeBatch(script)
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True,
                                                  stable_commit=3 * SAMPLE_RATE))
    assert t.handle(1, _sec(3.5), start=True, end=False, language=None)[0] == "One. Two"
    assert t.streams[1].offset_s == 0.0  # one hypothesis: nothing agreed yet
    text, final, _ = t.handle(1, _sec(0.5), start=False, end=False, language=None)
    assert (text, final) == ("", False)  # the same text is not sent again
    assert dec.calls[-2:] == [("partials", [4.0]), ("finals", [2.0])]
    state = t.streams[1]
    assert (state.offset_s, state.audio.size, state.committed_text) == (2.0, 2 * SAMPLE_RATE,
                                                                      "One.")
    t.handle(1, _sec(0.5), start=False, end=False, language=None)
    assert dec.calls[-1] == ("partials", [2.5])  # the open tail only
    text, final, details = t.handle(1, _sec(0.5), start=False, end=True, language=None)
    # the scripted tail says "One." again (as a decode over silence after a commit
    # does): the seam drops the repeat
    assert (text, final) == ("One. Two", True)
    assert details["start"] == 0.0 and details["end"] == 5.0
    assert [s["start"] for s in details["segments"]] == [0.0, 4.0]  # repeat dropped too
    assert details["segments"][0]["words"][0] == {"word": "One.", "start": 0.2, "end": 1.9,
                                                  "p": 1.0}


def _paced(busy_s: int):
    """A transcriber whose scripted decodes each take ``cost[0]`` s of a fake clock, and
    a real-time stream into it, sent as the media server sends: what came in while the
    last answer was awaited (at least 0.1 s). ``stream(s)`` gives the audio times of
    the partials decoded meanwhile."""
    now, cost = [0.0], [0.0]

    class Slow(FakeBatch):
        def _run(self, kind, windows, languages):
            now[0] += cost[0]
            return super()._run(kind, windows, languages)

    dec = Slow(lambda kind, audio: [Seg(0, audio.size / SAMPLE_RATE, " words")])
    t = StreamingTranscriber(dec, WhisperSettings(english_only=True,
                                                  partial_every_busy=busy_s * SAMPLE_RATE),
                             clock=lambda: now[0])

    def stream(seconds: float) -> list[float]:
        heard, sent, t0 = [], 0.0, now[0]
        while now[0] < t0 + seconds:
            now[0] = max(now[0], t0 + sent + 0.1)
            piece = round(now[0] - t0 - sent, 1)
            calls = len(dec.calls)
            t.handle(1, _sec(piece, 0.5), start=not t.streams, end=False, language=None)
            sent += piece
            if len(dec.calls) > calls:
                heard.append(round(sent, 1))
        return heard

    return t, cost, stream


def test_partials_come_less_often_while_the_instance_is_busy():
    """Decodes that take 0.6 s for every 0.5 s of audio saturate a fixed interval (the
    instance never rests: a real one queues every stream behind it); the stretched
    interval leaves it time. Idle again, partials come every 0.5 s again."""
    t, cost, stream = _paced(busy_s=1)
    assert np.diff(stream(3.0)[-4:]).tolist() == pytest.approx([0.5] * 3)
    cost[0] = 0.6
    gaps = np.diff(stream(10.0)[-6:])
    assert gaps.min() >= 0.7 and t.meter.busy() <= 0.85
    cost[0] = 0.0
    assert np.diff(stream(4.0)[-4:]).tolist() == pytest.approx([0.5] * 3)
    assert t.partial_every == SAMPLE_RATE // 2

    fixed, cost, stream = _paced(busy_s=0)  # without partial_every_busy
    cost[0] = 0.6
    assert np.diff(stream(10.0)[-6:]).tolist() == pytest.approx([0.6] * 5)
    assert fixed.meter.busy() >= 0.95 and fixed.partial_every == SAMPLE_RATE // 2


# -- the real model -------------------------------------------------------------------------
SENTENCES = ["Good morning, how are you today?",
             "Seven apples fell from the tall green tree.",
             "Please call Stella and ask her to bring these things with her from the store.",
             "What time does the store open?",
             "The quick brown fox jumps over the lazy dog near the river bank.",
             "I would like a cup of tea with milk and two sugars please."]


@pytest.fixture(scope="module")
def speech():
    return [espeak_speech(s) for s in SENTENCES]


@pytest.fixture(scope="module")
def tiny(model_store):
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_store.model_dir("stt", "whisper-tiny.en")), device="cpu",
                        compute_type="int8", cpu_threads=2, local_files_only=True)


@pytest.mark.parametrize("encoder_rows", [1, 0], ids=["rows_encoded_one_by_one",
                                                     "one_encoder_call"])
def test_batched_decode_equals_alone_on_the_real_model(tiny, speech, encoder_rows):
    dec = BatchedWhisper(tiny, WhisperSettings(english_only=True, encoder_rows=encoder_rows))
    # two copies of each length class: the batch has groups of several rows
    windows = speech + [s[: s.size * 2 // 3] for s in speech]
    langs = ["en"] * len(windows)
    for kind in ("partials", "finals"):
        batched = getattr(dec, kind)(windows, langs)
        alone = [getattr(dec, kind)([w], ["en"])[0] for w in windows]
        assert [h.text for h in batched] == [h.text for h in alone]
        if kind == "finals":
            assert [[(w.word, w.start, w.end) for s in h.segments for w in s.words]
                    for h in batched] == [[(w.word, w.start, w.end) for s in h.segments
                                           for w in s.words] for h in alone]
            assert all(s.words for h in batched for s in h.segments)


def test_commit_times_the_words_of_the_agreed_segments_without_a_second_decode(tiny, speech):
    dec = BatchedWhisper(tiny, WhisperSettings(english_only=True, stable_commit=SAMPLE_RATE))
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    two = np.concatenate([speech[1], gap, speech[3]])  # two sentences: two segments
    hyps = dec.partials([two, speech[0]], ["en", "en"])
    assert len(hyps[0].segments) >= 2, [s.text for s in hyps[0].segments]
    (done,) = dec.commit([hyps[0]], [1])
    assert [s.text for s in done.segments] == [hyps[0].segments[0].text]
    words = done.segments[0].words
    assert "apples" in " ".join(w.word for w in words).lower()
    assert all(w.start <= w.end <= hyps[0].segments[1].start + 0.3 for w in words)


def _feed(t: StreamingTranscriber, audio: np.ndarray, step: int = 1600) -> tuple:
    for i in range(0, audio.size, step):
        t.handle(9, audio[i:i + step], start=i == 0, end=False, language=None)
    return t.handle(9, np.zeros(0, np.float32), start=False, end=True, language=None)


def test_a_final_after_silence_times_the_last_partial_instead_of_decoding_again(tiny, speech):
    settings = WhisperSettings(english_only=True, stable_commit=4 * SAMPLE_RATE)
    dec = BatchedWhisper(tiny, settings)
    decoded: list[int] = []
    finals = dec._finals
    dec._finals = lambda w, lang: decoded.append(len(w)) or finals(w, lang)
    t = StreamingTranscriber(dec, settings)
    heard = np.concatenate([speech[1], np.zeros(SAMPLE_RATE // 2, np.float32)])
    text, final, details = _feed(t, heard)
    assert final and decoded == []
    assert text == "Seven apples fell from the tall green tree."
    assert [w["word"] for w in details["segments"][0]["words"]][:2] == ["Seven", "apples"]
    # speech after the last partial (cut off mid-sentence): the final decodes again
    text, final, _ = _feed(t, speech[1][: int(1.75 * SAMPLE_RATE)])
    assert final and decoded == [1] and text


CHUNK = 1600  # 100 ms, as the media server sends


async def _stream(client, audio: np.ndarray, chunk: int) -> tuple[list[str], str]:
    stt = STTStream(client)
    partials = []
    try:
        for i in range(0, audio.size, chunk):
            for t in await stt.push(audio[i:i + chunk], end=i + chunk >= audio.size):
                if t.final:
                    return partials, t.text
                partials.append(t.text)
    finally:
        await stt.close()
    raise AssertionError("no final")


def _batch_stats(url: str, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(url) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("nv_inference_request_success", "nv_inference_exec_count"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["nv_inference_request_success"], values["nv_inference_exec_count"]


async def test_streams_batched_in_triton_get_the_transcripts_they_get_alone(
        client, triton_settings, speech):
    # 1 s chunks: each one is a partial whatever the load (a busy instance stretches
    # the partial interval up to 1 s, and the partials decide what is committed)
    alone = [(await _stream(client, a, SAMPLE_RATE))[1] for a in speech]
    url = f"http://{triton_settings.triton_host}:{triton_settings.triton_metrics_port}/metrics"
    requests0, execs0 = await asyncio.to_thread(_batch_stats, url, "whisper")
    together = await asyncio.gather(*[_stream(client, a, SAMPLE_RATE) for a in speech])
    requests1, execs1 = await asyncio.to_thread(_batch_stats, url, "whisper")
    assert [text for _, text in together] == alone
    assert all(text for text in alone)
    # the sequence batcher formed batches: fewer executions than requests
    assert execs1 - execs0 < requests1 - requests0, (requests1 - requests0, execs1 - execs0)


async def test_a_flushed_stream_in_triton_ends_with_the_flushed_final(client, speech):
    """The speculative end of turn on the real model: FLUSH answers a final and the
    sequence stays open; after silence, END answers the same final (not decoded
    again: unit test above); after more speech, the final holds both parts."""
    first, second = speech[2], speech[4]
    stt = STTStream(client)
    try:
        await stt.push(first)
        flushed = [t for t in await stt.push(np.zeros(CHUNK, np.float32), flush=True)
                   if t.final]
        ended = [t for t in await stt.push(np.zeros(4 * CHUNK, np.float32), end=True)
                 if t.final]
    finally:
        await stt.close()
    assert flushed and ended and flushed[0].text
    assert (ended[0].text, ended[0].words) == (flushed[0].text, flushed[0].words)

    stt = STTStream(client)
    try:
        await stt.push(first)
        await stt.push(np.zeros(CHUNK, np.float32), flush=True)
        await stt.push(second)  # the user went on
        final = next(t for t in await stt.push(np.zeros(CHUNK, np.float32), end=True)
                     if t.final)
    finally:
        await stt.close()
    assert word_error_rate(f"{SENTENCES[2]} {SENTENCES[4]}", final.text) <= 0.35, final.text
