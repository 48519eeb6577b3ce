"""The abbreviation-aware sentence splitter and the clause splitter built on it."""

from __future__ import annotations

import random

import pytest
from rtmedia_models_common.sentences import (
    clause_ends,
    sentence_ends,
    split_for_streaming,
    split_sentences,
)

from pipelines.clauses import ClauseSplitter

CASES = [
    ("Mr. Jones arrived at 5 p.m. Then he left.",
     ["Mr. Jones arrived at 5 p.m.", "Then he left."]),
    ("We met at 5 p.m. on Monday.", ["We met at 5 p.m. on Monday."]),
    ("Bring a tool, e.g. a hammer. It helps.", ["Bring a tool, e.g. a hammer.", "It helps."]),
    ("Use one, i.e. the red one. Done.", ["Use one, i.e. the red one.", "Done."]),
    ("Dr. Smith and Mrs. Brown agreed. Good.", ["Dr. Smith and Mrs. Brown agreed.", "Good."]),
    ("Pi is about 3.14 today. Yes.", ["Pi is about 3.14 today.", "Yes."]),
    ("J. R. R. Tolkien wrote it. The end.", ["J. R. R. Tolkien wrote it.", "The end."]),
    ("The U.S. Army is large. I know.", ["The U.S. Army is large.", "I know."]),
    ("I moved to the U.S. Then I worked.", ["I moved to the U.S.", "Then I worked."]),
    ("Well... maybe not. Wait... I know!", ["Well... maybe not.", "Wait...", "I know!"]),
    ('He said "hello." Then he left.', ['He said "hello."', "Then he left."]),
    ('"Really?" she asked. Yes!', ['"Really?" she asked.', "Yes!"]),
    ("Apples, pears, etc. are fruit. Fine.", ["Apples, pears, etc. are fruit.", "Fine."]),
    ("See No. 5 below. I said no. Fine.", ["See No. 5 below.", "I said no.", "Fine."]),
    ("Steps:\n1. Open it.\n2. Close it", ["Steps:\n1. Open it.", "2. Close it"]),
    ("Fruit\n- apples\n- pears", ["Fruit", "- apples", "- pears"]),
    ("The waves,\nthe wind.\n\nThe end.", ["The waves,\nthe wind.", "The end."]),
    ("Is it? Yes! It is.", ["Is it?", "Yes!", "It is."]),
    ("Visit example.com today. Bye.", ["Visit example.com today.", "Bye."]),
    ("नमस्ते। आप कैसे हैं?", ["नमस्ते।", "आप कैसे हैं?"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_streamed_boundaries_match_the_whole_text(text, expected):
    """Fed char by char with final=False, a boundary once reported never moves, and
    all of them are known by the end of the text."""
    decided: list[int] = []
    for i in range(1, len(text) + 1):
        now = sentence_ends(text[:i], final=False)
        assert now[:len(decided)] == decided, (text[:i], now, decided)
        decided = now
    full = sentence_ends(text)
    assert full[:len(decided)] == decided and len(full) - len(decided) <= 1


def test_abbreviation_waits_for_the_next_word():
    assert sentence_ends("at 5 p.m.", final=False) == []
    assert sentence_ends("at 5 p.m. ", final=False) == []
    assert sentence_ends("at 5 p.m. t", final=False) == []  # "then", lower case: no end
    assert sentence_ends("at 5 p.m. on", final=False) == []
    assert sentence_ends("at 5 p.m. T", final=False) == [9]
    assert sentence_ends("Dr. ", final=False) == []
    assert sentence_ends("at 5 p.m.") == [9]  # the end of a whole text


def test_ordinary_sentence_end_is_known_at_the_next_space():
    assert sentence_ends("Hello there.", final=False) == []  # could become "there.com"
    assert sentence_ends("Hello there. ", final=False) == [12]
    assert sentence_ends("Costs 3.", final=False) == []  # could become 3.14
    assert sentence_ends("Costs 3.1", final=False) == []


def test_clause_ends():
    assert clause_ends("Well, then; fine") == [5, 11]
    assert clause_ends("1,000 people,", final=False) == []
    assert clause_ends("1,000 people,") == [13]


def test_split_for_streaming_cuts_a_long_first_sentence_at_its_first_clause():
    text = ("Hello, thank you for calling the support line of Acme Corp. today. "
            "Your order has shipped. It arrives at 9 a.m. on Monday.")
    assert split_for_streaming(text) == [
        "Hello,", "thank you for calling the support line of Acme Corp. today.",
        "Your order has shipped.", "It arrives at 9 a.m. on Monday."]
    assert split_for_streaming("Short one, really. Next.") == ["Short one, really.", "Next."]
    assert split_for_streaming("  ") == []


def _tokens(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        out.append(text[i:i + n])
        i += n
    return out


def _stream(text: str, seed: int = 0, **kw) -> list[str]:
    splitter = ClauseSplitter(**kw)
    pieces = []
    for tok in _tokens(text, seed):
        pieces += splitter.push(tok)
    return pieces + splitter.flush()


@pytest.mark.parametrize("seed", range(5))
def test_clause_splitter_never_cuts_inside_abbreviations(seed):
    text = ("Sure, Mr. Jones. The meeting with Dr. Smith is at 5 p.m. on Friday, "
            "e.g. after lunch. Pi is 3.14 and J. R. R. Tolkien wrote books. "
            "The U.S. Army came at 5 p.m. Then we left... Finally, done.")
    pieces = _stream(text, seed)
    assert " ".join(pieces) == text
    assert pieces == [
        "Sure, Mr. Jones.", "The meeting with Dr. Smith is at 5 p.m. on Friday, e.g. after lunch.",
        "Pi is 3.14 and J. R. R. Tolkien wrote books.", "The U.S. Army came at 5 p.m.",
        "Then we left...", "Finally, done."]


def test_clause_splitter_first_piece_after_first_clause_or_four_words():
    # "Well," is too short to be worth a TTS call: four words instead.
    assert _stream("Well, I think the answer is four. Yes.") == [
        "Well, I think the", "answer is four.", "Yes."]
    assert _stream("Hello there, friend. How are you?") == [
        "Hello there, friend.", "How are you?"]
    assert _stream("Yes, my friend, how are you?") == ["Yes, my friend,", "how are you?"]
    assert _stream("The capital of France is Paris. It is big.") == [
        "The capital of France", "is Paris.", "It is big."]
    # The four-word cut does not leave a title dangling.
    assert _stream("Yesterday I met Dr. Jones at home. Bye.")[0] == "Yesterday I met Dr. Jones"


def test_clause_splitter_cuts_promptly_and_flush_gives_the_rest():
    s = ClauseSplitter()
    assert s.push("Sure, happy to help. ") == ["Sure, happy to help."]
    assert s.push("I can help with that.") == []  # maybe "that.com": wait one char
    assert s.push(" ") == ["I can help with that."]
    assert s.push("See you at 5 p.m.") == []
    assert s.push(" Then") == ["See you at 5 p.m."]
    assert s.push(" bye") == []
    assert s.flush() == ["Then bye"]
    assert s.flush() == []


def test_clause_splitter_streamed_pm_only_cuts_before_a_new_sentence():
    s = ClauseSplitter()
    s.push("Sure thing, my friend. ")
    out = []
    for tok in ["Call", " at", " 5", " p", ".m", ".", " then", " we", " go", "."]:
        out += s.push(tok)
    assert out == []
    assert s.flush() == ["Call at 5 p.m. then we go."]


def test_clause_splitter_long_pieces_cut_at_clauses():
    text = "First one here. " + "word " * 30 + "and more, then the rest of it."
    pieces = _stream(text, long_chars=60)
    assert pieces[1].endswith("and more,") and pieces[2] == "then the rest of it."


def test_pieces_are_capped_for_tts_memory():
    from rtmedia_models_common.sentences import cap_length, split_for_streaming

    long = ("The committee met on Tuesday and discussed the budget for the new library "
            "building in great detail, the parking plan for the visitors and the staff, and "
            "the opening hours that Dr. Smith proposed for the winter months next year.")
    parts = split_for_streaming(long, max_chars=80)
    assert all(len(p) <= 80 for p in parts), parts
    assert " ".join(parts) == long
    assert not any(p.endswith("Dr.") for p in parts)
    assert cap_length("short one.", 80) == ["short one."]
    assert cap_length("x" * 200, 80) == ["x" * 200]  # one word cannot be cut
