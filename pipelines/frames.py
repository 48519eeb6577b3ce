"""Typed frames that pipeline stages emit towards the transport.

Transports (WebSocket, WebRTC data channel) map these to protocol events; the
pipelines never see JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Frame:
    pass


@dataclass
class SpeechStarted(Frame):
    item_id: str
    audio_start_ms: int


@dataclass
class SpeechStopped(Frame):
    item_id: str
    audio_end_ms: int


@dataclass
class BufferCommitted(Frame):
    item_id: str
    previous_item_id: str | None


@dataclass
class BufferCleared(Frame):
    pass


@dataclass
class TranscriptDelta(Frame):
    """A partial transcript: ``transcript`` is the whole current hypothesis."""

    item_id: str
    delta: str
    transcript: str


@dataclass
class TranscriptCompleted(Frame):
    item_id: str
    transcript: str
    details: dict = field(default_factory=dict)
    audio_s: float = 0.0


@dataclass
class TranscriptFailed(Frame):
    item_id: str
    message: str


@dataclass
class ResponseStarted(Frame):
    response_id: str
    item_id: str
    message: bool = True  # False: the reply is only function calls (no message item)


@dataclass
class ResponseTextDelta(Frame):
    response_id: str
    item_id: str
    delta: str


@dataclass
class ResponseAudioDelta(Frame):
    response_id: str
    item_id: str
    pcm16: bytes  # at the session's output rate
    alignment: dict | None = None


@dataclass
class ResponseDone(Frame):
    response_id: str
    item_id: str
    status: str  # completed | cancelled | failed
    transcript: str
    reason: str | None = None  # turn_detected | client_cancelled | error message
    audio_s: float = 0.0
    message: bool = True  # the reply has a message item (see ResponseStarted)
    calls: list = field(default_factory=list)  # pipelines.tools.ToolCall, in order
    error_code: str | None = None  # of a failed reply, e.g. invalid_tool_call


@dataclass
class OutputInterrupted(Frame):
    """Playback of a reply was stopped (barge-in, the client's clear or cancel): the
    listener heard ``audio_end_ms`` of it, and the history keeps only ``transcript``."""

    response_id: str
    item_id: str
    audio_end_ms: int
    transcript: str


@dataclass
class ErrorFrame(Frame):
    code: str
    message: str
    type: str = "server_error"
