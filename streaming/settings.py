"""All configuration in one place: environment variables prefixed ``RTMEDIA_``.

The model store keeps its conventional name ``AI_MODELS_DIR`` (shared with the
Triton container and other tools); everything else uses the prefix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.triton_client import Keepalive

PREFIX = "RTMEDIA_"
USE_CASES = ("avatar", "stt", "tts", "agent", "multimodal", "video")


def _env(name: str, default: str) -> str:
    return os.environ.get(PREFIX + name, default)


def _int_or_none(value: str) -> int | None:
    return int(value) if value.strip() else None


def _bool_or_none(value: str) -> bool | None:
    return value.strip().lower() in ("1", "true", "yes") if value.strip() else None


@dataclass(frozen=True)
class Settings:
    """Runtime settings; ``Settings.from_env()`` reads them, CLI flags override."""

    models_dir: Path = field(default_factory=lambda: Path("/opt/ai-models"))
    triton_host: str = "127.0.0.1"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    # Which instance_group each use case gets: a profile name in triton_models/placement.json.
    placement: str = "cpu"
    # Where the rendered model repository and the backend directory are written.
    state_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "rtmedia")
    hf_endpoint: str = "https://huggingface.co"
    hf_token: str | None = None
    triton_log_verbose: int = 0
    # gRPC keepalive to Triton; None: the defaults of pipelines.triton_client.Keepalive.
    # The local tritonserver is started with flags that accept these pings.
    triton_keepalive_ms: int | None = None
    triton_keepalive_timeout_ms: int | None = None
    triton_keepalive_without_calls: bool | None = None
    # Media server
    host: str = "127.0.0.1"
    port: int = 8080
    # gRPC HOST:PORT of a Triton already running; empty: `rtmedia up` starts one.
    triton_url: str = ""
    # Per use case overrides, e.g. agent on the GPU-1 server: {"agent": "gpu1:8001"}
    triton_urls: dict = field(default_factory=dict)
    stt_model: str = "whisper"
    # sessions whose transcription language is not English (or is "auto")
    stt_multilingual_model: str = "whisper_base"
    turn_model: str = "smart_turn"  # end of turn for semantic_vad
    tts_model: str = "piper"
    llm_model: str = "llm"
    max_sessions: int = 8
    idle_timeout_s: float = 120.0
    max_message_bytes: int = 1 << 20
    api_key: str | None = None
    # Origin allow-list: "same-origin", "loopback", "*" or exact origins (https://app.example)
    allowed_origins: tuple = ("same-origin", "loopback")
    # Longest life of an ephemeral client secret (POST /v1/realtime/client_secrets)
    client_secret_ttl_s: float = 120.0
    # Demo only: this server's own pages may mint a client secret without the key
    demo_pages_mint: bool = False
    # A separate /metrics listener without auth (0: none; /metrics on the main port needs the key)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # A client that does not read: a send blocked this long, or this much unsent, closes it
    send_timeout_s: float = 10.0
    max_send_buffer_bytes: int = 1 << 20
    avatar_model: str = "avatar"
    avatar_name: str = "astronaut"
    # JSON list of RTCIceServer dicts, e.g. [{"urls": "stun:stun.example.org:3478"}]
    ice_servers: list = field(default_factory=list)
    # extra audio buffering of the receiver vs video, subtracted from the lip-sync position
    av_audio_lead_ms: float = 20.0
    # WebSocket reply audio is paced to real time, this far ahead of the client's playback:
    # more absorbs network jitter, less lets barge-in silence the client sooner
    ws_audio_lead_ms: float = 500.0
    # SIGTERM: refuse new sessions (/readyz 503) and let open ones finish this long
    drain_grace_s: float = 30.0
    # Shared state between replicas (redis://HOST:PORT/DB); empty: this process's memory
    redis_url: str = ""
    # Sessions across all replicas sharing the Redis (0: no global limit)
    global_max_sessions: int = 0
    # How long a closed session's state (history, settings) can be resumed
    session_state_ttl_s: float = 3600.0
    # Reverse proxies (CIDRs) whose X-Forwarded-For / X-Real-IP name the client
    trusted_proxies: tuple = ()
    # New sessions per minute per credential (API key or client secret; the client's
    # address without auth), on all replicas sharing the Redis (0: no limit)
    sessions_per_minute: int = 0
    # Heavy models (multimodal, video): loaded on first use, unloaded after this idle time
    # (0: never) or least-recently-used first when loading another would pass the memory
    # budget (MB of weights, per heavy Triton; 0: no budget)
    heavy_idle_unload_s: float = 600.0
    heavy_memory_budget_mb: int = 0
    # Requests running per heavy model on this replica, and how many more may wait;
    # beyond that a request is refused as busy (HTTP 429, Realtime error code "busy")
    heavy_max_concurrent: int = 1
    heavy_max_queue: int = 4
    # POST /v1/chat/completions: largest request body (images and videos inline as data
    # URLs), folders a video may be named from (file://PATH), frames sampled per video
    chat_max_body_bytes: int = 32 << 20
    video_dirs: tuple = ()
    video_max_frames: int = 8
    video_max_seconds: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            models_dir=Path(env.get("AI_MODELS_DIR", "/opt/ai-models")),
            triton_host=_env("TRITON_HOST", "127.0.0.1"),
            triton_http_port=int(_env("TRITON_HTTP_PORT", "8000")),
            triton_grpc_port=int(_env("TRITON_GRPC_PORT", "8001")),
            triton_metrics_port=int(_env("TRITON_METRICS_PORT", "8002")),
            placement=_env("PLACEMENT", "cpu"),
            state_dir=Path(_env("STATE_DIR", str(Path.home() / ".cache" / "rtmedia"))),
            hf_endpoint=_env("HF_ENDPOINT", env.get("HF_ENDPOINT", "https://huggingface.co")),
            hf_token=_env("HF_TOKEN", env.get("HF_TOKEN", "")) or None,
            triton_log_verbose=int(_env("TRITON_LOG_VERBOSE", "0")),
            triton_keepalive_ms=_int_or_none(_env("TRITON_KEEPALIVE_MS", "")),
            triton_keepalive_timeout_ms=_int_or_none(_env("TRITON_KEEPALIVE_TIMEOUT_MS", "")),
            triton_keepalive_without_calls=_bool_or_none(
                _env("TRITON_KEEPALIVE_WITHOUT_CALLS", "")),
            host=_env("HOST", "127.0.0.1"),
            port=int(_env("PORT", "8080")),
            triton_url=_env("TRITON_URL", ""),
            triton_urls={uc: env[PREFIX + "TRITON_URL_" + uc.upper()] for uc in USE_CASES
                         if env.get(PREFIX + "TRITON_URL_" + uc.upper())},
            stt_model=_env("STT_MODEL", "whisper"),
            stt_multilingual_model=_env("STT_MULTILINGUAL_MODEL", "whisper_base"),
            turn_model=_env("TURN_MODEL", "smart_turn"),
            tts_model=_env("TTS_MODEL", "piper"),
            llm_model=_env("LLM_MODEL", "llm"),
            max_sessions=int(_env("MAX_SESSIONS", "8")),
            idle_timeout_s=float(_env("IDLE_TIMEOUT_S", "120")),
            max_message_bytes=int(_env("MAX_MESSAGE_BYTES", str(1 << 20))),
            api_key=_env("API_KEY", "") or None,
            allowed_origins=tuple(o.strip() for o in _env(
                "ALLOWED_ORIGINS", "same-origin,loopback").split(",") if o.strip()),
            client_secret_ttl_s=float(_env("CLIENT_SECRET_TTL_S", "120")),
            demo_pages_mint=_env("DEMO_PAGES_MINT", "0").lower() in ("1", "true", "yes"),
            metrics_host=_env("METRICS_HOST", "127.0.0.1"),
            metrics_port=int(_env("METRICS_PORT", "0")),
            send_timeout_s=float(_env("SEND_TIMEOUT_S", "10")),
            max_send_buffer_bytes=int(_env("MAX_SEND_BUFFER_BYTES", str(1 << 20))),
            avatar_model=_env("AVATAR_MODEL", "avatar"),
            avatar_name=_env("AVATAR", "astronaut"),
            ice_servers=json.loads(_env("ICE_SERVERS", "[]")),
            av_audio_lead_ms=float(_env("AV_AUDIO_LEAD_MS", "20")),
            ws_audio_lead_ms=float(_env("WS_AUDIO_LEAD_MS", "500")),
            drain_grace_s=float(_env("DRAIN_GRACE_S", "30")),
            redis_url=_env("REDIS_URL", ""),
            global_max_sessions=int(_env("GLOBAL_MAX_SESSIONS", "0")),
            session_state_ttl_s=float(_env("SESSION_STATE_TTL_S", "3600")),
            sessions_per_minute=int(_env("SESSIONS_PER_MINUTE", "0")),
            trusted_proxies=tuple(p.strip() for p in _env("TRUSTED_PROXIES", "").split(",")
                                  if p.strip()),
            heavy_idle_unload_s=float(_env("HEAVY_IDLE_UNLOAD_S", "600")),
            heavy_memory_budget_mb=int(_env("HEAVY_MEMORY_BUDGET_MB", "0")),
            heavy_max_concurrent=int(_env("HEAVY_MAX_CONCURRENT", "1")),
            heavy_max_queue=int(_env("HEAVY_MAX_QUEUE", "4")),
            chat_max_body_bytes=int(_env("CHAT_MAX_BODY_BYTES", str(32 << 20))),
            video_dirs=tuple(d for d in _env("VIDEO_DIRS", "").split(os.pathsep) if d),
            video_max_frames=int(_env("VIDEO_MAX_FRAMES", "8")),
            video_max_seconds=float(_env("VIDEO_MAX_SECONDS", "300")),
        )

    def triton_keepalive(self) -> Keepalive:
        """The client's keepalive (pipelines.triton_client.Keepalive) with these overrides."""
        from pipelines.triton_client import Keepalive

        changes = {"time_ms": self.triton_keepalive_ms,
                   "timeout_ms": self.triton_keepalive_timeout_ms,
                   "without_calls": self.triton_keepalive_without_calls}
        return Keepalive(**{k: v for k, v in changes.items() if v is not None})

    def replace(self, **changes: object) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return Settings(**values)  # type: ignore[arg-type]
