"""Client side of the vision-language models (``vlm``, ``video_vlm``): images in, tokens out.

Messages use the models' content parts (``{"type": "text", "text"}``,
``{"type": "image"}``); the encoded images travel beside them, in order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipelines.triton_client import TritonClient

if TYPE_CHECKING:
    from pipelines.router import ModelRouter
    from pipelines.services import LLM, Token


@dataclass
class VisionToken:
    text: str
    finish_reason: str = ""
    usage: dict = field(default_factory=dict)  # on the last: {"completion_tokens": n}


async def vision_chat(client: TritonClient, messages: list[dict], images: Sequence[bytes],
                      *, model: str = "vlm", max_tokens: int = 256,
                      temperature: float | None = None, top_p: float | None = None,
                      seed: int | None = None, timestamps: Sequence[float] | None = None,
                      transcript: str | None = None) -> AsyncIterator[VisionToken]:
    """Stream the model's reply; closing the iterator early cancels it in Triton.

    ``timestamps`` and ``transcript`` are for the video model: one time (s) per frame.
    """
    inputs: dict = {"MESSAGES": json.dumps(messages),
                    "MAX_TOKENS": np.array([max_tokens], dtype=np.int32)}
    if images:
        inputs["IMAGES"] = np.array(list(images), dtype=np.object_)
    if timestamps is not None:
        inputs["TIMESTAMPS"] = np.array(list(timestamps), dtype=np.float32)
    if transcript:
        inputs["TRANSCRIPT"] = transcript
    if temperature is not None:
        inputs["TEMPERATURE"] = np.array([temperature], dtype=np.float32)
    if top_p is not None:
        inputs["TOP_P"] = np.array([top_p], dtype=np.float32)
    if seed is not None:
        inputs["SEED"] = np.array([seed], dtype=np.int32)
    async with client.stream() as stream:
        async for r in stream.infer(model, inputs):
            reason = r.text("FINISH_REASON")
            yield VisionToken(r.text("TEXT"), reason,
                              json.loads(r.text("USAGE") or "{}") if reason else {})


# -- images in the voice agent's conversation ------------------------------------------
def has_images(message: dict) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(p.get("type") == "image" for p in content)


def current_turn_has_images(messages: list[dict]) -> bool:
    """Whether the user's turn being answered (the messages after the last assistant
    message) shows something: such a turn goes to the multimodal model."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return False
        if has_images(message):
            return True
    return False


def text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text").strip()
    return ""


def text_messages(messages: list[dict]) -> list[dict]:
    """The chat with image parts left out (for the text-only LLM)."""
    return [{**m, "content": text_of(m.get("content"))} if isinstance(m.get("content"), list)
            else m for m in messages]


def vision_messages(messages: list[dict]) -> tuple[list[dict], list[bytes]]:
    """The chat in the vision model's shape: the images of the current turn as image
    parts (their bytes beside), older images left out, tool traffic as plain text."""
    start = max((i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"),
                default=0)
    out: list[dict] = []
    images: list[bytes] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content")
        parts: list[dict] = []
        if isinstance(content, list):
            for p in content:
                if p.get("type") == "image" and i >= start:
                    parts.append({"type": "image"})
                    images.append(p["image"])
                elif p.get("type") == "text" and p.get("text"):
                    parts.append({"type": "text", "text": p["text"]})
        elif content:
            parts.append({"type": "text", "text": str(content)})
        if role == "tool":
            role, parts = "user", [{"type": "text", "text": "Tool result: " + text_of(content)}]
        if role not in ("system", "user", "assistant") or not parts:
            continue
        out.append({"role": role, "content": parts})
    return out, images


class VisionBackend(Protocol):
    def chat(self, messages: list[dict], images: list[bytes], *, max_tokens: int,
             temperature: float | None, seed: int | None,
             on_loading: Callable[[], Awaitable[None]] | None = None
             ) -> AsyncIterator[VisionToken]: ...


@dataclass
class DirectVision:
    """The multimodal model through the router, without on-demand loading."""

    router: ModelRouter

    def chat(self, messages: list[dict], images: list[bytes], *, max_tokens: int,
             temperature: float | None, seed: int | None,
             on_loading: Callable[[], Awaitable[None]] | None = None
             ) -> AsyncIterator[VisionToken]:
        route = self.router.route("multimodal")
        return vision_chat(route.client, messages, images, model=route.model,
                           max_tokens=max_tokens, temperature=temperature, seed=seed)


@dataclass
class VisionRoutingLLM:
    """The agent's LLM: a turn that shows something (image parts in the user's current
    turn) goes to the multimodal model, every other turn to the text LLM as before."""

    llm: LLM
    vision: VisionBackend
    # called when a turn must wait for the multimodal model to load (the session tells
    # its client)
    on_loading: Callable[[], Awaitable[None]] | None = None

    def chat(self, messages: list[dict], *, max_tokens: int, temperature: float | None,
             seed: int | None, conversation: str | None = None,
             **tools) -> AsyncIterator[Token]:
        if current_turn_has_images(messages):
            return self._vision(messages, max_tokens=max_tokens, temperature=temperature,
                                seed=seed)
        return self.llm.chat(text_messages(messages), max_tokens=max_tokens,
                             temperature=temperature, seed=seed,
                             conversation=conversation, **tools)

    async def _vision(self, messages: list[dict], **opts) -> AsyncIterator[Token]:
        shaped, images = vision_messages(messages)
        gen = self.vision.chat(shaped, images, on_loading=self.on_loading, **opts)
        async with contextlib.aclosing(gen):
            async for tok in gen:
                yield _token(tok.text, tok.finish_reason)


def _token(text: str, finish_reason: str):
    from pipelines.services import Token  # services imports this module

    return Token(text, finish_reason)
