"""The second local tritonserver, for heavy models (multimodal, video), in `rtmedia up`.

Realtime models (stt, tts, avatar) and heavy ones must not share a server's CPU
threads or GPU: a vision request would hold cores that captions need. With no
GPU (the CPU default) `rtmedia up` therefore starts a second tritonserver process
for the heavy use cases (agent LLM, multimodal, video) when the store holds a
vision-language checkpoint. The agent LLM is loaded at start (every voice turn
needs it); the vision models are loaded by the media server's loader
(streaming/model_loader.py) on first use and unloaded when idle. Its ports are the realtime
server's plus HEAVY_PORT_OFFSET; its rendered repository lives in its own folder.
"""

from __future__ import annotations

from pathlib import Path

from streaming.model_loader import HEAVY_USE_CASES
from streaming.settings import Settings
from streaming.triton_server import TritonServer

HEAVY_PORT_OFFSET = 10


def vision_checkpoints(models_dir: Path) -> list[str]:
    """``<use_case>/<model>`` of every transformers checkpoint for a heavy use case."""
    return sorted(f"{uc}/{p.parent.name}" for uc in HEAVY_USE_CASES
                  for p in (Path(models_dir) / uc).glob("*/config.json")
                  if (p.parent / "manifest.json").is_file())


def heavy_settings(settings: Settings) -> Settings:
    return settings.replace(
        triton_http_port=settings.triton_http_port + HEAVY_PORT_OFFSET,
        triton_grpc_port=settings.triton_grpc_port + HEAVY_PORT_OFFSET,
        triton_metrics_port=settings.triton_metrics_port + HEAVY_PORT_OFFSET,
        state_dir=Path(settings.state_dir) / "heavy")


def start_heavy(settings: Settings, *, wait_s: float = 120.0, log=print,
                preload: list[str] | None = None) -> tuple[TritonServer | None, Settings]:
    """Start the heavy tritonserver when vision checkpoints are in the store, with the
    ``preload`` models (the agent LLM) loaded; return it (or None) and the settings that
    route the heavy use cases to it (the agent too when its model is preloaded)."""
    found = vision_checkpoints(settings.models_dir)
    if not found or settings.triton_url:
        return None, settings
    heavy = TritonServer(heavy_settings(settings), models=list(preload or []),
                         log_path=Path(settings.state_dir) / "tritonserver-heavy.log")
    log(f"starting the heavy tritonserver for {', '.join(found)} (vision models load on "
        "first use) ...")
    heavy.start(wait_s=wait_s)
    for name, reason in heavy.failed.items():
        log(f"  FAILED to load {name}: {reason.splitlines()[0] if reason else '?'}")
    use_cases = [*HEAVY_USE_CASES, *(["agent"] if settings.llm_model in heavy.loaded else [])]
    urls = {**{uc: heavy.grpc_url for uc in use_cases}, **settings.triton_urls}
    log(f"heavy Triton ready: gRPC {heavy.grpc_url}")
    return heavy, settings.replace(triton_urls=urls)
