"""The vision-language models' pure request helpers (offline unit tier)."""

from __future__ import annotations

import pytest
from rtmedia_models_common.vlm_text import (
    IncrementalText,
    check_images,
    merge_text_parts,
    parse_vlm_messages,
    video_messages,
)


@pytest.mark.parametrize("raw,error", [
    (b"[", "not valid JSON"), (b"[]", "non-empty"), (b'{"role": "user"}', "non-empty"),
    (b'[{"role": "user", "content": 3}]', "string or a list"),
])
def test_parse_rejects(raw, error):
    with pytest.raises(ValueError, match=error):
        parse_vlm_messages(raw, 1000)


def test_parse_limits_size_and_normalises_text():
    with pytest.raises(ValueError, match="maximum is 10"):
        parse_vlm_messages(b'[{"role": "user", "content": "hello"}]', 10)
    msgs = parse_vlm_messages(b'[{"role": "user", "content": "hi"}]', 100)
    assert msgs == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="2 image parts but 1"):
        check_images([{"role": "user", "content": [{"type": "image"}] * 2}], 1, 8)


def test_video_prompt_puts_frames_and_transcript_before_the_question():
    msgs = video_messages([{"role": "user", "content": [{"type": "text", "text": "Why?"}]}],
                          [0.0, 2.5], "hello there")
    merged = merge_text_parts(msgs)[0]["content"]
    assert [p["type"] for p in merged] == ["text", "image", "text", "image", "text"]
    assert merged[0]["text"] == "Video frames: 0.0 s:"
    assert merged[2]["text"] == " 2.5 s:"
    assert merged[-1]["text"] == "\nTranscript: hello there\nWhy?"
    with pytest.raises(ValueError, match="last message"):
        video_messages([{"role": "assistant", "content": []}], [0.0], "")


def test_incremental_text_never_splits_a_character():
    data = "héllo".encode()
    inc = IncrementalText(lambda ids: bytes(ids).decode(errors="replace"))
    pieces = [inc.push([b]) for b in data]
    assert "".join(pieces) + inc.finish() == "héllo"
    assert "\ufffd" not in "".join(pieces)


def test_control_characters_are_left_out():
    inc = IncrementalText(lambda ids: bytes(ids).decode(errors="replace"))
    pieces = [inc.push([b]) for b in b"a\x00b\x07\nc\td\x7f"]
    assert "".join(pieces) + inc.finish() == "ab\nc\td"
