"""Scripted fakes for the unit tier: a fake clock, STT, LLM and TTS with timing.

They implement the same small interfaces as the Triton clients
(``pipelines.services``), so the agent's real stages run unchanged on them.
Everything waits on ``FakeClock``: a test moves time forward with ``advance``,
and an hour of conversation runs in milliseconds, the same way every time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator

import numpy as np

from pipelines.services import AudioChunk, Services, Token, Transcript
from pipelines.vad import FRAME, RATE

VOICED = 0.1  # amplitude of scripted speech; the energy classifier calls it voiced
WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()


async def settle(rounds: int = 30) -> None:
    """Let every task that can run without time passing run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def energy_classifier(frame: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(frame * frame))) > VOICED / 2


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self.t + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self.t = max(self.t, deadline)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self.t = target
        await settle()


def speech(seconds: float) -> np.ndarray:
    return np.full(int(seconds * RATE), VOICED, np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


async def feed(agent, clock: FakeClock, audio: np.ndarray) -> None:
    """Real-time pace: 20 ms of audio, then 20 ms of clock."""
    for i in range(0, audio.size, FRAME):
        await agent.push_audio(audio[i:i + FRAME])
        await clock.advance(FRAME / RATE)


class FakeSTTSession:
    def __init__(self, stt: FakeSTT) -> None:
        self.stt = stt
        self.voiced_s = 0.0
        self.closed = False
        self.pushes: list[str] = []  # audio | flush | end, in order
        self._last: asyncio.Future | None = None  # the request answered before the next

    def _text(self) -> str:
        n = max(1, round(self.voiced_s * self.stt.words_per_s))
        return " ".join(WORDS[:n])

    async def push(self, audio: np.ndarray, *, end: bool = False,
                   flush: bool = False) -> list[Transcript]:
        return await self.send(audio, end=end, flush=flush)

    def send(self, audio: np.ndarray, *, end: bool = False,
             flush: bool = False) -> asyncio.Future:
        """Queued now; served after the requests before it, as Triton serves a
        sequence."""
        self.pushes.append("end" if end else "flush" if flush else "audio")
        self._last = asyncio.ensure_future(self._serve(self._last, audio, end, flush))
        return self._last

    async def _serve(self, before: asyncio.Future | None, audio: np.ndarray, end: bool,
                     flush: bool) -> list[Transcript]:
        if before is not None:
            await asyncio.wait({before})  # however it ended
        self.voiced_s += float(np.count_nonzero(np.abs(audio) > VOICED / 2)) / RATE
        await self.stt.clock.sleep(self.stt.final_s if end or flush else self.stt.partial_s)
        if self.stt.fail:
            from pipelines.triton_client import TritonUnavailable

            raise TritonUnavailable("Triton unavailable: scripted failure")
        if end or flush:
            return [self.stt.final(self._text() if self.voiced_s else "")]
        return [Transcript(self._text(), False)] if self.voiced_s else []

    async def close(self) -> None:
        self.closed = True


class FakeSTT:
    """Transcribes scripted speech as counting words: 4 words a second of voice."""

    def __init__(self, clock: FakeClock, *, partial_s: float = 0.03, final_s: float = 0.08,
                 words_per_s: float = 4.0) -> None:
        self.clock = clock
        self.partial_s, self.final_s, self.words_per_s = partial_s, final_s, words_per_s
        self.sessions: list[FakeSTTSession] = []
        self.fail = False

    def final(self, heard: str) -> Transcript:
        """The final transcript of what was heard (subclasses say something else)."""
        return Transcript(heard, True)

    def open(self, language: str | None = None) -> FakeSTTSession:
        session = FakeSTTSession(self)
        self.sessions.append(session)
        return session


class FakeLLM:
    """Answers with ``reply`` word by word, after ``first_token_s``, one token per
    ``token_s``. Records every request and whether it was cancelled.

    Function calls: when a request has tools and ``tool_calls`` holds a script, the
    next scripted list of calls ({"name", "arguments"}) comes on the last token
    (after ``call_text``, "" for a reply that is only calls), ``call_s`` later."""

    def __init__(self, clock: FakeClock, reply: str = "Sure. The answer is forty two.", *,
                 first_token_s: float = 0.1, token_s: float = 0.02) -> None:
        self.clock = clock
        self.reply = reply
        self.first_token_s, self.token_s = first_token_s, token_s
        self.requests: list[list[dict]] = []
        self.conversations: list[str | None] = []  # the conversation id of each request
        self.tool_requests: list[tuple[list[dict] | None, str]] = []
        self.tool_calls: list[list[dict]] = []
        self.call_text = ""
        self.call_s = 0.2
        self.cancelled = 0
        self.finished = 0
        self.fail_next = 0  # the next N requests fail after first_token_s (e.g. busy)

    async def chat(self, messages: list[dict], *, max_tokens: int,
                   temperature: float | None, seed: int | None,
                   tools: list[dict] | None = None,
                   tool_choice: str = "auto",
                   conversation: str | None = None) -> AsyncIterator[Token]:
        self.requests.append(messages)
        self.conversations.append(conversation)
        self.tool_requests.append((tools, tool_choice))
        calls = self.tool_calls.pop(0) if tools and self.tool_calls else []
        text = self.call_text if calls else self.reply
        words = text.split(" ") if text else []
        try:
            await self.clock.sleep(self.first_token_s)
            if self.fail_next:
                from pipelines.triton_client import TritonModelError

                self.fail_next -= 1
                raise TritonModelError("llm is busy (1 running, 0 waiting)")
            for i, word in enumerate(words):
                if i:
                    await self.clock.sleep(self.token_s)
                last = i == len(words) - 1 and not calls
                yield Token(word if i == 0 else " " + word, "stop" if last else "")
            if calls:
                await self.clock.sleep(self.call_s)
                yield Token("", "stop", list(calls))
            self.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


class FakeTTS:
    """``seconds_per_word`` of constant audio per word, after ``latency_s``."""

    def __init__(self, clock: FakeClock, *, rate: int = 24000, seconds_per_word: float = 0.3,
                 latency_s: float = 0.05) -> None:
        self.clock = clock
        self.rate = rate
        self.seconds_per_word, self.latency_s = seconds_per_word, latency_s
        self.texts: list[str] = []
        self.fail_on: str | None = None  # raise a plain bug on a text containing this

    async def synthesize(self, text: str, *, voice: str | None,
                         language: str | None) -> AsyncIterator[AudioChunk]:
        self.texts.append(text)
        await self.clock.sleep(self.latency_s)
        if self.fail_on and self.fail_on in text:
            raise ValueError("scripted TTS bug")
        n = int(len(text.split()) * self.seconds_per_word * self.rate)
        yield AudioChunk(np.full(n, 1000, np.int16), self.rate, {})


def fake_services(clock: FakeClock, **llm) -> Services:
    return Services(FakeSTT(clock), FakeLLM(clock, **llm), FakeTTS(clock))


class FakeTrackSink:
    """An audio sink like the WebRTC track: takes the whole reply at once and plays it
    at real time on the fake clock."""

    def __init__(self, clock: FakeClock, rate: int = 24000) -> None:
        self.clock = clock
        self.rate = rate
        self.response: str | None = None
        self.queued = 0
        self.start = 0.0
        self.frozen: float | None = None
        self.cleared = 0

    def _played(self) -> float:
        return min(self.queued / self.rate, max(0.0, self.clock.now() - self.start))

    async def write(self, response_id, item_id, pcm, alignment, offset_s) -> None:
        if response_id != self.response:
            self.response, self.queued, self.frozen = response_id, 0, None
            self.start = self.clock.now()
        self.queued += pcm.size

    def clear(self) -> None:
        if self.response is not None and self.frozen is None:
            self.frozen = self._played()
            self.queued = int(self.frozen * self.rate)
        self.cleared += 1

    def played_s(self, response_id: str) -> float:
        if response_id != self.response:
            return 0.0
        return self.frozen if self.frozen is not None else self._played()

    def pending_s(self) -> float:
        if self.response is None or self.frozen is not None:
            return 0.0
        return self.queued / self.rate - self._played()

    async def flush(self) -> None:
        pass
