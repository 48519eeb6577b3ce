"""Turns with images go to the multimodal model, the others to the LLM (offline, fakes)."""

from __future__ import annotations

import base64

import pytest

from pipelines.conversation import Conversation
from pipelines.services import Token
from pipelines.vision import (
    VisionRoutingLLM,
    VisionToken,
    current_turn_has_images,
    vision_messages,
)
from streaming import events as E

PNG = b"\x89PNG fake"


class Recorder:
    def __init__(self, reply: str):
        self.reply, self.calls = reply, []

    def chat(self, messages, *args, **kwargs):
        self.calls.append((messages, args, kwargs))

        async def gen():
            yield (VisionToken if args else Token)(self.reply, "stop")
        return gen()


def history() -> Conversation:
    c = Conversation()
    c.add("i1", "user", "Hi")
    c.add("i2", "assistant", "Hello!")
    c.add("i3", "user", "", images=(PNG,))
    c.add("i4", "user", "What am I holding?")
    return c


async def test_image_turn_goes_to_vision_text_turn_to_llm():
    llm, vision = Recorder("text"), Recorder("seen")
    agent_llm = VisionRoutingLLM(llm, vision)
    msgs = history().messages("Be brief.")
    assert current_turn_has_images(msgs)
    out = [t.text async for t in agent_llm.chat(msgs, max_tokens=5, temperature=None,
                                                 seed=None, tools=[{"x": 1}])]
    assert out == ["seen"] and not llm.calls
    shaped, images = vision.calls[0][0], vision.calls[0][1][0]
    assert images == [PNG]
    assert shaped[-2] == {"role": "user", "content": [{"type": "image"}]}
    assert shaped[-1]["content"] == [{"type": "text", "text": "What am I holding?"}]
    # after the answer, a text-only turn stays on the LLM, the image left out as text
    c = history()
    c.add("i5", "assistant", "A cup.")
    c.add("i6", "user", "Thanks.")
    msgs = c.messages("Be brief.")
    assert not current_turn_has_images(msgs)
    out = [t.text async for t in agent_llm.chat(msgs, max_tokens=5, temperature=None,
                                                 seed=None, tools=[{"x": 1}])]
    assert out == ["text"] and len(vision.calls) == 1
    sent, _, kwargs = llm.calls[0]
    assert all(isinstance(m["content"], str) for m in sent) and kwargs["tools"] == [{"x": 1}]


def test_older_images_are_left_out_of_a_later_image_turn():
    c = history()
    c.add("i5", "assistant", "A cup.")
    c.add("i6", "user", "And now?", images=(b"second",))
    shaped, images = vision_messages(c.messages("sys"))
    assert images == [b"second"]
    assert sum(p["type"] == "image" for m in shaped for p in m["content"]) == 1


def _item(parts) -> E.ItemCreate:
    import json

    raw = json.dumps({"type": "conversation.item.create",
                      "item": {"type": "message", "role": "user", "content": parts}})
    return E.parse_event(raw, max_bytes=1 << 20).body


def test_input_image_parts_are_decoded_and_checked():
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    ev = _item([{"type": "input_image", "image_url": url},
                {"type": "input_text", "text": "What is it?"}])
    assert ev.images == (PNG,) and ev.text == "What is it?"
    only = _item([{"type": "input_image", "image_url": url}])
    assert only.images == (PNG,) and only.text == ""
    for bad in ("https://example.com/a.png", "data:image/png;base64,@@@", 3):
        with pytest.raises(E.ProtocolError) as err:
            _item([{"type": "input_image", "image_url": bad}])
        assert err.value.code == "invalid_image"
    with pytest.raises(E.ProtocolError, match="at most 4"):
        _item([{"type": "input_image", "image_url": url}] * 5)
