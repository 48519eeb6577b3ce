"""Request checks of the vision-language models (multimodal, video) and their prompt shapes.

Pure Python: the Triton models import this file, the tests and the HTTP door import
it offline. A request is chat messages whose ``content`` is a string or a list of
parts ``{"type": "text", "text": ...}`` / ``{"type": "image"}``; the images travel
beside them as encoded bytes (PNG/JPEG/WebP), in the order of the image parts.
"""

from __future__ import annotations

import json

ROLES = frozenset({"system", "user", "assistant"})


def parse_vlm_messages(raw: bytes | str, max_bytes: int) -> list[dict]:
    """The messages of a request, or a ValueError that says what is wrong."""
    if len(raw) > max_bytes:
        raise ValueError(f"MESSAGES is {len(raw)} bytes; the maximum is {max_bytes}")
    try:
        messages = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"MESSAGES is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages:
        raise ValueError("MESSAGES must be a non-empty JSON list of messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError('each message needs a "role": "system"|"user"|"assistant"')
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = [_part(p) for p in content]
        else:
            raise ValueError("a message's content is a string or a list of parts")
        out.append({"role": m["role"], "content": parts})
    return out


def _part(part: object) -> dict:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(
            part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if isinstance(part, dict) and part.get("type") == "image":
        return {"type": "image"}
    raise ValueError('a content part is {"type": "text", "text": "..."} or {"type": "image"}')


def count_images(messages: list[dict]) -> int:
    return sum(p["type"] == "image" for m in messages for p in m["content"])


def check_images(messages: list[dict], n_images: int, max_images: int) -> None:
    wanted = count_images(messages)
    if wanted != n_images:
        raise ValueError(f"the messages have {wanted} image parts but {n_images} images "
                         "were sent")
    if n_images > max_images:
        raise ValueError(f"{n_images} images; the maximum is {max_images}")


def video_messages(messages: list[dict], timestamps: list[float], transcript: str
                   ) -> list[dict]:
    """Put a clip's sampled frames (one image part each, with its time) and its
    transcript before the text of the last user message.

    Any vision-language model then reads a video as what it is trained on: images
    with text between them ("0.0 s: <image> 2.0 s: <image> ... Transcript: ...").
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the last message must be the user's question about the clip")
    if count_images(messages):
        raise ValueError("a video request carries its frames in IMAGES, not as image parts")
    parts: list[dict] = [{"type": "text", "text": "Video frames:"}]
    for t in timestamps:
        parts += [{"type": "text", "text": f" {t:.1f} s:"}, {"type": "image"}]
    if transcript.strip():
        parts.append({"type": "text", "text": f"\nTranscript: {transcript.strip()}"})
    parts.append({"type": "text", "text": "\n"})
    last = messages[-1]
    return [*messages[:-1], {"role": "user", "content": parts + last["content"]}]


def merge_text_parts(messages: list[dict]) -> list[dict]:
    """Adjacent text parts joined (chat templates then see one text block per run)."""
    out = []
    for m in messages:
        parts: list[dict] = []
        for p in m["content"]:
            if p["type"] == "text" and parts and parts[-1]["type"] == "text":
                parts[-1] = {"type": "text", "text": parts[-1]["text"] + p["text"]}
            else:
                parts.append(dict(p))
        out.append({"role": m["role"], "content": parts})
    return out


# Control characters other than line breaks and tabs are never text a client can use
# (a NUL breaks TTS); a byte-level model can still sample them.
_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}


def clean_text(text: str) -> str:
    return text.translate(_CONTROL)


class IncrementalText:
    """Turns a growing list of token ids into text pieces, never splitting a character.

    ``decode`` is the tokenizer's decode of a list of ids. Byte-level tokenizers emit
    half a UTF-8 character in one token: the piece is held until it completes. Control
    characters are left out (clean_text).
    """

    def __init__(self, decode):
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return clean_text(piece)

    def finish(self) -> str:
        text = self.decode(self.ids)
        piece, self.sent = text[len(self.sent):], text
        return clean_text(piece)
