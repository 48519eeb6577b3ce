"""Sentence and clause boundaries that know abbreviations, decimals and initials.

Used on a growing text (an LLM token stream) as well as on a whole text (TTS
input): with ``final=False`` a boundary whose meaning depends on text not seen
yet is left undecided instead of guessed, so "at 5 p.m." is only cut once the
next word shows whether a new sentence starts. Pure Python (stdlib only): the
Triton models import this file as well as the pipelines.
"""

from __future__ import annotations

TERMINATORS = ".!?…।"
CLOSERS = "\"')]}”’»"
OPENERS = "\"'([{“‘«"
CLAUSE_MARKS = ",;:—–"

# Words that (almost) always continue the sentence after their period: titles
# before a name, "e.g.", "vs." ...
CONTINUING = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "rev", "fr", "hon", "gen", "col", "capt",
    "lt", "sgt", "gov", "sen", "rep", "pres", "st", "mt", "ft", "messrs",
    "e.g", "i.e", "eg", "ie", "cf", "vs", "viz", "approx", "ca", "esp", "incl",
    "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri",
})
# Abbreviations before a number ("No. 5", "fig. 3"); otherwise ordinary words ("I said no.").
BEFORE_NUMBER = frozenset({"no", "nos", "fig", "figs", "vol", "p", "pp", "ch", "sec", "art", "op"})
# Abbreviations that often end a sentence: a boundary when the next word is capitalised.
MAY_END = frozenset({
    "etc", "a.m", "p.m", "am", "pm", "inc", "ltd", "co", "corp", "jr", "sr", "bros",
    "llc", "plc", "al",
})
# Words that start sentences: the evidence needed after an initial or initialism
# ("J. R. R. Tolkien" vs "Plan B. Then", "the U.S. Army" vs "in the U.S. Then").
STARTERS = frozenset({
    "the", "a", "an", "this", "that", "these", "those", "it", "its", "i", "he", "she",
    "we", "they", "you", "my", "our", "your", "his", "her", "their", "there", "here",
    "then", "but", "and", "so", "or", "if", "when", "while", "after", "before", "now",
    "also", "however", "in", "on", "at", "for", "as", "what", "why", "how", "who",
    "where", "yes", "no", "please", "let", "is", "are", "do", "does", "can", "will",
})

UNDECIDED = None  # a verdict that needs text not seen yet


def _word_before(text: str, end: int) -> str:
    """The word ending at ``end`` (exclusive), without opening quotes/brackets."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end].lstrip(OPENERS)


def _next_word(text: str, pos: int) -> tuple[str, bool]:
    """(the word starting after the whitespace at ``pos``, whether it is complete)."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    while pos < len(text) and text[pos] in OPENERS:
        pos += 1
    start = pos
    while pos < len(text) and not text[pos].isspace():
        pos += 1
    return text[start:pos], pos < len(text)


def _is_initialism(word: str) -> bool:
    """"U.S", "Ph.D", "J" (the final period excluded): letters separated by periods."""
    parts = word.split(".")
    return all(p.isalpha() and len(p) <= 2 for p in parts) and (
        len(parts) > 1 or len(word) == 1)


def _line_start(text: str, pos: int) -> bool:
    i = pos - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] == "\n"


def _period_ends(text: str, dot: int, after: int, final: bool) -> bool | None:
    """Whether the single period at ``dot`` ends a sentence (or UNDECIDED)."""
    word = _word_before(text, dot)
    lower = word.lower()
    if word.isdigit() and _line_start(text, dot - len(word)):
        return False  # "1. Apples": a list marker
    nxt, complete = _next_word(text, after)
    if not nxt and not final:
        needs_next = (lower in CONTINUING or lower in MAY_END or lower in BEFORE_NUMBER
                      or _is_initialism(word))
        if needs_next:
            return UNDECIDED
    if not nxt:
        return True  # end of the text
    if lower in CONTINUING:
        return False
    if lower in BEFORE_NUMBER:
        return not nxt[0].isdigit()
    if lower in MAY_END:
        return nxt[0].isupper()
    if _is_initialism(word):
        # The whole next word is needed to compare it with STARTERS.
        if not complete and not final:
            return UNDECIDED
        return nxt.rstrip(",;:.!?").lower() in STARTERS
    return True


