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
TRITON_STREAMS = Gauge("rtmedia_triton_streams_open",
                       "gRPC streams open to Triton (all sessions)", registry=REGISTRY)
