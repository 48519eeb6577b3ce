"""Unit tier: the LLM model's function-calling text handling (common/llm_text.py).

What the model writes is split into speech and calls here, and the history's calls
and results are rendered for chat templates with and without tool support.
"""

from __future__ import annotations

import json

import pytest
from rtmedia_models_common.llm_text import (
    ToolCallParser,
    check_tool_choice,
    forced_call_schema,
    parse_messages,
    parse_tools,
    tool_messages,
)

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}}}}]


def split(*pieces: str) -> tuple[str, str, list[dict]]:
    """(text streamed, text left at the end, calls)"""
    p = ToolCallParser()
    streamed = "".join(p.push(x) for x in pieces)
    rest, calls = p.finish()
    return streamed, rest, calls


def test_tagged_call_after_text_is_cut_out_across_pieces():
    streamed, rest, calls = split("Let me", " check. <to", 'ol_call>\n{"name": "get_weather"',
                                  ', "arguments": {"city": "Paris"}}\n</tool_', "call>")
    assert streamed == "Let me check. " and rest == ""
    assert calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_bare_json_calls_as_qwen_writes_them_once_its_tags_are_detokenized_away():
    streamed, rest, calls = split('\n{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                                  '\n{"name": "get_time", "arguments": {}}')
    assert streamed == rest == ""
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}


def test_a_parser_that_drops_calls_still_keeps_them_out_of_speech():
    p = ToolCallParser(keep_calls=False)
    streamed = p.push('It is sunny. {"name": "get_weather", "arguments": {}}')
    assert (streamed, p.finish()) == ("It is sunny. ", ("", []))


def test_a_call_in_doubled_braces_is_read():
    _, _, calls = split('{{"name": "get_time", "arguments": {"city": "Pune"}}}')
    assert calls == [{"name": "get_time", "arguments": '{"city": "Pune"}'}]


def test_fenced_call_and_arguments_given_as_a_string():
    _, rest, calls = split('```json\n{"name": "get_time", "arguments": "{}"}\n```')
    assert rest == "" and calls == [{"name": "get_time", "arguments": "{}"}]


@pytest.mark.parametrize("pieces", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city"',),  # stopped inside
    ('{"name": "get_weather", "arguments": {city: Paris}}',),  # not JSON
])
def test_a_call_written_badly_is_reported_not_spoken(pieces):
    streamed, rest, calls = split(*pieces)
    assert streamed == rest == ""
    [call] = calls
    assert call["name"] == "get_weather" and call["error"].startswith("not JSON")


def test_plain_text_with_markup_or_braces_is_spoken_whole():
    streamed, rest, calls = split("Hello", " <b>there</b>, 3 < 4.")
    assert streamed + rest == "Hello <b>there</b>, 3 < 4." and calls == []
    streamed, rest, calls = split("Use {braces} like", " this.")
    assert streamed == "Use " and rest == "{braces} like this." and calls == []


def test_whitespace_around_calls_makes_no_message():
    streamed, rest, _ = split("\n", "<tool_call>\n{\"name\": \"get_time\"}\n</tool_call>\n")
    assert streamed == rest == ""


def test_history_for_a_template_that_renders_tools():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "w?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Pune"}'}}]},
            {"role": "tool", "tool_call_id": "c", "content": "31 C"}]
    parse_messages(json.dumps(msgs), 10_000)  # the request check accepts them
    out, tools = tool_messages(msgs, TOOLS, native=True)
    assert tools == TOOLS
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Pune"}
    assert out[3]["role"] == "tool"
    out, tools = tool_messages(msgs, TOOLS, native=False)
    assert tools is None
    assert "<tools>" in out[0]["content"] and '"get_weather"' in out[0]["content"]
    assert out[2] == {"role": "assistant", "content":
                      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune"}}'
                      "\n</tool_call>"}
    assert out[3] == {"role": "user", "content": "<tool_response>\n31 C\n</tool_response>"}


def test_request_checks():
    assert parse_tools(b"", 100) == []
    with pytest.raises(ValueError, match="TOOLS must be"):
        parse_tools(b'[{"name": "x"}]', 100)
    with pytest.raises(ValueError, match="maximum"):
        parse_tools(b"[" + b" " * 200 + b"]", 100)
    assert check_tool_choice("function:get_time", TOOLS) == "function:get_time"
    with pytest.raises(ValueError, match="TOOL_CHOICE"):
        check_tool_choice("function:nope", TOOLS)
    with pytest.raises(ValueError, match="MESSAGES must be"):
        parse_messages(json.dumps([{"role": "assistant", "content": "",
                                    "tool_calls": [{"function": {"name": 3}}]}]), 1000)


def test_forced_call_schemas():
    assert forced_call_schema(TOOLS, "auto") is None
    one = forced_call_schema(TOOLS, "function:get_weather")
    assert one["properties"]["name"] == {"const": "get_weather"}
    assert one["properties"]["arguments"]["required"] == ["city"]
    assert len(forced_call_schema(TOOLS, "required")["anyOf"]) == 2
