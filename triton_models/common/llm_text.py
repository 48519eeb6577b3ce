"""The chat LLM model's request checks and its sentence-complete token budget.

Pure Python: the Triton model imports this file, the tests import it offline.
"""

from __future__ import annotations

import json

try:  # in the model repository, where common/ itself is on sys.path
    from sentences import sentence_ends
except ImportError:  # imported as the package rtmedia_models_common
    from rtmedia_models_common.sentences import sentence_ends

ROLES = frozenset({"system", "user", "assistant"})


def parse_messages(raw: bytes | str, max_bytes: int) -> list[dict]:
    """The chat messages of a request, or a ValueError that says what is wrong."""
    if len(raw) > max_bytes:
        raise ValueError(f"MESSAGES is {len(raw)} bytes; the maximum is {max_bytes}")
    try:
        messages = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"MESSAGES is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise ValueError('MESSAGES must be a non-empty JSON list of {"role": '
                         '"system"|"user"|"assistant", "content": "..."}')
    return messages


def check_max_tokens(max_tokens: int, limit: int) -> int:
    if not 1 <= max_tokens <= limit:
        raise ValueError(f"MAX_TOKENS {max_tokens} is outside 1..{limit}")
    return int(max_tokens)


class SentenceBudget:
    """Keeps a reply that runs into its token limit from ending mid-sentence.

    While the budget is ample every piece goes out at once. In the last ``margin``
    tokens the text after the last complete sentence is held back and released
    sentence by sentence. When ``max_tokens`` are spent mid-sentence, up to
    ``grace`` more tokens may finish the sentence; an unfinished tail is then
    dropped. Feed each generated piece (one token) to ``push`` and send what it
    returns; stop generating when ``done``; send what ``finish`` returns.

    The margin is at most half the budget, so a short reply still streams its first
    tokens at once; text streamed before the margin cannot be taken back.
    """

    def __init__(self, max_tokens: int, margin: int, grace: int):
        self.max_tokens = max_tokens
        self.margin = min(margin, max_tokens // 2)
        self.grace = grace
        self.tokens = 0
        self.text = ""
        self.released = 0  # text[:released] has been returned
        self.anchor: int | None = None  # where scanning starts: a sentence end or 0
        self.done = False
        self.truncated = False  # the budget, not the model, ended the reply

    @property
    def limit(self) -> int:
        """Tokens to ask the generator for."""
        return self.max_tokens + self.grace

    @property
    def reason(self) -> str:
        return "length" if self.truncated else "stop"

    def push(self, piece: str) -> str:
        self.tokens += 1
        self.text += piece
        if self.anchor is None and self.tokens <= self.max_tokens - self.margin:
            self.released = len(self.text)
            return piece
        if self.anchor is None:
            # Entering the margin: scan once from the start for the last sentence end
            # (the word before a period must be seen whole).
            ends = sentence_ends(self.text, final=False)
            self.anchor = ends[-1] if ends else 0
            self.anchor = min(self.anchor, self.released)
        out = self._release(final=False)
        if self.tokens >= self.max_tokens and (
                out or not self.text[self.released:].strip()):
            # Spent, and what was released ends a sentence: anything after it is the
            # start of a sentence there is no budget for.
            self.done = self.truncated = True
        elif self.tokens >= self.limit:
            self.done = self.truncated = True
            out += self._cut()
        return out

    def _release(self, final: bool) -> str:
        ends = [self.anchor + e for e in sentence_ends(self.text[self.anchor:], final=final)]
        ends = [e for e in ends if e > self.released]
        if not ends:
            return ""
        out = self.text[self.released:ends[-1]]
        self.released = self.anchor = ends[-1]
        return out

    def _cut(self) -> str:
        """Whole sentences only, unless the reply has no sentence end at all: then
        all of it (a long fragment beats a short one or silence)."""
        out = self._release(final=True)
        if self.anchor == 0:  # no sentence end seen (one is never at offset 0)
            out += self.text[self.released:]
            self.released = len(self.text)
        return out

    def finish(self, model_stopped: bool) -> str:
        """The held text still worth sending once generation ended.

        ``model_stopped``: the model ended the reply itself (end of sequence), so
        all of it goes out. Otherwise the generator hit its own limit.
        """
        if self.done:
            return ""
        self.done = True
        if self.anchor is None:
            return ""  # nothing was held
        if model_stopped:
            out, self.released = self.text[self.released:], len(self.text)
            return out
        self.truncated = True
        return self._cut()
