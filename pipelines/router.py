"""Pick the Triton endpoint and model per use case.

Realtime work (stt, tts, avatar) and heavy work (agent, multimodal, video) can
live on different Triton servers (GPU 0 vs GPU 1 in production, two local
tritonserver processes in the CPU default when vision models are in the store):
each use case may name its own URL; one gRPC channel is shared per URL by every
session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.triton_client import Keepalive, TritonClient

DEFAULT_MODELS = {"stt": "whisper", "tts": "piper", "agent": "llm", "avatar": "avatar",
                  # the vision-language models (heavy: loaded on first use)
                  "multimodal": "vlm", "video": "video_vlm",
                  # the multilingual Whisper (sessions not in English) and the end-of-turn
                  # model (semantic_vad) run with STT
                  "stt_multilingual": "whisper_base", "turn": "smart_turn"}
USE_CASE_OF = {"stt_multilingual": "stt", "turn": "stt"}


@dataclass
class Route:
    client: TritonClient
    model: str


@dataclass
class ModelRouter:
    default_url: str
    urls: dict[str, str] = field(default_factory=dict)  # use case -> HOST:PORT
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    _clients: dict[str, TritonClient] = field(default_factory=dict)
    # the channels' HTTP/2 keepalive (Settings.triton_keepalive(): the one the local
    # tritonserver is started to accept)
    keepalive: Keepalive = field(default_factory=Keepalive)
    # How the agent reaches the multimodal model for turns with images (a
    # pipelines.vision.VisionBackend; the media server sets one that loads it on first
    # use); None: straight through this router
    vision: object | None = None

    def route(self, use_case: str) -> Route:
        """``use_case`` may also be a role inside one (``stt_multilingual``, ``turn``):
        it is served where its use case is, by its own model."""
        url = self.urls.get(use_case) or self.urls.get(USE_CASE_OF.get(use_case, "")) \
            or self.default_url
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = TritonClient(url, self.keepalive)
        return Route(client, self.models.get(use_case) or DEFAULT_MODELS[use_case])

    def open_streams(self) -> int:
        return sum(len(c.open_streams) for c in self._clients.values())

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
