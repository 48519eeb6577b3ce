"""The conversation history of one session, with what the listener actually heard.

An assistant message that was spoken keeps the spans of its audio (which text
each TTS piece said, and where that piece sits in the reply's audio), so a reply
cut off after 2 s is remembered as the words of those 2 s, whether the cut came
from barge-in (the output knows how much was played) or from the client's
``conversation.item.truncate`` with ``audio_end_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """``text`` was spoken from ``start_s`` to ``end_s`` of the reply's audio."""

    text: str
    start_s: float
    end_s: float


def heard_text(spans: list[Span], audio_end_s: float) -> str:
    """The words of ``spans`` played by ``audio_end_s``; a piece cut in the middle keeps
    its words in proportion to the time played (TTS speaks at a steady rate)."""
    out = []
    for span in spans:
        if audio_end_s >= span.end_s:
            out.append(span.text)
            continue
        if audio_end_s > span.start_s:
            fraction = (audio_end_s - span.start_s) / max(1e-6, span.end_s - span.start_s)
            words = span.text.split()
            keep = int(len(words) * fraction)
            if keep:
                out.append(" ".join(words[:keep]))
        break
    return " ".join(out).strip()


@dataclass
class Item:
    id: str
    role: str  # user | assistant | system
    text: str
    spans: list[Span] = field(default_factory=list)  # assistant audio only
    truncated: bool = False
    # function_call: the assistant called ``name`` with ``arguments`` (JSON text);
    # function_call_output: the client's result (``text``) for ``call_id``
    type: str = "message"
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    # a user message that shows something (input_image parts, a camera frame): the
    # encoded images; the turn then goes to the multimodal model
    images: tuple[bytes, ...] = ()

    @property
    def audio_s(self) -> float:
        return self.spans[-1].end_s if self.spans else 0.0


class UnknownItem(KeyError):
    pass


class Conversation:
    """Ordered items; ``messages()`` is what the LLM reads."""

    def __init__(self, max_items: int = 20):
        self.max_items = max_items
        self.items: list[Item] = []

    def add(self, item_id: str, role: str, text: str, spans: list[Span] | None = None,
            **function) -> Item:
        """A message; ``function`` (type, call_id, name, arguments) makes it a
        function_call or function_call_output item."""
        return self.append(Item(item_id, role, text, list(spans or []), **function))

    def append(self, item: Item) -> Item:
        self.items.append(item)
        if len(self.items) > self.max_items:
            # Drop the older half at once, not one item per turn: the LLM's prompt cache
            # reuses a conversation's state by prefix, and a window sliding every turn
            # changes the prefix every turn (a full re-read each time: the soak's time to
            # first token grew 5x once histories reached the limit).
            del self.items[:len(self.items) - max(1, self.max_items // 2)]
        return item

    def get(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise UnknownItem(item_id)

    def truncate(self, item_id: str, audio_end_s: float) -> Item:
        """Keep only what was heard of an assistant item by ``audio_end_s``."""
        item = self.get(item_id)
        if item.role != "assistant":
            raise ValueError(f"item {item_id} is a {item.role} message; only assistant "
                             "audio can be truncated")
        if audio_end_s < item.audio_s:
            item.text = heard_text(item.spans, audio_end_s)
            item.spans = [s for s in item.spans if s.start_s < audio_end_s]
            item.truncated = True
        return item

    def messages(self, instructions: str) -> list[dict]:
        """Chat messages: a call becomes ``tool_calls`` of an assistant message (joined
        to the reply text before it), a result a ``tool`` message."""
        out: list[dict] = [{"role": "system", "content": instructions}]
        for i in self.items:
            if i.type == "function_call":
                call = {"id": i.call_id, "type": "function",
                        "function": {"name": i.name, "arguments": i.arguments}}
                if out[-1]["role"] == "assistant":
                    out[-1].setdefault("tool_calls", []).append(call)
                else:
                    out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif i.type == "function_call_output":
                out.append({"role": "tool", "tool_call_id": i.call_id, "content": i.text})
            elif i.images:
                out.append({"role": i.role, "content": [
                    *({"type": "image", "image": b} for b in i.images),
                    *([{"type": "text", "text": i.text}] if i.text else [])]})
            elif i.text:
                out.append({"role": i.role, "content": i.text})
        return out
