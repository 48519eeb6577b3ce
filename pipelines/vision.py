"""Client side of the vision-language models (``vlm``, ``video_vlm``): images in, tokens out.

Messages use the models' content parts (``{"type": "text", "text"}``,
``{"type": "image"}``); the encoded images travel beside them, in order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.triton_client import TritonClient


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