def sentence_ends(text: str, final: bool = True) -> list[int]:
    """Offsets just after each sentence end in ``text`` (after closing quotes).

    ``final=False``: more text may follow; a boundary that depends on it (a period
    at the very end, "p.m." before a word not seen yet) is not reported. A line
    break also ends a sentence (lists, headings) unless a clause mark precedes it.
    """
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line = text[ends[-1] if ends else 0:i].rstrip()
            # A line break ends a sentence (lists, headings), unless the line ends
            # in a clause mark: "Three steps:" or a poem's "waves," goes on.
            if line.strip() and line[-1] not in CLAUSE_MARKS:
                ends.append(i)
            i += 1
            continue
        if ch not in TERMINATORS:
            i += 1
            continue
        run_end = i
        while run_end < n and text[run_end] in TERMINATORS:
            run_end += 1
        after = run_end
        while after < n and text[after] in CLOSERS:
            after += 1
        run = text[i:run_end]
        started = bool(text[ends[-1] if ends else 0:i].strip())
        if after == n:
            if final and started:
                ends.append(after)
            break
        if not text[after].isspace():
            i = after  # "3.14", "example.com", "U.S" inside a word
            continue
        nxt, _ = _next_word(text, after)
        if run == ".":
            verdict = _period_ends(text, i, after, final)
        elif set(run) <= set(".…"):  # an ellipsis: a pause unless a new sentence starts
            verdict = UNDECIDED if not nxt and not final else (not nxt or nxt[0].isupper())
        elif after > run_end:  # '"Really?" she asked.'
            verdict = UNDECIDED if not nxt and not final else (not nxt or not nxt[0].islower())
        else:
            verdict = True
        if verdict is UNDECIDED:
            break
        if verdict and started:
            ends.append(after)
        i = after
    return ends


def clause_ends(text: str, final: bool = True) -> list[int]:
    """Offsets just after each clause mark (, ; : dashes) that whitespace follows."""
    out: list[int] = []
    started = False
    for i, ch in enumerate(text):
        if ch in CLAUSE_MARKS and started:
            if i + 1 < len(text):
                if text[i + 1].isspace():
                    out.append(i + 1)
            elif final:
                out.append(i + 1)
        started = started or not ch.isspace()
    return out


def split_sentences(text: str) -> list[str]:
    """The sentences of a whole text, stripped, empty ones left out."""
    pieces, start = [], 0
    for end in [*sentence_ends(text), len(text)]:
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces


def split_for_streaming(text: str, first_clause_chars: int = 60,
                        max_chars: int = 0) -> list[str]:
    """Sentences, with the first one cut at its first clause when it is long (TTS:
    the first audio leaves after a few words); with ``max_chars``, no piece is longer
    (a TTS network's memory grows with the longest input it has seen)."""
    sentences = split_sentences(text)
    if sentences and len(sentences[0]) > first_clause_chars:
        first = sentences[0]
        cuts = [c for c in clause_ends(first, final=False) if first[c:].strip()]
        if cuts:
            sentences[:1] = [first[:cuts[0]].strip(), first[cuts[0]:].strip()]
    if max_chars:
        sentences = [p for s in sentences for p in cap_length(s, max_chars)]
    return sentences


def cap_length(piece: str, max_chars: int) -> list[str]:
    """Cut ``piece`` into parts of at most ``max_chars``: at the last clause boundary that
    fits, else at the last space that does not split "Dr. Smith"; a single word longer
    than the cap stays whole."""
    out = []
    rest = piece.strip()
    while len(rest) > max_chars:
        cut = max((c for c in clause_ends(rest) if c <= max_chars), default=0)
        if cut < max_chars // 3:  # no useful clause boundary: cut between words
            cut = 0
            for i in range(min(max_chars, len(rest) - 1), 0, -1):
                if rest[i] == " " and not binds_to_next(rest[:i].rsplit(" ", 1)[-1]):
                    cut = i
                    break
            if not cut:
                cut = rest.find(" ", max_chars)
                if cut < 0:
                    break
        out.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        out.append(rest)
    return out


def binds_to_next(word: str) -> bool:
    """A word that should not end a piece cut for length ("Dr." before a name)."""
    lower = word.lstrip(OPENERS).rstrip(".").lower()
    return word.endswith(".") and (lower in CONTINUING or _is_initialism(
        word.lstrip(OPENERS).rstrip(".")))
