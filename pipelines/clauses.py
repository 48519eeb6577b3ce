"""Cut a token stream into pieces worth sending to TTS.

The first piece ends at the first clause boundary (so the voice starts after a
few words); later pieces end at sentence boundaries (better prosody), or at a
clause boundary once they grow long. Boundaries come from the abbreviation-aware
splitter the TTS model uses too, so "Mr. Jones at 5 p.m." is never cut into
fragments.
"""

from __future__ import annotations

import re

from rtmedia_models_common.sentences import binds_to_next, clause_ends, sentence_ends

_WORD = re.compile(r"\S+(?=\s)")  # a word known to be complete: whitespace follows


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
        cuts = sentence_ends(buf, final=False)
        if self.emitted == 0 or len(buf) > self.long_chars:
            cuts = sorted({*cuts, *clause_ends(buf, final=False)})
        if self.emitted == 0:
            # A boundary too early to be worth a TTS call is skipped.
            cut = next((c for c in cuts if len(buf[:c].split()) >= self.first_min_words),
                       None)
            if cut is None:
                # No boundary yet: start speaking after a few words anyway.
                cut = self._after_words(buf)
        else:
            cut = cuts[0] if cuts else None
        if cut is None:
            return None
        piece = buf[:cut].strip()
        self.buffer = buf[cut:]
        if not piece:
            return None
        self.emitted += 1
        return piece

    def _after_words(self, buf: str) -> int | None:
        """The end of the first ``first_max_words`` complete words, not right after a
        word that leads into the next one ("Dr.", "e.g.")."""
        for count, m in enumerate(_WORD.finditer(buf), 1):
            if count >= self.first_max_words and not binds_to_next(m.group()):
                return m.end()
        return None

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        return [rest] if rest else []
