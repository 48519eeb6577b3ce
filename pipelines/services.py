"""Typed clients for the Triton models: STT, TTS and LLM streams.

Each hides the tensor names of its model behind a small interface (push audio
and read transcripts; text in, audio chunks out; messages in, tokens out) so
pipeline stages, the CLI, tests and benchmarks speak in domain terms.

The agent's stages see only the ``STT``/``LLM``/``TTS`` protocols below: the
Triton implementations are wired in production and the real-Triton tests,
scripted fakes with timing in the unit tests.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipelines.languages import multilingual_stt
from pipelines.router import ModelRouter
from pipelines.triton_client import TritonClient, TritonModelError, TritonStream

STT_RATE = 16000
# Triton sequence ids are shared by every client of a server: start at a random point
# so that several media-server processes do not collide.
_seq_ids = itertools.count(secrets.randbits(48) + 1)


@dataclass
class Transcript:
    text: str
    final: bool
    details: dict = field(default_factory=dict)

    @property
    def words(self) -> list[dict]:
        return [w for s in self.details.get("segments", []) for w in s.get("words", [])]


class STTStream:
    """One audio stream as a Triton sequence on the streaming Whisper model."""

    def __init__(self, client: TritonClient, model: str = "whisper",
                 language: str | None = None):
        self.model = model
        self.language = language
        self._stream: TritonStream = client.stream()
        self._seq = next(_seq_ids)
        self._started = False

    async def push(self, audio: np.ndarray, *, end: bool = False,
                   flush: bool = False) -> list[Transcript]:
        """Send 16 kHz float32 audio; return what the model answered (partial/final).
        ``flush``: a final of everything so far, the sequence kept open."""
        return await self.send(audio, end=end, flush=flush)

    def send(self, audio: np.ndarray, *, end: bool = False,
             flush: bool = False) -> Awaitable[list[Transcript]]:
        """``push`` in two steps: the request is queued now, in order after the ones
        before (the model serves a sequence's requests in that order), and its answer
        is awaited later, so an END or FLUSH need not wait for the answer in flight."""
        inputs: dict = {"AUDIO": np.asarray(audio, dtype=np.float32).reshape(1, -1)}
        if self.language:
            inputs["LANGUAGE"] = np.array([[self.language]], dtype=np.object_)
        if flush:
            inputs["FLUSH"] = np.array([[True]], dtype=bool)
        queue = self._stream.send(self.model, inputs, sequence_id=self._seq,
                                  sequence_start=not self._started, sequence_end=end)
        self._started = True
        if end:
            self._started = False
            self._seq = next(_seq_ids)
        return self._answers(queue)

    async def _answers(self, queue) -> list[Transcript]:
        out = []
        async for r in self._stream.responses(queue):
            text = r.text("TEXT")
            final = bool(r.outputs["IS_FINAL"].flatten()[0])
            if text or final:
                out.append(Transcript(text, final, json.loads(r.text("DETAILS") or "{}")))
        return out

    async def close(self) -> None:
        await self._stream.close()


@dataclass
class AudioChunk:
    audio: np.ndarray  # int16 mono
    sample_rate: int
    alignment: dict


async def synthesize(client: TritonClient, text: str, *, model: str = "piper",
                     voice: str | None = None, language: str | None = None,
                     speed: float | None = None) -> AsyncIterator[AudioChunk]:
    """Stream TTS audio; closing the iterator early cancels synthesis in Triton."""
    inputs: dict = {"TEXT": text}
    if voice:
        inputs["VOICE"] = voice
    if language:
        inputs["LANGUAGE"] = language
    if speed:
        inputs["SPEED"] = np.array([speed], dtype=np.float32)
    async with client.stream() as stream:
        async for r in stream.infer(model, inputs):
            yield AudioChunk(r.outputs["AUDIO"].reshape(-1), int(r.outputs["SAMPLE_RATE"][0]),
                             json.loads(r.text("ALIGNMENT")))


@dataclass
class Token:
    text: str
    finish_reason: str = ""
    # on the last token: the calls the model made, {"name", "arguments" (JSON text)};
    # a call the model wrote badly also has "error"
    tool_calls: list[dict] = field(default_factory=list)


async def chat(client: TritonClient, messages: list[dict], *, model: str = "llm",
               max_tokens: int = 256, temperature: float | None = None,
               seed: int | None = None, ignore_eos: bool = False,
               tools: list[dict] | None = None, tool_choice: str = "auto",
               conversation: str | None = None) -> AsyncIterator[Token]:
    """Stream LLM tokens; closing the iterator early cancels generation in Triton.
    ``tools`` (chat format) let the model answer with calls (``Token.tool_calls``);
    ``conversation`` (e.g. the session id) lets the model replace that conversation's
    saved prompt state instead of keeping every version of it."""
    inputs: dict = {"MESSAGES": json.dumps(messages),
                    "MAX_TOKENS": np.array([max_tokens], dtype=np.int32)}
    if conversation:
        inputs["CONVERSATION_ID"] = conversation
    if tools:
        inputs["TOOLS"] = json.dumps(tools)
        inputs["TOOL_CHOICE"] = tool_choice
    if temperature is not None:
        inputs["TEMPERATURE"] = np.array([temperature], dtype=np.float32)
    if seed is not None:
        inputs["SEED"] = np.array([seed], dtype=np.int32)
    if ignore_eos:
        inputs["IGNORE_EOS"] = np.array([True])
    async with client.stream() as stream:
        async for r in stream.infer(model, inputs):
            calls = r.text("TOOL_CALLS") if "TOOL_CALLS" in r.outputs else ""
            yield Token(r.text("TEXT"), r.text("FINISH_REASON"),
                        json.loads(calls) if calls else [])


# -- the interfaces the agent's stages are written against --------------------------------
class STTSession(Protocol):
    """One utterance: send 16 kHz float32 audio, get partial and final transcripts;
    ``flush`` asks for a final now and keeps the utterance open (speculative end)."""

    def send(self, audio: np.ndarray, *, end: bool = False,
             flush: bool = False) -> Awaitable[list[Transcript]]:
        """Queue the audio now (in order); await the result for what was answered."""
        ...

    async def close(self) -> None: ...


class STT(Protocol):
    def open(self, language: str | None = None) -> STTSession: ...


class LLM(Protocol):
    def chat(self, messages: list[dict], *, max_tokens: int, temperature: float | None,
             seed: int | None, tools: list[dict] | None = None,
             tool_choice: str = "auto", conversation: str | None = None
             ) -> AsyncIterator[Token]: ...


class TTS(Protocol):
    def synthesize(self, text: str, *, voice: str | None,
                   language: str | None) -> AsyncIterator[AudioChunk]: ...


class TurnJudge(Protocol):
    async def complete(self, audio: np.ndarray) -> float: ...


@dataclass
class Services:
    stt: STT
    llm: LLM
    tts: TTS
    turn: TurnJudge | None = None  # end-of-turn model, for semantic_vad


@dataclass
class TritonSTT:
    router: ModelRouter

    def open(self, language: str | None = None) -> STTStream:
        # another language than English, or "auto": the multilingual Whisper
        route = self.router.route("stt_multilingual" if multilingual_stt(language) else "stt")
        return STTStream(route.client, model=route.model, language=language)


@dataclass
class TritonLLM:
    router: ModelRouter

    def chat(self, messages: list[dict], *, max_tokens: int, temperature: float | None,
             seed: int | None, tools: list[dict] | None = None,
             tool_choice: str = "auto", conversation: str | None = None
             ) -> AsyncIterator[Token]:
        route = self.router.route("agent")
        return chat(route.client, messages, model=route.model, max_tokens=max_tokens,
                    temperature=temperature, seed=seed, tools=tools,
                    tool_choice=tool_choice, conversation=conversation)


@dataclass
class TritonTTS:
    router: ModelRouter

    def synthesize(self, text: str, *, voice: str | None,
                   language: str | None) -> AsyncIterator[AudioChunk]:
        route = self.router.route("tts")
        return synthesize(route.client, text, model=route.model, voice=voice,
                          language=language)


@dataclass
class TritonTurnJudge:
    """The end-of-turn model (smart_turn): the turn's last 8 s in, P(complete) out."""

    router: ModelRouter

    async def complete(self, audio: np.ndarray) -> float:
        route = self.router.route("turn")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)[-8 * STT_RATE:]
        p = None
        async with route.client.stream() as stream:
            async for r in stream.infer(route.model, {"AUDIO": audio.reshape(1, -1)}):
                p = float(r.outputs["PROBABILITY"].reshape(-1)[0])
        if p is None:
            raise TritonModelError(f"{route.model} gave no answer")
        return p


def triton_services(router: ModelRouter) -> Services:
    from pipelines.vision import DirectVision, VisionRoutingLLM

    # a turn with images goes to the multimodal model, the others to the LLM
    llm = VisionRoutingLLM(TritonLLM(router), router.vision or DirectVision(router))
    return Services(TritonSTT(router), llm, TritonTTS(router), TritonTurnJudge(router))
