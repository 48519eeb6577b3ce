"""The vision-language Triton models (multimodal ``vlm``, ``video_vlm``) on a real tritonserver.

The checkpoints are tiny random ones in SmolVLM's real layout (bench/tiny_vlm.py):
the answers are noise, so these tests check the path: images in, streamed tokens
out, cancellation, and errors that say what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import time

import pytest

from pipelines.triton_client import TritonClient, TritonModelError
from pipelines.vision import vision_chat

pytestmark = pytest.mark.triton


def png(color=(200, 30, 30), size=(96, 64)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


IMAGE_Q = [{"role": "user", "content": [{"type": "image"},
                                        {"type": "text", "text": "What is in this picture?"}]}]


@pytest.fixture
async def heavy(heavy_triton):
    client = TritonClient(heavy_triton.grpc_url)
    for name in ("vlm", "video_vlm"):
        if not await client.model_ready(name):
            await client.load(name)
    yield client
    await client.close()


async def collect(gen):
    return [t async for t in gen]


async def test_image_in_tokens_streamed_out(heavy):
    tokens = await collect(vision_chat(heavy, IMAGE_Q, [png()], max_tokens=12))
    pieces = [t for t in tokens if t.text]
    assert len(pieces) >= 2, tokens  # streamed, not one blob
    assert tokens[-1].finish_reason in ("stop", "length")
    assert 1 <= tokens[-1].usage["completion_tokens"] <= 12
    # two images in one turn, a system message and a text-only follow-up
    two = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                        {"type": "image"}, {"type": "text", "text": "?"}]}]
    tokens = await collect(vision_chat(heavy, two, [png(), png((0, 0, 255), (40, 300))],
                                       max_tokens=4))
    assert tokens[-1].finish_reason in ("stop", "length")
    text_only = [{"role": "user", "content": "Hello there"}]
    tokens = await collect(vision_chat(heavy, text_only, [], max_tokens=4))
    assert tokens[-1].usage["completion_tokens"] >= 1


async def test_greedy_is_deterministic_and_depends_on_the_image(heavy):
    async def answer(image: bytes) -> str:
        toks = await collect(vision_chat(heavy, IMAGE_Q, [image], max_tokens=16))
        return "".join(t.text for t in toks)

    red = await answer(png((255, 0, 0)))
    assert red == await answer(png((255, 0, 0)))
    # the pixels reach the decoder: a different image changes the (noise) answer
    assert red != await answer(png((0, 0, 255), (300, 40)))


async def test_video_frames_with_timestamps_and_transcript(heavy):
    frames = [png((i * 60, 100, 100)) for i in range(3)]
    question = [{"role": "user", "content": "What happens in this clip?"}]
    tokens = await collect(vision_chat(heavy, question, frames, model="video_vlm",
                                       timestamps=[0.0, 1.5, 3.0],
                                       transcript="welcome to the kitchen", max_tokens=8))
    assert [t for t in tokens if t.text] and tokens[-1].finish_reason in ("stop", "length")
    with pytest.raises(TritonModelError, match="3 frames but 2 TIMESTAMPS"):
        await collect(vision_chat(heavy, question, frames, model="video_vlm",
                                  timestamps=[0.0, 1.0], max_tokens=4))


@pytest.mark.parametrize("messages,images,error", [
    (IMAGE_Q, [], "1 image parts but 0 images"),
    (IMAGE_Q, [b"not an image"], "image 0 is not a PNG"),
    ([{"role": "robot", "content": "hi"}], [], "role"),
    ([{"role": "user", "content": [{"type": "audio"}]}], [], "content part"),
])
async def test_errors_say_what_is_wrong(heavy, messages, images, error):
    with pytest.raises(TritonModelError, match=error):
        await collect(vision_chat(heavy, messages, images, max_tokens=4))


async def test_limits(heavy):
    with pytest.raises(TritonModelError, match="MAX_TOKENS 5000 is outside"):
        await collect(vision_chat(heavy, IMAGE_Q, [png()], max_tokens=5000))
    nine = [{"role": "user", "content": [{"type": "image"}] * 9}]
    with pytest.raises(TritonModelError, match="the maximum is 8"):
        await collect(vision_chat(heavy, nine, [png()] * 9, max_tokens=4))
    # the model still serves after the errors
    tokens = await collect(vision_chat(heavy, IMAGE_Q, [png()], max_tokens=2))
    assert tokens[-1].finish_reason in ("stop", "length")


async def test_cancel_stops_generation(heavy):
    # Reference: 200 tokens when nobody cancels (the tiny model does not stop early).
    t0 = time.monotonic()
    tokens = await collect(vision_chat(heavy, IMAGE_Q, [png()], max_tokens=200))
    full = time.monotonic() - t0
    assert tokens[-1].finish_reason == "length", tokens[-1]
    # Cancel a 1000-token request after a few pieces; one instance: if generation went
    # on, the next request would wait ~5x `full` for it.
    gen = vision_chat(heavy, IMAGE_Q, [png()], max_tokens=1000)
    async with contextlib.aclosing(gen):
        seen = 0
        async for tok in gen:
            seen += bool(tok.text)
            if seen == 3:
                break
    t1 = time.monotonic()
    first = None
    async for _tok in vision_chat(heavy, IMAGE_Q, [png()], max_tokens=4):
        first = time.monotonic() - t1
        break
    assert first is not None and first < full, (first, full)
