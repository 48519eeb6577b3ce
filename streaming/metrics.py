"""Prometheus metrics of the media server (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_TURN_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2, 3, 5, 10)
_FRAME_BUCKETS = (0.000025, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015,
                  0.002, 0.003, 0.005, 0.01, 0.05)

TURN_LATENCY = Histogram(
    "rtmedia_turn_latency_seconds",
    "Per turn: end of user speech -> stage (stt_final, first_token, first_audio)",
    ["stage"], buckets=_TURN_BUCKETS, registry=REGISTRY)
SESSIONS_ACTIVE = Gauge("rtmedia_sessions_active", "Open sessions", ["kind"],
                        registry=REGISTRY)
SESSIONS_TOTAL = Counter("rtmedia_sessions_total", "Sessions opened", ["kind"],
                         registry=REGISTRY)
SESSIONS_REFUSED = Counter("rtmedia_sessions_refused_total",
                           "Sessions refused at the concurrency limit", registry=REGISTRY)
FRAMES = Counter("rtmedia_frames_total", "Protocol messages", ["direction", "type"],
                 registry=REGISTRY)
AUDIO_SECONDS = Counter("rtmedia_audio_seconds_total", "Audio carried", ["direction"],
                        registry=REGISTRY)
ERRORS = Counter("rtmedia_errors_total", "Error events sent to clients", ["code"],
                 registry=REGISTRY)
FRAME_PROCESSING = Histogram(
    "rtmedia_inbound_audio_processing_seconds",
    "Server time spent on one inbound audio message (decode, resample, VAD, queue)",
    buckets=_FRAME_BUCKETS, registry=REGISTRY)
DRAINING = Gauge("rtmedia_draining", "1 while this replica drains (SIGTERM): no new sessions",
                 registry=REGISTRY)
REDIS_UP = Gauge("rtmedia_redis_up", "1 when the shared-state Redis answered the last call "
                 "(only with RTMEDIA_REDIS_URL)", registry=REGISTRY)
REDIS_ERRORS = Counter("rtmedia_redis_errors_total", "Redis calls that failed (memory used "
                       "instead)", registry=REGISTRY)
SESSIONS_RESUMED = Counter("rtmedia_sessions_resumed_total", "Sessions resumed by id "
                           "(?resume=)", ["found"], registry=REGISTRY)
MODEL_READY = Gauge("rtmedia_model_ready", "1 when the Triton model of a voice-agent stage "
                    "is ready (asked at each scrape)", ["use_case", "model"], registry=REGISTRY)
TRITON_STREAMS = Gauge("rtmedia_triton_streams_open",
                       "gRPC streams open to Triton (all sessions)", registry=REGISTRY)

# Event types that may become label values: the Realtime protocol's client and server
# events (GA and beta names, including ones this server does not implement). Anything
# else is "unknown", so a client cannot create label values (one series per type sent,
# or a string Prometheus cannot encode, which broke every later scrape).
CLIENT_EVENTS = frozenset({
    "session.update", "transcription_session.update", "input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "conversation.item.create",
    "conversation.item.retrieve", "conversation.item.truncate", "conversation.item.delete",
    "response.create", "response.cancel", "output_audio_buffer.clear"})
SERVER_EVENTS = frozenset({
    "error", "session.created", "session.updated", "transcription_session.created",
    "transcription_session.updated", "conversation.created", "conversation.item.created",
    "conversation.item.added", "conversation.item.done", "conversation.item.retrieved",
    "conversation.item.truncated", "conversation.item.deleted",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.committed", "input_audio_buffer.cleared",
    "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
    "input_audio_buffer.timeout_triggered", "output_audio_buffer.started",
    "output_audio_buffer.stopped", "output_audio_buffer.cleared", "response.created",
    "response.done", "response.output_item.added", "response.output_item.done",
    "response.content_part.added", "response.content_part.done",
    "response.output_text.delta", "response.output_text.done",
    "response.output_audio.delta", "response.output_audio.done",
    "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
    "response.text.delta", "response.text.done", "response.audio.delta",
    "response.audio.done", "response.audio_transcript.delta",
    "response.audio_transcript.done", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "rate_limits.updated",
    "rtmedia.model.loading"})  # extension events (docs/protocol.md)
KNOWN_EVENTS = CLIENT_EVENTS | SERVER_EVENTS


def event_label(type_: object) -> str:
    """The ``type`` label for an event: its name when it is a known protocol event,
    else "unknown" (always a short ASCII string)."""
    return type_ if isinstance(type_, str) and type_ in KNOWN_EVENTS else "unknown"
