"""The OpenAI Realtime protocol (GA event names, beta aliases) on top of the voice agent.

A ``RealtimeSession`` turns client events into calls on a ``VoiceAgent`` and the
agent's frames into server events. It knows nothing of the transport: it takes
a ``send(event_dict)`` coroutine, so WebSocket and WebRTC data channels share it.
Every server event, whether it answers a client event or comes from the agent,
goes through one queue and one writer, so events leave in the order they happen.
See docs/protocol.md for the subset, the differences and the extensions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from pipelines import frames as F
from pipelines.agent import AgentConfig, VoiceAgent
from pipelines.audio import Resampler, pcm16_to_float
from pipelines.clock import SYSTEM_CLOCK, Clock
from pipelines.conversation import UnknownItem
from pipelines.ids import new_id
from pipelines.playout import AudioSink, PacedDeltaSink
from pipelines.router import ModelRouter
from pipelines.services import Services, triton_services
from pipelines.tools import Tool, ToolCall
from pipelines.turns import SEMANTIC
from pipelines.vad import RATE, VadConfig
from streaming import events as E
from streaming import metrics as M
from streaming.events import ProtocolError, parse_event

log = logging.getLogger(__name__)
# GA name -> beta name, for clients that speak the beta protocol.
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1 << 20  # documented maximum of one client message
    messages_per_s: float = 200.0  # sustained; bursts up to 2 s worth
    max_buffer_s: float = 60.0  # manual-commit audio buffer
    max_instructions_chars: int = 8000
    max_text_chars: int = 4000


@dataclass
class ServerEvent(F.Frame):
    """An event that answers a client event, queued behind the agent's frames."""

    type: str
    fields: dict = field(default_factory=dict)


