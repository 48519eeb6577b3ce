"""The voice-agent loop for one session, independent of the transport.

    audio in -> VAD -> streaming STT (partials, final) -> LLM (tokens) -> clauses
             -> TTS (audio chunks) -> frames out

Each stage runs as its own task so audio intake never waits on a model. A user
turn is an *utterance* (one Triton STT sequence); a reply is a *response* task
that pipelines LLM tokens into TTS clause by clause. Barge-in cancels the
response task: closing its Triton streams cancels the requests inside Triton.
``close()`` cancels everything, so nothing runs after a client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipelines import frames as F
from pipelines.audio import Resampler
from pipelines.clauses import ClauseSplitter
from pipelines.router import ModelRouter
from pipelines.services import STTStream, chat, synthesize
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.vad import FRAME, RATE, VadConfig, VoiceActivity

log = logging.getLogger(__name__)
_ids = itertools.count(1)
STT_SEND_S = 0.1
DEFAULT_INSTRUCTIONS = ("You are a friendly voice assistant. Answer in one or two short "
                        "sentences of plain spoken English.")


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}{int(time.time() * 1000) % 100000:05d}"


@dataclass
class AgentConfig:
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str | None = None
    language: str | None = None  # transcription language
    tts_language: str | None = None
    turn_detection: bool = True  # server VAD; False: the client commits
    create_response: bool = True  # reply automatically at end of turn
    interrupt_response: bool = True  # barge-in
    vad: VadConfig = field(default_factory=VadConfig)
    output_rate: int = 24000
    respond: bool = True  # False for transcription-only sessions
    max_output_tokens: int = 120
    temperature: float = 0.7
    seed: int | None = None  # fixed sampling (tests, reproducible demos)
    max_history: int = 20  # messages kept besides the system prompt
    audio_delta_ms: int = 200  # size of outbound audio pieces
    # "deltas": audio in audio_delta_ms pieces (WebSocket); "chunks": one frame per TTS
    # piece with its alignment (WebRTC tracks and the avatar)
    audio_mode: str = "deltas"


@dataclass
class TurnTimes:
    """Monotonic times of one turn, for latency metrics."""

    speech_stopped: float | None = None
    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None


class _Utterance:
    def __init__(self, item_id: str, stream: STTStream):
        self.item_id = item_id
        self.stream = stream
        self.queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.samples = 0
        self.text = ""
        self.audio: list[np.ndarray] = []  # everything heard, to restart after a pause
        self.ended = False  # END sent to STT (commit, or a speculative end of turn)
        self.speculative = False  # ended on a pause that silence has not confirmed yet
        self.confirmed = False
        self.final: tuple[str, dict] | None = None  # held while speculative


class _Hold:
    """Frames of a speculative response, kept back until the end of turn is confirmed."""

    def __init__(self) -> None:
        self.released = False
        self.frames: list[F.Frame] = []
        self.reply_text: str | None = None  # set when the reply finished while held


class VoiceAgent:
    """One conversation. Feed audio with ``push_audio``; read frames from ``frames``."""

    def __init__(self, router: ModelRouter, config: AgentConfig | None = None,
                 on_metric: Callable[[str, float], None] | None = None):
        self.router = router
        self.config = config or AgentConfig()
        self.frames: asyncio.Queue[F.Frame] = asyncio.Queue()
        self.vad = VoiceActivity(self.config.vad)
        self.history: list[dict] = []
        self._prefix: deque[np.ndarray] = deque()
        self._prefix_samples = 0
        self._utt: _Utterance | None = None
        self._response: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_item: str | None = None
        self._turn = TurnTimes()
        self._hold: _Hold | None = None
        self._on_metric = on_metric or (lambda name, value: None)
        self.closed = False

    # -- configuration -------------------------------------------------------------------
    def configure(self, **changes) -> None:
        vad_changed = "vad" in changes and changes["vad"] != self.config.vad
        self.config = replace(self.config, **changes)
        if vad_changed:
            self.vad = VoiceActivity(self.config.vad)

    @property
    def responding(self) -> bool:
        return self._response is not None and not self._response.done()

    # -- audio in -------------------------------------------------------------------------
    async def push_audio(self, audio: np.ndarray) -> None:
        """16 kHz mono float32 audio from the user, any chunk size."""
        if self.closed:
            return
        if not self.config.turn_detection:
            self._utterance().queue.put_nowait(audio)
            return
        # 20 ms at a time, so a start and a stop inside one large chunk both land
        # on the right audio.
        for i in range(0, audio.size, FRAME):
            piece = audio[i:i + FRAME]
            events = self.vad.feed(piece)
            for ev in events:
                if ev.kind == "speech_started":
                    await self._speech_started(ev.at_ms)
                elif ev.kind == "speech_resumed":
                    await self._speech_resumed()
            utt = self._utt
            if utt is not None:
                utt.audio.append(piece)
                if not utt.ended:
                    utt.queue.put_nowait(piece)
            else:
                self._remember_prefix(piece)
            for ev in events:
                if ev.kind == "speech_paused":
                    self._speech_paused()
                elif ev.kind == "speech_stopped":
                    self._speech_stopped(ev.at_ms)

    def _remember_prefix(self, audio: np.ndarray) -> None:
        self._prefix.append(audio)
        self._prefix_samples += audio.size
        keep = self.config.vad.prefix_padding_ms * RATE // 1000
        while self._prefix and self._prefix_samples - self._prefix[0].size >= keep:
            self._prefix_samples -= self._prefix.popleft().size

    async def _speech_started(self, at_ms: int) -> None:
        # A new turn: a speculative reply started during it shares this object, so
        # its latencies count from the end of speech confirmed later.
        self._turn = TurnTimes()
        utt = self._utterance()
        self.frames.put_nowait(F.SpeechStarted(utt.item_id, at_ms))
        if self.responding and self.config.interrupt_response:
            await self.cancel_response("turn_detected")  # barge-in
        if self._prefix:
            prefix = np.concatenate(list(self._prefix))
            utt.audio.append(prefix)
            utt.queue.put_nowait(prefix)
        self._prefix.clear()
        self._prefix_samples = 0

    def _speech_paused(self) -> None:
        """A pause that may be the end of the turn: finish the transcript (and start the
        reply) now, holding the output back until the silence is long enough."""
        utt = self._utt
        if utt is None or utt.ended or not self.config.turn_detection or self.responding:
            return
        utt.ended = utt.speculative = True
        utt.queue.put_nowait(None)

    async def _speech_resumed(self) -> None:
        """The user went on talking: drop the speculative reply, continue the utterance
        on a new STT sequence with all its audio so far."""
        utt = self._utt
        if utt is None or not utt.speculative or utt.confirmed:
            return
        if self._response is not None and self._hold is not None:
            await self.cancel_response("speech_resumed")
        self._hold = None
        if utt.task is not None and not utt.task.done():
            utt.task.cancel()
        route = self.router.route("stt")
        utt.stream = STTStream(route.client, model=route.model, language=self.config.language)
        utt.queue = asyncio.Queue()
        utt.ended = utt.speculative = False
        utt.final, utt.text, utt.samples = None, "", 0
        utt.queue.put_nowait(np.concatenate(utt.audio))
        utt.task = self._spawn(self._transcribe(utt))

    def _speech_stopped(self, at_ms: int) -> None:
        utt = self._utt
        if utt is None:
            return
        self._turn.speech_stopped = time.monotonic()
        self.frames.put_nowait(F.SpeechStopped(utt.item_id, at_ms))
        self.commit()

    def _utterance(self) -> _Utterance:
        if self._utt is None:
            route = self.router.route("stt")
            stt = STTStream(route.client, model=route.model, language=self.config.language)
            self._utt = _Utterance(new_id("item"), stt)
            self._utt.task = self._spawn(self._transcribe(self._utt))
        return self._utt

    def commit(self) -> str | None:
        """End the current utterance (end of turn, or the client's commit)."""
        utt, self._utt = self._utt, None
        if utt is None:
            return None
        if not self.config.turn_detection:  # the client's commit ends its turn
            self._turn = TurnTimes(speech_stopped=time.monotonic())
        self.frames.put_nowait(F.BufferCommitted(utt.item_id, self._last_item))
        self._last_item = utt.item_id
        utt.confirmed = True
        if not utt.ended:
            utt.ended = True
            utt.queue.put_nowait(None)
        elif utt.final is not None:  # the speculative transcript was ready: use it now
            self._publish_final(utt, *utt.final)
        return utt.item_id

    async def clear(self) -> None:
        utt, self._utt = self._utt, None
        if utt is not None and utt.task is not None:
            utt.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await utt.task
        self.vad.reset()
        self.frames.put_nowait(F.BufferCleared())

    async def _transcribe(self, utt: _Utterance) -> None:
        """Send the utterance's audio to STT as it comes; emit partials and the final.

        Audio is sent in pieces of at least ``STT_SEND_S`` (fewer requests), and
        whatever queued up while a partial was being decoded goes out as one piece.
        """
        stream, queue = utt.stream, utt.queue  # a resumed utterance gets new ones
        pending: list[np.ndarray] = []
        pending_samples = 0
        try:
            while True:
                chunk = await queue.get()
                end = chunk is None
                if chunk is not None:
                    pending.append(chunk)
                    pending_samples += chunk.size
                while not end and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None:
                        end = True
                    else:
                        pending.append(nxt)
                        pending_samples += nxt.size
                if not end and pending_samples < STT_SEND_S * RATE:
                    continue
                data = np.concatenate(pending) if pending else np.zeros(0, np.float32)
                pending, pending_samples = [], 0
                utt.samples += data.size
                for t in await stream.push(data, end=end):
                    if t.final:
                        self._final_transcript(utt, t.text, t.details)
                    elif t.text:
                        delta = t.text[len(utt.text):] if t.text.startswith(utt.text) \
                            else t.text
                        utt.text = t.text
                        self.frames.put_nowait(F.TranscriptDelta(utt.item_id, delta, t.text))
                if end:
                    return
        except (TritonUnavailable, TritonModelError) as exc:
            if stream is utt.stream:  # not an abandoned sequence of a resumed utterance
                self.frames.put_nowait(F.TranscriptFailed(utt.item_id, str(exc)))
                self.frames.put_nowait(F.ErrorFrame("transcription_failed", str(exc)))
        finally:
            await stream.close()

    def _final_transcript(self, utt: _Utterance, text: str, details: dict) -> None:
        if utt.speculative and not utt.confirmed:
            utt.final = (text, details)
            cfg = self.config
            if text.strip() and cfg.respond and cfg.create_response:
                # start thinking while the silence is being confirmed
                self._hold = _Hold()
                self.start_response(user_text=text, hold=self._hold)
            return
        self._publish_final(utt, text, details)

    def _publish_final(self, utt: _Utterance, text: str, details: dict) -> None:
        now = time.monotonic()
        if self._turn.speech_stopped is not None:
            self._turn.transcript = now
            self._on_metric("stt_final", max(0.0, now - self._turn.speech_stopped))
        self.frames.put_nowait(F.TranscriptCompleted(utt.item_id, text, details,
                                                     utt.samples / RATE))
        if not self.config.respond or not text.strip():
            return
        hold, self._hold = self._hold, None
        self.add_message("user", text)
        if hold is not None:
            self._release(hold)
            if hold.reply_text:  # the reply finished while it was held
                self.add_message("assistant", hold.reply_text)
            return
        if self.config.create_response and self.config.turn_detection:
            self.start_response()

    def _release(self, hold: _Hold) -> None:
        """The end of turn is confirmed: send what the speculative reply has so far."""
        hold.released = True
        turn = self._turn
        for frame in hold.frames:
            self.frames.put_nowait(frame)
            if isinstance(frame, F.ResponseTextDelta) and turn.first_token is None:
                turn.first_token = time.monotonic()
                self._on_metric("first_token", turn.first_token - turn.speech_stopped)
            if isinstance(frame, F.ResponseAudioDelta | F.ResponseAudioChunk) and \
                    turn.first_audio is None:
                turn.first_audio = time.monotonic()
                self._on_metric("first_audio", turn.first_audio - turn.speech_stopped)
        hold.frames.clear()

    # -- responses ------------------------------------------------------------------------
    def add_message(self, role: str, text: str) -> None:
        self.history.append({"role": role, "content": text})
        del self.history[:-self.config.max_history]

    def start_response(self, instructions: str | None = None, *, user_text: str | None = None,
                       hold: _Hold | None = None) -> str | None:
        """Start a reply to the conversation so far (plus ``user_text`` for a speculative
        reply, whose frames ``hold`` keeps back); None when one is already running."""
        if self.responding:
            return None
        rid = new_id("resp")
        self._response = self._spawn(self._respond(rid, instructions, user_text, hold))
        return rid

    def _out(self, frame: F.Frame, hold: _Hold | None) -> None:
        if hold is not None and not hold.released:
            hold.frames.append(frame)
        else:
            self.frames.put_nowait(frame)

    async def cancel_response(self, reason: str = "client_cancelled") -> bool:
        task = self._response
        if task is None or task.done():
            return False
        task.cancel(reason)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return True

    async def _respond(self, rid: str, instructions: str | None, user_text: str | None = None,
                       hold: _Hold | None = None) -> None:
        item_id = new_id("item")
        cfg = self.config
        self._out(F.ResponseStarted(rid, item_id), hold)
        messages = [{"role": "system", "content": instructions or cfg.instructions},
                    *self.history]
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        spoken: list[str] = []
        audio_samples = 0
        clauses: asyncio.Queue[str | None] = asyncio.Queue()
        turn = self._turn
        llm = self.router.route("agent")
        tts = self.router.route("tts")

        async def generate() -> None:
            splitter = ClauseSplitter()
            gen = chat(llm.client, messages, model=llm.model,
                       max_tokens=cfg.max_output_tokens, temperature=cfg.temperature,
                       seed=cfg.seed)
            async with contextlib.aclosing(gen):
                async for tok in gen:
                    if not tok.text:
                        continue
                    held = hold is not None and not hold.released
                    if turn.first_token is None and turn.speech_stopped is not None \
                            and not held:
                        turn.first_token = time.monotonic()
                        self._on_metric("first_token", turn.first_token - turn.speech_stopped)
                    spoken.append(tok.text)
                    self._out(F.ResponseTextDelta(rid, item_id, tok.text), hold)
                    for clause in splitter.push(tok.text):
                        clauses.put_nowait(clause)
            for clause in splitter.flush():
                clauses.put_nowait(clause)

        async def produce() -> None:
            try:
                await generate()
            finally:
                clauses.put_nowait(None)

        producer = asyncio.create_task(produce())
        status, reason = "completed", None
        try:
            resampler: Resampler | None = None
            piece = cfg.output_rate * cfg.audio_delta_ms // 1000
            while (clause := await clauses.get()) is not None:
                gen = synthesize(tts.client, clause, model=tts.model, voice=cfg.voice,
                                 language=cfg.tts_language)
                async with contextlib.aclosing(gen):
                    async for chunk in gen:
                        if resampler is None:
                            resampler = Resampler(chunk.sample_rate, cfg.output_rate)
                        pcm = resampler.process(chunk.audio)
                        if turn.first_audio is None and turn.speech_stopped is not None \
                                and (hold is None or hold.released):
                            turn.first_audio = time.monotonic()
                            self._on_metric("first_audio",
                                            turn.first_audio - turn.speech_stopped)
                        if cfg.audio_mode == "chunks":
                            self._out(F.ResponseAudioChunk(
                                rid, item_id, pcm.astype("<i2").tobytes(), chunk.alignment,
                                audio_samples / cfg.output_rate), hold)
                            audio_samples += pcm.size
                            continue
                        for i in range(0, pcm.size, piece):
                            part = pcm[i:i + piece]
                            audio_samples += part.size
                            self._out(F.ResponseAudioDelta(
                                rid, item_id, part.astype("<i2").tobytes(),
                                chunk.alignment if i == 0 else None), hold)
            await producer  # re-raise LLM errors
        except asyncio.CancelledError as exc:
            status, reason = "cancelled", (exc.args[0] if exc.args else "client_cancelled")
        except (TritonUnavailable, TritonModelError) as exc:
            status, reason = "failed", str(exc)
            self._out(F.ErrorFrame("response_failed", str(exc)), hold)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            text = "".join(spoken).strip()
            # A reply whose turn is not confirmed yet goes into the history on release.
            if text and (hold is None or hold.released):
                self.add_message("assistant", text)
            elif hold is not None:
                hold.reply_text = text
            self._out(F.ResponseDone(rid, item_id, status, text, reason,
                                     audio_samples / cfg.output_rate), hold)

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel every task and Triton stream of this session."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._utt is not None:
            await self._utt.stream.close()
            self._utt = None

