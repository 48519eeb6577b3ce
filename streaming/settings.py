"""All configuration in one place: environment variables prefixed ``RTMEDIA_``.

The model store keeps its conventional name ``AI_MODELS_DIR`` (shared with the
Triton container and other tools); everything else uses the prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PREFIX = "RTMEDIA_"
USE_CASES = ("avatar", "stt", "tts", "agent", "multimodal", "video")


def _env(name: str, default: str) -> str:
    return os.environ.get(PREFIX + name, default)


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
        )

    def replace(self, **changes: object) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return Settings(**values)  # type: ignore[arg-type]
