"""Reply generation: LLM tokens -> clauses -> TTS audio, pipelined.

The LLM streams into a clause splitter while TTS speaks the clauses already cut,
so the first audio comes after the first clause, not after the whole answer.
``Responder.run`` yields text deltas and audio pieces in the order they are
ready; closing the iterator (barge-in, the client's cancel, the session ending)
cancels both streams, which cancels the requests inside Triton. Function calls
the model makes come last, as one ``ToolCallsOut`` (the model says them whole).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from pipelines.audio import Resampler
from pipelines.clauses import ClauseSplitter
from pipelines.services import LLM, TTS
from pipelines.tools import Tool


@dataclass(frozen=True)
class ReplyOptions:
    output_rate: int = 24000
    audio: bool = True  # False: text only, no TTS
    voice: str | None = None
    language: str | None = None  # TTS language
    max_tokens: int = 120
    temperature: float | None = 0.7
    seed: int | None = None
    tools: tuple[Tool, ...] = ()  # the functions this reply may call
    tool_choice: str = "auto"  # auto | required | function:<name>


@dataclass
class TextOut:
    delta: str


@dataclass
class AudioOut:
    pcm: np.ndarray  # int16 mono at ``ReplyOptions.output_rate``
    alignment: dict | None
    text: str  # the clause this audio speaks (its first piece carries it; later pieces "")


@dataclass
class ToolCallsOut:
    calls: list[dict]  # {"name", "arguments" (JSON text)[, "error"]} as the model said them


_DONE = object()


class Responder:
    def __init__(self, llm: LLM, tts: TTS, conversation: str | None = None):
        self.llm, self.tts = llm, tts
        self.conversation = conversation  # names this session's prompt state in the LLM

    async def run(self, messages: list[dict], options: ReplyOptions
                  ) -> AsyncIterator[TextOut | AudioOut | ToolCallsOut]:
        out: asyncio.Queue = asyncio.Queue()
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._generate(messages, options, out, clauses))]
        if options.audio:
            tasks.append(asyncio.create_task(self._speak(options, out, clauses)))
        running = len(tasks)
        try:
            while running:
                item = await out.get()
                if item is _DONE:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _generate(self, messages: list[dict], options: ReplyOptions, out: asyncio.Queue,
                        clauses: asyncio.Queue) -> None:
        splitter = ClauseSplitter()
        try:
            tools = {}
            if options.tools:
                tools = {"tools": [t.chat_format() for t in options.tools],
                         "tool_choice": options.tool_choice}
            gen = self.llm.chat(messages, max_tokens=options.max_tokens,
                                temperature=options.temperature, seed=options.seed,
                                conversation=self.conversation, **tools)
            calls: list[dict] = []
            async with contextlib.aclosing(gen):
                async for tok in gen:
                    calls += tok.tool_calls
                    if not tok.text:
                        continue
                    out.put_nowait(TextOut(tok.text))
                    for clause in splitter.push(tok.text):
                        clauses.put_nowait(clause)
            for clause in splitter.flush():
                clauses.put_nowait(clause)
            if calls:
                out.put_nowait(ToolCallsOut(calls))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            out.put_nowait(exc)
        finally:
            clauses.put_nowait(None)
            out.put_nowait(_DONE)

    async def _speak(self, options: ReplyOptions, out: asyncio.Queue,
                     clauses: asyncio.Queue) -> None:
        resampler: Resampler | None = None
        try:
            while (clause := await clauses.get()) is not None:
                gen = self.tts.synthesize(clause, voice=options.voice, language=options.language)
                text = clause
                async with contextlib.aclosing(gen):
                    async for chunk in gen:
                        if chunk.sample_rate == options.output_rate:
                            pcm = chunk.audio
                        else:
                            if resampler is None or resampler.src_rate != chunk.sample_rate:
                                resampler = Resampler(chunk.sample_rate, options.output_rate)
                            pcm = resampler.process(chunk.audio)
                        out.put_nowait(AudioOut(pcm, chunk.alignment, text))
                        text = ""
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            out.put_nowait(exc)
        finally:
            out.put_nowait(_DONE)
