"""The voice agent of one session: the stages wired together, independent of transport.

    audio in -> TurnDetector -> Utterance (streaming STT) -> Conversation
             -> Responder (LLM -> clauses -> TTS) -> Playout -> AudioSink (transport)

``VoiceAgent`` only coordinates; each stage has one job (see its module). The
STT, LLM and TTS services and the audio sink are injected, so the unit tests
drive the same code with scripted fakes and a fake clock.

Speculative end of turn: at the first short pause the utterance's STT sequence
is flushed (a final now, the sequence kept open) and a reply started, its output
held back. When the silence confirms the turn the held output is released; when
the user goes on talking, the reply is cancelled (inside Triton too) and the
utterance's sequence goes on.

Barge-in: user speech while the reply is generating *or still playing* stops the
output at once and cancels the generation; the history keeps what was heard.

Function calls: a reply may end in calls to the session's tools. They are
checked against the tools' parameters and, once the reply completes, put into
the history and reported with ``ResponseDone``; the client runs them and adds
their outputs, then asks for the next reply. A cancelled reply makes no calls. A
reply that is only a call the model wrote badly is asked again without tools (the
client is told); after spoken text, a bad call fails the reply.
Every way a session ends goes through ``close()``, which cancels all its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from pipelines import frames as F
from pipelines.clock import SYSTEM_CLOCK, Clock
from pipelines.conversation import Conversation, UnknownItem
from pipelines.ids import new_id
from pipelines.languages import answer_in, base, is_english
from pipelines.playout import AudioSink, PacedDeltaSink, Playout
from pipelines.responder import AudioOut, ReplyOptions, Responder, TextOut, ToolCallsOut
from pipelines.services import Services
from pipelines.tools import InvalidToolCall, Tool, ToolCall, check_call, chosen_tools
from pipelines.transcriber import Utterance
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.turns import SemanticEndOfTurn, SemanticTurn, TurnDetector
from pipelines.vad import RATE, VadConfig

log = logging.getLogger(__name__)
DEFAULT_INSTRUCTIONS = ("You are a friendly voice assistant. Answer in one or two short "
                        "sentences of plain spoken English.")


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
    # semantic_vad: the end-of-turn model sets the silence at each pause; None: server_vad
    semantic: SemanticTurn | None = None
    output_rate: int = 24000
    audio_output: bool = True  # False: text-only replies (no TTS)
    respond: bool = True  # False for transcription-only sessions
    max_output_tokens: int = 120
    temperature: float = 0.7
    seed: int | None = None  # fixed sampling (tests, reproducible demos)
    max_history: int = 20  # items kept besides the instructions
    # a longer user turn is cut into turns of this length (bounds memory and STT work)
    max_utterance_s: float = 60.0
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"  # auto | none | required | function:<name>


@dataclass
class TurnTimes:
    """Clock times of one turn, for the latency metrics."""

    speech_stopped: float | None = None
    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None


_RELEASE, _END = object(), object()


class _Hold:
    """A speculative reply's output, kept back until the end of turn is confirmed."""

    def __init__(self, user_text: str) -> None:
        self.user_text = user_text
        self.released = False
        self.inbox: asyncio.Queue | None = None  # the reply task's inbox, for the release
        self.task: asyncio.Task | None = None  # the reply: it may fail while held back

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def release(self) -> None:
        self.released = True
        if self.inbox is not None:
            self.inbox.put_nowait(_RELEASE)


