"""Cut a token stream into pieces worth sending to TTS.

The first piece ends at the first clause boundary (so the voice starts after a
few words); later pieces end at sentence boundaries (better prosody), or at a
clause boundary once they grow long.
"""

from __future__ import annotations

import re

_SENTENCE = re.compile(r"[.!?…](?:[\"')\]]*)(?=\s)")
_CLAUSE = re.compile(r"[,;:—–](?=\s)")


class ClauseSplitter:
    def __init__(self, first_min_words: int = 3, first_max_words: int = 4,
                 long_chars: int = 120):
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.long_chars = long_chars
        self.buffer = ""
        self.emitted = 0

    def push(self, text: str) -> list[str]:
        self.buffer += text
        out = []
        while piece := self._next():
            out.append(piece)
        return out

    def _next(self) -> str | None:
        buf = self.buffer
        cut = None
        for m in _SENTENCE.finditer(buf):
            cut = m.end()
            break
        if self.emitted == 0 or len(buf) > self.long_chars:
            for m in _CLAUSE.finditer(buf):
                if cut is None or m.end() < cut:
                    cut = m.end()
                break
        if cut is None and self.emitted == 0:
            # No boundary yet: start speaking after a few words anyway.
            words = buf.split(" ")
            if len(words) > self.first_max_words + 1:
                cut = len(" ".join(words[:self.first_max_words]))
        if cut is None:
            return None
        piece = buf[:cut].strip()
        if self.emitted == 0 and len(piece.split()) < self.first_min_words and cut < len(buf):
            # too short to be worth a TTS call: wait for the next boundary
            nxt = _SENTENCE.search(buf, cut) or _CLAUSE.search(buf, cut)
            if nxt is None:
                return None
            cut = nxt.end()
            piece = buf[:cut].strip()
        self.buffer = buf[cut:]
        if not piece:
            return None
        self.emitted += 1
        return piece

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        return [rest] if rest else []