class RealtimeSession:
    def __init__(self, send: Callable[[dict], Awaitable[None]], router: ModelRouter | None, *,
                 kind: str = "realtime", beta: bool = False, limits: Limits | None = None,
                 model: str = "rtmedia-voice", media: AudioSink | None = None,
                 services: Services | None = None, clock: Clock = SYSTEM_CLOCK,
                 audio_lead_s: float = 0.5):
        self._send = send
        # WebRTC: reply audio goes to media tracks (with avatar frames), not to events
        self.media = media
        self.out: asyncio.Queue[F.Frame] = asyncio.Queue()
        self.kind = kind  # "realtime" (voice agent) or "transcription" (captions)
        self.beta = beta
        self.limits = limits or Limits()
        self.model = model
        self.id = new_id("sess")
        self.input_rate = 24000
        self.output_modalities = ["audio"]
        self.configured = False
        self._warned_unconfigured = False
        self._resampler: Resampler | None = None
        self._tokens = self.limits.messages_per_s * 2
        self._last_refill = time.monotonic()
        self._buffered_s = 0.0
        self._audio_ms = 0.0
        self._response_meta: dict[str, dict] = {}
        config = AgentConfig(respond=kind == "realtime")
        if media is not None:
            config = replace(config, output_rate=media.rate)
        # WebSocket: audio deltas paced to the client's playback, ``audio_lead_s`` ahead
        sink = media or PacedDeltaSink(self.out.put_nowait, rate=config.output_rate,
                                       lead_s=audio_lead_s, clock=clock)
        self.agent = VoiceAgent(services or triton_services(router), config, sink=sink,
                                frames=self.out, session_id=self.id, clock=clock,
                                on_metric=lambda stage, v: M.TURN_LATENCY.labels(stage)
                                .observe(v))
        self._writer: asyncio.Task | None = None
        if hasattr(self.agent.services.llm, "on_loading"):  # a turn with an image may wait
            self.agent.services.llm.on_loading = self._heavy_model_loading

    async def _heavy_model_loading(self) -> None:
        """The multimodal model is loading for this turn (first use): say so, the reply
        follows once it is loaded (an extension event)."""
        self.emit("rtmedia.model.loading", model="vlm", use_case="multimodal")

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_frames())
        self.emit("session.created", session=self.describe())

    async def close(self) -> None:
        await self.agent.close()
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def emit(self, type_: str, **fields) -> None:
        """Queue a server event (sent in order by the writer task)."""
        self.out.put_nowait(ServerEvent(type_, fields))

    async def _send_event(self, type_: str, **fields) -> None:
        if self.beta:
            type_ = BETA_NAMES.get(type_, type_)
        event = {"type": type_, "event_id": new_id("event"), **fields}
        M.FRAMES.labels("out", type_).inc()
        await self._send(event)

    def error(self, code: str, message: str, *, param: str | None = None,
              event_id: str | None = None, type_: str = "invalid_request_error") -> None:
        M.ERRORS.labels(code).inc()
        self.emit("error", error={"type": type_, "code": code, "message": message,
                                  "param": param, "event_id": event_id})

    # -- inbound ------------------------------------------------------------------------------
    async def handle(self, raw: str | bytes) -> None:
        """One client message. Never raises for bad input: answers with an error event."""
        event_id = None
        try:
            if not self._take_token():
                raise ProtocolError("rate_limited", "too many messages: at most "
                                    f"{self.limits.messages_per_s:.0f}/s; message dropped",
                                    type_="rate_limit_error")
            event = parse_event(raw, max_bytes=self.limits.max_message_bytes,
                                max_instructions=self.limits.max_instructions_chars,
                                max_text=self.limits.max_text_chars)
            event_id = event.event_id
            M.FRAMES.labels("in", event.type).inc()
            await self._handlers()[type(event.body)](event.body)
        except ProtocolError as exc:
            if exc.code != "rate_limited":
                M.FRAMES.labels("in", "invalid").inc()
            self.error(exc.code, exc.message, param=exc.param,
                       event_id=event_id or exc.event_id, type_=exc.type)
        except Exception as exc:  # a bug must not end the session silently
            log.exception("session %s: handling a client event failed", self.id)
            self.error("server_error", f"internal error: {type(exc).__name__}",
                       event_id=event_id, type_="server_error")

    def _take_token(self) -> bool:
        now = time.monotonic()
        cap = self.limits.messages_per_s * 2
        self._tokens = min(cap, self._tokens + (now - self._last_refill) *
                           self.limits.messages_per_s)
        self._last_refill = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _handlers(self) -> dict:
        return {
            E.SessionUpdate: self._session_update,
            E.AudioAppend: self._append,
            E.BufferCommit: self._commit,
            E.BufferClear: self._clear,
            E.ResponseCreate: self._response_create,
            E.ResponseCancel: self._response_cancel,
            E.ItemCreate: self._item_create,
            E.FunctionItemCreate: self._function_item_create,
            E.ItemTruncate: self._item_truncate,
            E.OutputClear: self._output_clear,
        }

    # -- session.update -------------------------------------------------------------------
    async def _session_update(self, event: E.SessionUpdate) -> None:
        s = event.session
        if event.transcription_only or s.type == "transcription":
            self.kind = "transcription"
        if s.beta_shape:
            self.beta = True  # the beta session object: beta event names too
        changes: dict = {}
        if s.instructions is not None:
            changes["instructions"] = s.instructions or AgentConfig.instructions
        if s.voice is not None:
            # OpenAI voice names (alloy, ash, ...) map to the default voice.
            changes["voice"] = s.voice if s.voice in ("joe", "espeak") else None
        if s.language:
            lang = s.language.lower()
            changes["language"] = lang
            changes["tts_language"] = None if lang.startswith("en") else lang
        if s.turn_detection is not E.UNSET:
            changes.update(self._turn_detection(s.turn_detection))
        if s.output_modalities is not None:
            self.output_modalities = list(s.output_modalities)
            changes["audio_output"] = "audio" in s.output_modalities
        if s.temperature is not None:
            changes["temperature"] = s.temperature
        if s.seed is not None:  # extension
            changes["seed"] = s.seed
        if s.max_output_tokens is not None:
            changes["max_output_tokens"] = min(1024, s.max_output_tokens)
        if s.tools is not None:
            changes["tools"] = s.tools
        if s.tool_choice is not None:
            changes["tool_choice"] = s.tool_choice
        _check_tool_choice(changes.get("tools", self.agent.config.tools),
                           changes.get("tool_choice", self.agent.config.tool_choice),
                           "session.tool_choice")
        # All checks passed: apply.
        if s.input_format and s.input_format.rate != self.input_rate:
            self.input_rate = s.input_format.rate
            self._resampler = None
        if s.output_format and self.media is None:  # WebRTC tracks have their own rate
            changes["output_rate"] = s.output_format.rate
        changes["respond"] = self.kind == "realtime"
        self.agent.configure(**changes)
        self.configured = True
        self.emit("session.updated", session=self.describe())

    def _turn_detection(self, td: E.TurnDetection | None) -> dict:
        if td is None:
            return {"turn_detection": False}
        vad = self.agent.config.vad
        aggressiveness = vad.aggressiveness
        if td.threshold is not None:
            aggressiveness = min(3, int(td.threshold * 4))
        semantic = None
        if td.type == "semantic_vad":  # the end-of-turn model sets the silence per pause
            semantic = SEMANTIC[td.eagerness or "auto"]
            silence = semantic.incomplete_ms
        elif self.agent.config.semantic is not None:  # back from semantic_vad
            silence = td.silence_duration_ms or VadConfig.silence_ms
        else:
            silence = td.silence_duration_ms or vad.silence_ms
        return {
            "turn_detection": True,
            "semantic": semantic,
            "vad": replace(vad, aggressiveness=aggressiveness, silence_ms=silence,
                           prefix_padding_ms=vad.prefix_padding_ms
                           if td.prefix_padding_ms is None else td.prefix_padding_ms),
            "create_response": td.create_response is not False,
            "interrupt_response": td.interrupt_response is not False,
        }

    def describe(self) -> dict:
        cfg = self.agent.config
        td = None
        if cfg.turn_detection and cfg.semantic is not None:
            td = {"type": "semantic_vad", "eagerness": cfg.semantic.eagerness,
                  "create_response": cfg.create_response,
                  "interrupt_response": cfg.interrupt_response}
        elif cfg.turn_detection:
            td = {"type": "server_vad", "threshold": cfg.vad.aggressiveness / 4,
                  "silence_duration_ms": cfg.vad.silence_ms,
                  "prefix_padding_ms": cfg.vad.prefix_padding_ms,
                  "create_response": cfg.create_response,
                  "interrupt_response": cfg.interrupt_response}
        transcription = {"model": "whisper", "language": cfg.language}
        tools = [{"type": "function", "name": t.name, "description": t.description,
                  "parameters": t.parameters} for t in cfg.tools]
        choice = cfg.tool_choice
        if choice.startswith("function:"):
            choice = {"type": "function", "name": choice.split(":", 1)[1]}
        if self.beta:
            return {"id": self.id, "object": "realtime.session", "model": self.model,
                    "modalities": self.output_modalities, "instructions": cfg.instructions,
                    "voice": cfg.voice or "joe", "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16", "turn_detection": td,
                    "input_audio_transcription": transcription, "tools": tools,
                    "tool_choice": choice}
        session = {
            "id": self.id, "object": "realtime.session", "type": self.kind,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.input_rate},
                                "transcription": transcription, "turn_detection": td}},
        }
        if self.kind == "realtime":
            session.update({
                "model": self.model, "instructions": cfg.instructions,
                "output_modalities": self.output_modalities,
                "max_output_tokens": cfg.max_output_tokens,
                "tools": tools, "tool_choice": choice,
            })
            session["audio"]["output"] = {
                "format": {"type": "audio/pcm", "rate": cfg.output_rate},
                "voice": cfg.voice or "joe"}
        return session

    # -- audio ------------------------------------------------------------------------------
    async def _append(self, event: E.AudioAppend) -> None:
        t0 = time.perf_counter()
        try:
            pcm = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_base64", "audio is not valid base64",
                                param="audio") from None
        if len(pcm) % 2:
            raise ProtocolError("invalid_audio", "PCM16 audio must have an even number of "
                                "bytes", param="audio")
        if not self.configured and not self._warned_unconfigured:
            self._warned_unconfigured = True
            self.error("session_not_configured",
                       "audio arrived before session.update: using the defaults "
                       f"(PCM16 {self.input_rate} Hz mono, server VAD)")
        if not pcm:
            return
        if not self.agent.config.turn_detection:
            self._buffered_s += len(pcm) / 2 / self.input_rate
            if self._buffered_s > self.limits.max_buffer_s:
                raise ProtocolError("buffer_too_large", "the input audio buffer holds more "
                                    f"than {self.limits.max_buffer_s:.0f} s; commit or clear "
                                    "it", param="audio")
        audio = pcm16_to_float(pcm)
        if self.input_rate != RATE:
            if self._resampler is None:
                self._resampler = Resampler(self.input_rate, RATE)
            audio = self._resampler.process(audio)
        M.AUDIO_SECONDS.labels("in").inc(len(pcm) / 2 / self.input_rate)
        await self.agent.push_audio(audio)
        M.FRAME_PROCESSING.observe(time.perf_counter() - t0)

    async def _commit(self, event: E.BufferCommit) -> None:
        if self.agent.config.turn_detection and not self.agent.turns.speaking:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                "nothing to commit: the buffer is empty")
        self._buffered_s = 0.0
        if self.agent.commit() is None:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                "nothing to commit: the buffer is empty")

    async def _clear(self, event: E.BufferClear) -> None:
        self._buffered_s = 0.0
        await self.agent.clear()

    # -- responses ------------------------------------------------------------------------
    async def _response_create(self, event: E.ResponseCreate) -> None:
        if self.kind != "realtime":
            raise ProtocolError("not_supported", "transcription sessions do not create "
                                "responses")
        if self.agent.responding:
            raise ProtocolError("conversation_already_has_active_response",
                                "a response is in progress; cancel it first")
        tools = self.agent.config.tools if event.tools is None else event.tools
        _check_tool_choice(tools, event.tool_choice or self.agent.config.tool_choice,
                           "response.tool_choice")
        self.agent.start_response(event.instructions, tools=event.tools,
                                  tool_choice=event.tool_choice)

    async def _response_cancel(self, event: E.ResponseCancel) -> None:
        if not self.agent.responding:
            raise ProtocolError("response_cancel_not_active", "no response is in progress")
        await self.agent.interrupt("client_cancelled")  # its audio stops too

    async def _item_create(self, event: E.ItemCreate) -> None:
        item_id = event.item_id or new_id("item")
        self.agent.add_message(event.role, event.text, item_id, images=event.images)
        # images are not echoed back (their bytes): one input_image part stands for each
        self.emit("conversation.item.added", previous_item_id=None, item={
            "id": item_id, "type": "message", "role": event.role, "status": "completed",
            "content": [*({"type": "input_image"} for _ in event.images),
                        *([{"type": "input_text", "text": event.text}] if event.text
                          else [])]})

    async def _function_item_create(self, event: E.FunctionItemCreate) -> None:
        """The client's result for a call (or a call it puts into the history)."""
        if self.kind != "realtime":
            raise ProtocolError("not_supported", "transcription sessions have no "
                                "conversation items")
        item_id = self.agent.add_function_item(
            event.type, event.call_id, output=event.output, name=event.name,
            arguments=event.arguments, item_id=event.item_id)
        item = {"id": item_id, "object": "realtime.item", "type": event.type,
                "status": "completed", "call_id": event.call_id}
        if event.type == "function_call_output":
            item["output"] = event.output
        else:
            item.update(name=event.name, arguments=event.arguments)
        self.emit("conversation.item.added", previous_item_id=None, item=item)

    async def _item_truncate(self, event: E.ItemTruncate) -> None:
        """The client played only ``audio_end_ms`` of an assistant item: the history keeps
        what was heard, and its audio stops if it is still playing."""
        try:
            self.agent.truncate(event.item_id, event.audio_end_ms)
        except UnknownItem:
            raise ProtocolError("item_not_found", f"no item {event.item_id!r} in the "
                                "conversation", param="item_id") from None
        except ValueError as exc:
            raise ProtocolError("invalid_truncate", str(exc), param="audio_end_ms") from None
        self.emit("conversation.item.truncated", item_id=event.item_id,
                  content_index=event.content_index, audio_end_ms=event.audio_end_ms)

    async def _output_clear(self, event: E.OutputClear) -> None:
        if not await self.agent.interrupt("client_cancelled") and self.media is not None:
            self.emit("output_audio_buffer.cleared")  # nothing was playing: still answer

    # -- outbound ---------------------------------------------------------------------------
    async def _write_frames(self) -> None:
        while True:
            frame = await self.out.get()
            try:
                await self._frame(frame)
            except (ConnectionError, RuntimeError):
                return  # transport gone; close() cleans up
            except Exception:
                log.exception("session %s: failed to send %s", self.id, type(frame).__name__)
            finally:
                self.out.task_done()

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait until every queued event has been sent (before closing the transport)."""
        if self._writer is None or self._writer.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.out.join(), timeout)

    async def _frame(self, fr: F.Frame) -> None:
        emit = self._send_event
        if isinstance(fr, ServerEvent):
            await emit(fr.type, **fr.fields)
        elif isinstance(fr, F.SpeechStarted):
            await emit("input_audio_buffer.speech_started",
                       audio_start_ms=fr.audio_start_ms, item_id=fr.item_id)
        elif isinstance(fr, F.SpeechStopped):
            await emit("input_audio_buffer.speech_stopped",
                       audio_end_ms=fr.audio_end_ms, item_id=fr.item_id)
        elif isinstance(fr, F.BufferCommitted):
            await emit("input_audio_buffer.committed", item_id=fr.item_id,
                       previous_item_id=fr.previous_item_id)
            await emit("conversation.item.added", previous_item_id=fr.previous_item_id,
                       item={"id": fr.item_id, "type": "message", "role": "user",
                             "status": "completed",
                             "content": [{"type": "input_audio", "transcript": None}]})
        elif isinstance(fr, F.BufferCleared):
            await emit("input_audio_buffer.cleared")
        elif isinstance(fr, F.TranscriptDelta):
            await emit("conversation.item.input_audio_transcription.delta",
                       item_id=fr.item_id, content_index=0, delta=fr.delta,
                       transcript=fr.transcript)
        elif isinstance(fr, F.TranscriptCompleted):
            await emit("conversation.item.input_audio_transcription.completed",
                       item_id=fr.item_id, content_index=0, transcript=fr.transcript,
                       usage={"type": "duration", "seconds": round(fr.audio_s, 3)},
                       words=[w for s in fr.details.get("segments", [])
                              for w in s.get("words", [])])
        elif isinstance(fr, F.TranscriptFailed):
            await emit("conversation.item.input_audio_transcription.failed",
                       item_id=fr.item_id, content_index=0,
                       error={"type": "transcription_error", "code": "stt_failed",
                              "message": fr.message})
        elif isinstance(fr, F.ResponseStarted):
            await self._response_started(fr)
        elif isinstance(fr, F.ResponseTextDelta):
            kind = "audio_transcript" if "audio" in self.output_modalities else "text"
            await emit(f"response.output_{kind}.delta", response_id=fr.response_id,
                       item_id=fr.item_id, output_index=0, content_index=0,
                       delta=fr.delta)
        elif isinstance(fr, F.ResponseAudioDelta):
            if "audio" in self.output_modalities:
                M.AUDIO_SECONDS.labels("out").inc(len(fr.pcm16) / 2 /
                                                  self.agent.config.output_rate)
                extra = {"alignment": fr.alignment} if fr.alignment else {}
                await emit("response.output_audio.delta", response_id=fr.response_id,
                           item_id=fr.item_id, output_index=0, content_index=0,
                           delta=base64.b64encode(fr.pcm16).decode(), **extra)
        elif isinstance(fr, F.OutputInterrupted):
            if self.media is not None:  # WebRTC: the server-side audio buffer was cleared
                await emit("output_audio_buffer.cleared", response_id=fr.response_id)
            await emit("conversation.item.truncated", item_id=fr.item_id, content_index=0,
                       audio_end_ms=fr.audio_end_ms)
        elif isinstance(fr, F.ResponseDone):
            await self._response_done(fr)
        elif isinstance(fr, F.ErrorFrame):
            M.ERRORS.labels(fr.code).inc()
            await emit("error", error={"type": fr.type, "code": fr.code,
                                       "message": fr.message, "param": None,
                                       "event_id": None})

    async def _response_started(self, fr: F.ResponseStarted) -> None:
        emit = self._send_event
        audio = "audio" in self.output_modalities
        item = {"id": fr.item_id, "object": "realtime.item", "type": "message",
                "role": "assistant", "status": "in_progress", "content": []}
        await emit("response.created", response={
       "id": fr.response_id, "object": "realtime.response", "status": "in_progress",
       "output": [], "output_modalities": self.output_modalities})
        if not fr.message:  # only function calls: their items come with the end
            return
        await emit("response.output_item.added", response_id=fr.response_id,
                   output_index=0, item=item)
        await emit("conversation.item.added", previous_item_id=None, item=item)
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        await emit("response.content_part.added", response_id=fr.response_id,
                   item_id=fr.item_id, output_index=0, content_index=0, part=part)

    async def _response_done(self, fr: F.ResponseDone) -> None:
        output = [await self._message_done(fr)] if fr.message else []
        for call in fr.calls:
            output.append(await self._function_call(fr.response_id, len(output), call))
        details = None
        if fr.status == "cancelled":
            details = {"type": "cancelled", "reason": fr.reason}
        elif fr.status == "failed":
            details = {"type": "failed", "error": {"type": "server_error",
                                                   "code": fr.error_code,
                                                   "message": fr.reason}}
        await self._send_event("response.done", response={
       "id": fr.response_id, "object": "realtime.response", "status": fr.status,
       "status_details": details, "output": output,
       "output_modalities": self.output_modalities,
       "audio_s": round(fr.audio_s, 3)})

    async def _function_call(self, response_id: str, index: int, call: ToolCall) -> dict:
        """A function_call output item: added, its arguments (in one delta: the model
        says a call whole), done."""
        emit = self._send_event
        item = {"id": call.item_id, "object": "realtime.item", "type": "function_call",
                "status": "in_progress", "name": call.name, "call_id": call.call_id,
                "arguments": ""}
        ids = {"response_id": response_id, "item_id": call.item_id, "output_index": index,
               "call_id": call.call_id}
        await emit("response.output_item.added", response_id=response_id,
                   output_index=index, item=item)
        await emit("conversation.item.added", previous_item_id=None, item=item)
        await emit("response.function_call_arguments.delta", delta=call.arguments, **ids)
        await emit("response.function_call_arguments.done", name=call.name,
                   arguments=call.arguments, **ids)
        item = {**item, "status": "completed", "arguments": call.arguments}
        await emit("response.output_item.done", response_id=response_id,
                   output_index=index, item=item)
        return item

    async def _message_done(self, fr: F.ResponseDone) -> dict:
        emit = self._send_event
        audio = "audio" in self.output_modalities
        ids = {"response_id": fr.response_id, "item_id": fr.item_id, "output_index": 0,
               "content_index": 0}
        if audio:
            await emit("response.output_audio.done", **ids)
            await emit("response.output_audio_transcript.done", transcript=fr.transcript,
                       **ids)
            part = {"type": "audio", "transcript": fr.transcript}
        else:
            await emit("response.output_text.done", text=fr.transcript, **ids)
            part = {"type": "text", "text": fr.transcript}
        await emit("response.content_part.done", part=part, **ids)
        status = "completed" if fr.status == "completed" else "incomplete"
        item = {"id": fr.item_id, "object": "realtime.item", "type": "message",
                "role": "assistant", "status": status, "content": [part]}
        await emit("response.output_item.done", response_id=fr.response_id,
                   output_index=0, item=item)
        return item


def _check_tool_choice(tools: tuple[Tool, ...], choice: str, param: str) -> None:
    """A named tool_choice must name one of the tools."""
    if choice.startswith("function:"):
        name = choice.split(":", 1)[1]
        if not any(t.name == name for t in tools):
            raise ProtocolError("invalid_tool_choice", f"tool_choice names {name!r}, which "
                                "is not one of the tools", param)