class VoiceAgent:
    """One conversation. Feed audio with ``push_audio``; read frames from ``frames``."""

    def __init__(self, services: Services, config: AgentConfig | None = None, *,
                 sink: AudioSink | None = None, frames: asyncio.Queue | None = None,
                 clock: Clock = SYSTEM_CLOCK, session_id: str = "",
                 on_metric: Callable[[str, float], None] | None = None,
                 vad_classifier: Callable[[np.ndarray], bool] | None = None):
        self.services = services
        self.config = config or AgentConfig()
        self.frames: asyncio.Queue[F.Frame] = frames if frames is not None else asyncio.Queue()
        self.clock = clock
        self.session_id = session_id
        self._vad_classifier = vad_classifier
        self.turns = TurnDetector(self.config.vad, vad_classifier)
        self.end_of_turn = self._end_of_turn()
        self._heard_language: str | None = None  # what STT detected (language "auto")
        self.conversation = Conversation(self.config.max_history)
        # the session's camera (WebRTC video): the JPEG of its latest frame, or None;
        # a user turn spoken while it shows something carries that frame
        self.camera: Callable[[], bytes | None] | None = None
        self.sink = sink or PacedDeltaSink(self.frames.put_nowait, rate=self.config.output_rate,
                                           clock=clock)
        self.playout = Playout(self.sink)
        self.responder = Responder(services.llm, services.tts, session_id or None)
        self._utt: Utterance | None = None
        self._utterances: set[Utterance] = set()  # still transcribing, for close()
        self._response: asyncio.Task | None = None
        self._hold: _Hold | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_item: str | None = None
        self._turn = TurnTimes()
        self._on_metric = on_metric or (lambda name, value: None)
        self.closed = False

    # -- configuration -------------------------------------------------------------------
    def configure(self, **changes) -> None:
        vad_changed = "vad" in changes and changes["vad"] != self.config.vad
        semantic_changed = changes.get("semantic", self.config.semantic) != self.config.semantic
        self.config = replace(self.config, **changes)
        if vad_changed:
            self.turns = TurnDetector(self.config.vad, self._vad_classifier)
        if semantic_changed:
            if self.end_of_turn is not None:
                self.end_of_turn.cancel()
            self.end_of_turn = self._end_of_turn()
        self.conversation.max_items = self.config.max_history
        if isinstance(self.sink, PacedDeltaSink):
            self.sink.rate = self.config.output_rate

    @property
    def responding(self) -> bool:
        """A reply is being generated (or its audio is still being sent)."""
        return self._response is not None and not self._response.done()

    @property
    def speaking(self) -> bool:
        """The assistant is talking: generating, or audio not yet played."""
        return self.responding or self.playout.speaking

    @property
    def reply_language(self) -> str | None:
        """The language replies are spoken in (None: the default English voice); with
        transcription language ``auto``, the one STT heard last."""
        lang = self.config.tts_language
        if lang is not None and base(lang) == "auto":
            return self._heard_language
        return lang

    def _emit(self, frame: F.Frame) -> None:
        self.frames.put_nowait(frame)

    def _metric(self, stage: str, at: float) -> None:
        if self._turn.speech_stopped is not None:
            self._on_metric(stage, max(0.0, at - self._turn.speech_stopped))

    # -- audio in -------------------------------------------------------------------------
    async def push_audio(self, audio: np.ndarray) -> None:
        """16 kHz mono float32 audio from the user, any chunk size."""
        if self.closed:
            return
        if not self.config.turn_detection:
            self._utterance().push(audio)
            return
        for ev in self.turns.feed(audio):
            if ev.kind == "audio":
                if self._utt is not None:
                    self._utt.push(ev.audio)
                    if self._utt.full:  # an endless turn (or noise): cut it here
                        self._speech_stopped(self.turns.now_ms)
                        self.turns.end_turn()
            elif ev.kind == "started":
                await self._speech_started(ev.at_ms, ev.audio)
            elif ev.kind == "paused":
                guessing = self._speech_paused()
                if self.end_of_turn is not None:
                    self.end_of_turn.paused(self.turns, expect_text=guessing)
            elif ev.kind == "resumed":
                if self.end_of_turn is not None:
                    self.end_of_turn.resumed()
                await self._speech_resumed()
            elif ev.kind == "stopped":
                if self.end_of_turn is not None:
                    self.end_of_turn.cancel()
                self._speech_stopped(ev.at_ms)

    def _end_of_turn(self) -> SemanticEndOfTurn | None:
        if self.config.semantic is None:
            return None
        return SemanticEndOfTurn(self.config.semantic, self.services.turn)

    async def _speech_started(self, at_ms: int, prefix: np.ndarray | None) -> None:
        # A new turn: a speculative reply started during it shares this object, so
        # its latencies count from the end of speech confirmed later.
        self._turn = TurnTimes()
        utt = self._utterance()
        self._emit(F.SpeechStarted(utt.item_id, at_ms))
        if self.config.interrupt_response and self.speaking:
            await self.interrupt("turn_detected")  # barge-in
        if prefix is not None and prefix.size:
            utt.push(prefix)

    def _speech_paused(self) -> bool:
        """A pause that may be the end of the turn: finish the transcript (and start the
        reply) now, holding the output back until the silence is long enough. True when
        a speculative transcript is coming."""
        utt = self._utt
        if utt is None or utt.ended or self.responding:
            return False
        utt.end(speculative=True)
        return True

    async def _speech_resumed(self) -> None:
        """The user went on talking: drop the speculative reply, continue the
        utterance's STT sequence."""
        utt = self._utt
        if utt is None or not utt.speculative or utt.confirmed:
            return
        if self._hold is not None:
            self._hold = None
            await self.cancel_response("speech_resumed")
        utt.resume()

    def _speech_stopped(self, at_ms: int) -> None:
        utt = self._utt
        if utt is None:
            return
        self._turn.speech_stopped = self.clock.now()
        self._emit(F.SpeechStopped(utt.item_id, at_ms))
        self.commit()

    def _utterance(self) -> Utterance:
        if self._utt is None:
            self._utt = Utterance(new_id("item"), self.services.stt, self.config.language,
                                  on_partial=self._partial, on_final=self._final,
                                  on_failed=self._stt_failed,
                                  max_s=self.config.max_utterance_s)
            self._utterances = {u for u in self._utterances if not u.done}
            self._utterances.add(self._utt)
        return self._utt

    def commit(self) -> str | None:
        """End the current utterance (end of turn, or the client's commit)."""
        utt, self._utt = self._utt, None
        if utt is None:
            return None
        if not self.config.turn_detection:  # the client's commit ends its turn
            self._turn = TurnTimes(speech_stopped=self.clock.now())
        elif self.turns.speaking:  # the client committed in the middle of speech
            self.turns.end_turn()
        self._emit(F.BufferCommitted(utt.item_id, self._last_item))
        self._last_item = utt.item_id
        utt.confirmed = True
        ready = utt.final if utt.ended else None  # the speculative transcript, if in
        utt.delivered = ready is not None  # the END's answer repeats it
        utt.end()  # END; after a flush it closes the STT sequence
        if ready is not None:
            self._publish_final(utt, *ready)
        return utt.item_id

    async def clear(self) -> None:
        utt, self._utt = self._utt, None
        if utt is not None:
            await utt.cancel()
        self.turns.end_turn()
        self._emit(F.BufferCleared())

    # -- transcription callbacks ------------------------------------------------------------
    def _partial(self, utt: Utterance, delta: str, text: str) -> None:
        self._emit(F.TranscriptDelta(utt.item_id, delta, text))

    def _stt_failed(self, utt: Utterance, message: str) -> None:
        log.warning("session %s: transcription of %s failed: %s", self.session_id,
                    utt.item_id, message)
        self._emit(F.TranscriptFailed(utt.item_id, message))
        self._emit(F.ErrorFrame("transcription_failed", message))

    def _final(self, utt: Utterance, text: str, details: dict) -> None:
        if self.config.language == "auto" and details.get("language"):
            heard = base(details["language"])  # answer in what the user spoke
            self._heard_language = None if is_english(heard) else heard
        if utt.speculative and not utt.confirmed:
            if self.end_of_turn is not None:  # the words so far tell whether it is done
                self.end_of_turn.transcript(text)
            cfg = self.config
            if text.strip() and cfg.respond and cfg.create_response and not self.responding:
                # start thinking while the silence is being confirmed
                self._hold = _Hold(text)
                self.start_response(hold=self._hold)
            return
        self._publish_final(utt, text, details)

    def _publish_final(self, utt: Utterance, text: str, details: dict) -> None:
        now = self.clock.now()
        if self._turn.speech_stopped is not None and self._turn.transcript is None:
            self._turn.transcript = now
            self._metric("stt_final", now)
        self._emit(F.TranscriptCompleted(utt.item_id, text, details, utt.sent_samples / RATE))
        hold, self._hold = self._hold, None
        if not self.config.respond or not text.strip():
            if hold is not None:
                self._spawn(self.cancel_response("empty_transcript"))
            return
        frame = self.camera() if self.camera is not None else None
        self.conversation.add(utt.item_id, "user", text, images=(frame,) if frame else ())
        if hold is not None and hold.user_text == text and hold.alive:
            hold.release()
            return
        if hold is not None:  # the final changed after the guess, or the guess failed
            self._spawn(self._restart_response())  # (e.g. busy): answer the turn now
            return
        if self.config.create_response and self.config.turn_detection:
            self.start_response()

    async def _restart_response(self) -> None:
        await self.cancel_response("transcript_changed")
        self.start_response()

    # -- replies ----------------------------------------------------------------------------
    def _user_content(self, text: str) -> str | list[dict]:
        """What the user said, with the camera's frame when it shows something."""
        frame = self.camera() if self.camera is not None else None
        if frame is None:
            return text
        return [{"type": "image", "image": frame}, {"type": "text", "text": text}]

    def add_message(self, role: str, text: str, item_id: str | None = None,
                    images: tuple[bytes, ...] = ()) -> str:
        """``images``: a user message that shows something (input_image parts)."""
        item_id = item_id or new_id("item")
        self.conversation.add(item_id, role, text, images=images)
        return item_id

    def add_function_item(self, kind: str, call_id: str, *, output: str = "",
                          name: str = "", arguments: str = "",
                          item_id: str | None = None) -> str:
        """A function_call_output (the client's result for ``call_id``) or a
        function_call item into the history."""
        item_id = item_id or new_id("item")
        role = "tool" if kind == "function_call_output" else "assistant"
        self.conversation.add(item_id, role, output, type=kind, call_id=call_id, name=name,
                              arguments=arguments)
        return item_id

    def start_response(self, instructions: str | None = None, *,
                       hold: _Hold | None = None, tools: tuple[Tool, ...] | None = None,
                       tool_choice: str | None = None) -> str | None:
        """Start a reply to the conversation so far (plus the held user text of a
        speculative reply); None when one is already running. ``tools`` and
        ``tool_choice`` replace the session's for this reply."""
        if self.responding or self.closed:
            return None
        rid = new_id("resp")
        messages = self.conversation.messages(
            answer_in(instructions or self.config.instructions, self.reply_language))
        if hold is not None:
            messages.append({"role": "user", "content": self._user_content(hold.user_text)})
        options = self._options(tools, tool_choice)
        self._response = self._spawn(self._respond(rid, messages, hold, options))
        if hold is not None:
            hold.task = self._response
        return rid

    async def cancel_response(self, reason: str = "client_cancelled") -> bool:
        task = self._response
        if task is None or task.done():
            return False
        task.cancel(reason)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return True

    async def interrupt(self, reason: str) -> bool:
        """Stop the assistant now: output first (the listener must hear nothing more),
        then generation. The reply's history item keeps what was heard."""
        heard = self.playout.interrupt()
        cancelled = await self.cancel_response(reason)
        if heard is not None and not cancelled:  # generation was over: audio was playing
            self._truncated(heard.item_id, heard.response_id, heard.audio_end_s)
        return heard is not None or cancelled

    def truncate(self, item_id: str, audio_end_ms: int) -> str:
        """The client says only ``audio_end_ms`` of an assistant item was heard."""
        item = self.conversation.get(item_id)  # UnknownItem for a wrong id
        if item.role != "assistant":
            raise ValueError(f"item {item_id} is a {item.role} message, not assistant audio")
        if audio_end_ms / 1000 > item.audio_s + 0.001:
            raise ValueError(f"audio_end_ms {audio_end_ms} is beyond the item's audio "
                             f"({item.audio_s * 1000:.0f} ms)")
        if self.playout.item_id == item_id:
            self.playout.interrupt()
        return self.conversation.truncate(item_id, audio_end_ms / 1000).text

    def _truncated(self, item_id: str, response_id: str, audio_end_s: float) -> None:
        """The history keeps what was heard of the reply; the client is told."""
        try:
            text = self.conversation.truncate(item_id, audio_end_s).text
        except (UnknownItem, ValueError):  # already gone from the history
            text = ""
        self._emit(F.OutputInterrupted(response_id, item_id, round(audio_end_s * 1000), text))

    def _options(self, tools: tuple[Tool, ...] | None = None,
                 tool_choice: str | None = None) -> ReplyOptions:
        cfg = self.config
        tools, choice = chosen_tools(cfg.tools if tools is None else tools,
                                     tool_choice or cfg.tool_choice)
        return ReplyOptions(output_rate=self.sink.rate, audio=cfg.audio_output,
                            voice=cfg.voice, language=self.reply_language,
                            max_tokens=cfg.max_output_tokens, temperature=cfg.temperature,
                            seed=cfg.seed, tools=tools, tool_choice=choice)

    async def _respond(self, rid: str, messages: list[dict], hold: _Hold | None,
                       options: ReplyOptions) -> None:
        item_id = new_id("item")
        inbox: asyncio.Queue = asyncio.Queue()
        held: list = []
        if hold is not None:
            hold.inbox = inbox
            if hold.released:
                inbox.put_nowait(_RELEASE)
        is_held = lambda: hold is not None and not hold.released  # noqa: E731
        pump = asyncio.create_task(self._pump(messages, options, inbox))
        text: list[str] = []
        said_calls: list[dict] = []
        calls: list[ToolCall] = []
        status, reason, code = "completed", None, None
        started = False
        notice = None  # a call the model wrote badly, answered without tools instead

        async def deliver(item) -> None:
            nonlocal started
            if not started:
                started = True
                self.playout.begin(rid, item_id)
                self._emit(F.ResponseStarted(rid, item_id))
            if isinstance(item, TextOut):
                if self._turn.first_token is None:
                    self._turn.first_token = self.clock.now()
                    self._metric("first_token", self._turn.first_token)
                self._emit(F.ResponseTextDelta(rid, item_id, item.delta))
            elif isinstance(item, AudioOut):
                if self._turn.first_audio is None:
                    self._turn.first_audio = self.clock.now()
                    self._metric("first_audio", self._turn.first_audio)
                await self.playout.write(item)

        finished = False  # the reply's end came while it was held back
        try:
            while True:
                item = await inbox.get()
                if item is _RELEASE:
                    for h in held:
                        await deliver(h)
                    held.clear()
                    if finished:  # all of it was ready before the turn was confirmed
                        break
                elif item is _END:
                    problem = None
                    if said_calls and notice is None and not "".join(text).strip():
                        problem = self._call_problem(said_calls, options.tools)
                    if problem is not None:
                        # Only a call that cannot be run, nothing said: ask the model
                        # once more without tools, so the user gets an answer.
                        notice = f"{problem}; answered without tools instead"
                        log.warning("session %s: response %s: %s", self.session_id, rid,
                                    notice)
                        said_calls = []
                        pump = asyncio.create_task(self._pump(
                            messages, replace(options, tools=()), inbox))
                        continue
                    if not is_held():
                        break
                    finished = True
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, ToolCallsOut):
                    said_calls += item.calls
                else:
                    if isinstance(item, TextOut):
                        text.append(item.delta)
                    if is_held():
                        held.append(item)
                    else:
                        await deliver(item)
            await self.sink.flush()  # WebSocket: every delta sent before response.done
        except asyncio.CancelledError as exc:
            status, reason = "cancelled", (exc.args[0] if exc.args else "client_cancelled")
        except (TritonUnavailable, TritonModelError) as exc:
            status, reason = "failed", str(exc)
            code = getattr(exc, "code", None)  # "busy": a heavy model at its cap
            log.warning("session %s: response %s failed: %s", self.session_id, rid, exc)
        except Exception as exc:  # a bug: say so to the client and in the log
            status, reason = "failed", f"internal error: {type(exc).__name__}: {exc}"
            log.exception("session %s: response %s failed", self.session_id, rid)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            if hold is None or hold.released:  # else a guess taken back: never shown
                full = "".join(text).strip()
                if status == "completed" and said_calls:
                    try:
                        calls = self._checked_calls(said_calls, options.tools)
                    except InvalidToolCall as exc:
                        status, reason, code = "failed", str(exc), "invalid_tool_call"
                        log.warning("session %s: response %s: %s", self.session_id, rid, exc)
                message = started or bool(full) or not said_calls
                if not started:  # nothing was delivered: still a response to report
                    self.playout.begin(rid, item_id)
                    self._emit(F.ResponseStarted(rid, item_id, message))
                if status == "failed":
                    self._emit(F.ErrorFrame(code or "response_failed",
                                            reason or "response failed"))
                if notice is not None:
                    self._emit(F.ErrorFrame("invalid_tool_call", notice))
                heard_s = self._finish_item(rid, item_id, full, status)
                for call in calls:
                    self.add_function_item("function_call", call.call_id, name=call.name,
                                           arguments=call.arguments, item_id=call.item_id)
                audio_s = self.playout.audio_s if self.playout.response_id == rid else 0.0
                self._emit(F.ResponseDone(rid, item_id, status, full, reason, audio_s,
                                          message, calls, code))
                if heard_s is not None:  # after response.done, as OpenAI orders them
                    self._truncated(item_id, rid, heard_s)

    @classmethod
    def _call_problem(cls, said: list[dict], tools: tuple[Tool, ...]) -> str | None:
        try:
            cls._checked_calls(said, tools)
        except InvalidToolCall as exc:
            return str(exc)
        return None

    @staticmethod
    def _checked_calls(said: list[dict], tools: tuple[Tool, ...]) -> list[ToolCall]:
        """The model's calls with ids, or InvalidToolCall for the first bad one."""
        calls = []
        for c in said:
            if c.get("error"):
                raise InvalidToolCall(f"the model wrote a function call that cannot be "
                                      f"read: {c['error']}")
            call = check_call(str(c.get("name", "")), str(c.get("arguments", "")), tools)
            calls.append(replace(call, call_id=new_id("call"), item_id=new_id("item")))
        return calls

    def _finish_item(self, rid: str, item_id: str, text: str, status: str) -> float | None:
        """The assistant item goes into the history; for a spoken reply that did not
        complete, returns how much of it was heard (seconds) to truncate it to."""
        spans = list(self.playout.spans) if self.playout.response_id == rid else []
        if not spans:
            # text only, or stopped before any audio: in a spoken reply nothing was heard
            if text and (status == "completed" or not self.config.audio_output):
                self.conversation.add(item_id, "assistant", text)
            return None
        self.conversation.add(item_id, "assistant", text, spans)
        if status == "completed":
            return None
        heard = self.playout.heard()
        return heard.audio_end_s if heard is not None else 0.0

    async def _pump(self, messages: list[dict], options: ReplyOptions,
                    inbox: asyncio.Queue) -> None:
        try:
            async with contextlib.aclosing(self.responder.run(messages, options)) as gen:
                async for item in gen:
                    inbox.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            inbox.put_nowait(exc)
        finally:
            inbox.put_nowait(_END)

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task | None:
        if self.closed:  # nothing may start once the session is over
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel every task and Triton stream of this session."""
        self.closed = True
        self.sink.clear()
        if self.end_of_turn is not None:
            await self.end_of_turn.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for utt in list(self._utterances):
            await utt.cancel()
        self._utterances.clear()
        self._utt = None
