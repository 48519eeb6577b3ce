"""Unit tier: function calling over the Realtime protocol, on scripted fakes.

The FakeLLM is scripted to call tools; the session must turn the calls into
function_call items and events as the OpenAI Realtime API does, take the client's
function_call_output back into the history, report calls the model wrote badly,
and stay interruptible throughout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.conversation import Conversation
from pipelines.tools import InvalidToolCall, Tool, check_call, schema_errors
from tests.fakes import settle, silence, speech
from tests.test_protocol import Harness, until

WEATHER = {"type": "function", "name": "get_weather",
           "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}
TIME = {"type": "function", "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}


async def tool_session(*calls: list[dict], tools=(WEATHER,), **session) -> Harness:
    h = await Harness(reply="It is sunny and twenty degrees in Paris.").start()
    h.services.llm.tool_calls = [list(c) for c in calls]
    await h.send({"type": "session.update", "session": {"tools": list(tools), **session}})
    return h


def events_of(h: Harness, type_: str, start: int = 0) -> list[dict]:
    return [e for e in h.events[start:] if e["type"] == type_]


async def test_session_update_declares_tools_and_echoes_them():
    h = await tool_session(tool_choice="required")
    s = h.events[-1]["session"]
    assert h.events[-1]["type"] == "session.updated"
    assert s["tools"] == [WEATHER] and s["tool_choice"] == "required"
    await h.send({"type": "session.update", "session": {
        "tool_choice": {"type": "function", "name": "get_weather"}}})
    assert h.events[-1]["session"]["tool_choice"] == {"type": "function",
                                                      "name": "get_weather"}
    await h.close()


@pytest.mark.parametrize("session, code, param", [
    ({"tools": {"name": "x"}}, "invalid_tools", "session.tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "invalid_tools", "session.tools[0].type"),
    ({"tools": [{"type": "function", "name": "bad name"}]}, "invalid_tools",
     "session.tools[0].name"),
    ({"tools": [WEATHER, WEATHER]}, "invalid_tools", "session.tools[1].name"),
    ({"tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "invalid_tools",
     "session.tools[0].parameters"),
    ({"tool_choice": "sometimes"}, "invalid_tool_choice", "session.tool_choice"),
    ({"tool_choice": {"type": "function", "name": "get_time"}}, "invalid_tool_choice",
     "session.tool_choice"),
])
async def test_bad_tools_are_refused_with_the_field(session, code, param):
    h = await tool_session()
    await h.send({"type": "session.update", "session": session})
    err = h.events[-1]
    assert err["type"] == "error" and err["error"]["code"] == code
    assert err["error"]["param"] == param
    assert h.session.agent.config.tools[0].name == "get_weather"  # nothing applied
    await h.close()


async def test_a_spoken_question_yields_a_function_call_then_the_answer_is_spoken():
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    h = await tool_session([call])
    await h.talk(np.concatenate([speech(1.0), silence(0.6)]))
    await until(h, "response.done")
    tools, choice = h.services.llm.tool_requests[-1]
    assert choice == "auto" and tools[0]["function"]["name"] == "get_weather"
    assert tools[0]["function"]["parameters"] == WEATHER["parameters"]

    done = h.first("response.done")["response"]
    assert done["status"] == "completed"
    [item] = done["output"]
    assert item["type"] == "function_call" and item["name"] == "get_weather"
    assert json.loads(item["arguments"]) == {"city": "Paris"}
    call_id = item["call_id"]
    assert call_id.startswith("call_")
    kinds = h.types()[h.types().index("response.created"):]
    assert kinds == ["response.created", "response.output_item.added",
                     "conversation.item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.done"]
    args_done = h.first("response.function_call_arguments.done")
    assert args_done["call_id"] == call_id and args_done["item_id"] == item["id"]
    assert args_done["arguments"] == item["arguments"]
    assert h.first("response.function_call_arguments.delta")["delta"] == item["arguments"]
    assert h.services.tts.texts == []  # nothing spoken yet

    mark = len(h.events)
    await h.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call_id,
        "output": json.dumps({"temperature_c": 20, "sky": "sunny"})}})
    added = h.events[-1]
    assert added["type"] == "conversation.item.added"
    assert added["item"]["type"] == "function_call_output"
    assert added["item"]["call_id"] == call_id
    await h.send({"type": "response.create"})
    await until(h, "response.output_audio.delta")
    await h.clock.advance(5)
    messages = h.services.llm.requests[-1]
    assert messages[-2] == {"role": "assistant", "content": "", "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": "get_weather", "arguments": item["arguments"]}}]}
    assert messages[-1] == {"role": "tool", "tool_call_id": call_id,
                            "content": '{"temperature_c": 20, "sky": "sunny"}'}
    answer = events_of(h, "response.done", mark)[-1]["response"]
    assert answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["transcript"].startswith("It is sunny")
    assert h.services.tts.texts  # the answer was spoken
    await h.close()


async def test_parallel_calls_come_as_separate_items():
    h = await tool_session([{"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                            {"name": "get_time", "arguments": '{"city": "Oslo"}'}],
                           tools=(WEATHER, TIME))
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    output = h.first("response.done")["response"]["output"]
    assert [o["name"] for o in output] == ["get_weather", "get_time"]
    assert len({o["call_id"] for o in output}) == 2
    done = events_of(h, "response.function_call_arguments.done")
    assert [d["output_index"] for d in done] == [0, 1]
    # both results, then one answer that reads both
    for o in output:
        await h.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": o["call_id"], "output": "ok"}})
    await h.send({"type": "response.create"})
    await until(h, "response.output_audio.delta")
    messages = h.services.llm.requests[-1]
    assert len(messages[-3]["tool_calls"]) == 2
    assert [m["role"] for m in messages[-2:]] == ["tool", "tool"]
    await h.close()


async def test_text_before_a_call_is_a_message_item_then_the_call():
    h = await tool_session([{"name": "get_weather", "arguments": '{"city": "Rome"}'}])
    h.services.llm.call_text = "Let me check."
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    output = h.first("response.done")["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert output[0]["content"][0]["transcript"] == "Let me check."
    assert events_of(h, "response.function_call_arguments.done")[0]["output_index"] == 1
    assert h.services.tts.texts == ["Let me check."]
    messages = h.session.agent.conversation.messages("sys")
    assert messages[-1]["content"] == "Let me check." and messages[-1]["tool_calls"]
    await h.close()


BAD_CALLS = [
    ({"name": "get_weather", "arguments": "{city: Paris"}, "not JSON"),
    ({"name": "get_weather", "arguments": '{"town": "Paris"}'}, "arguments.city is required"),
    ({"name": "get_weather", "arguments": '{"city": 7}'}, "arguments.city must be string"),
    ({"name": "launch_rocket", "arguments": "{}"}, "unknown function"),
    ({"name": "", "arguments": "", "error": "unterminated <tool_call>"}, "cannot be read"),
]


@pytest.mark.parametrize("call, fragment", BAD_CALLS)
async def test_a_reply_that_is_only_a_bad_call_is_answered_without_tools(call, fragment):
    h = await tool_session([call])
    await h.send({"type": "response.create"})
    await until(h, "response.output_audio.delta")
    await h.clock.advance(5)
    done = h.first("response.done")["response"]
    assert done["status"] == "completed"
    assert [o["type"] for o in done["output"]] == ["message"]
    assert done["output"][0]["content"][0]["transcript"].startswith("It is sunny")
    err = h.first("error")["error"]
    assert err["code"] == "invalid_tool_call" and fragment in err["message"]
    first, again = h.services.llm.tool_requests
    assert first[0] is not None and again == (None, "auto")  # asked again, no tools
    assert all(i.type == "message" for i in h.session.agent.conversation.items)
    await h.close()


@pytest.mark.parametrize("call, fragment", BAD_CALLS[:2])
async def test_a_bad_call_after_spoken_text_fails_the_reply_not_the_session(call, fragment):
    h = await tool_session([call])
    h.services.llm.call_text = "Let me check."
    await h.send({"type": "response.create"})
    await until(h, "response.done")
    done = h.first("response.done")["response"]
    assert done["status"] == "failed"
    assert [o["type"] for o in done["output"]] == ["message"]  # the words were heard
    assert done["status_details"]["error"]["code"] == "invalid_tool_call"
    assert fragment in done["status_details"]["error"]["message"]
    err = h.first("error")["error"]
    assert err["code"] == "invalid_tool_call" and fragment in err["message"]
    assert len(h.services.llm.requests) == 1
    assert all(i.type == "message" for i in h.session.agent.conversation.items)
    # the session goes on: the next reply (no call scripted) is spoken
    mark = len(h.events)
    await h.send({"type": "response.create"})
    await until(h, "response.output_audio.delta")
    await h.clock.advance(5)
    assert events_of(h, "response.done", mark)[0]["response"]["status"] == "completed"
    await h.close()


async def test_barge_in_while_the_call_is_being_generated_cancels_it():
    h = await tool_session([{"name": "get_weather", "arguments": '{"city": "Paris"}'}])
    h.services.llm.call_s = 2.0
    await h.talk(np.concatenate([speech(1.0), silence(0.6)]))
    for _ in range(100):  # until the model is generating the call
        if h.session.agent.responding and h.services.llm.requests:
            break
        await h.clock.advance(0.02)
    await h.clock.advance(0.5)
    await h.talk(speech(0.3))  # the user speaks again before the call is out
    await until(h, "response.done")
    done = h.first("response.done")["response"]
    assert done["status"] == "cancelled"
    assert all(o["type"] == "message" for o in done["output"])
    assert "response.function_call_arguments.done" not in h.types()
    assert h.services.llm.cancelled == 1
    assert all(i.type == "message" for i in h.session.agent.conversation.items)
    await h.close()


async def test_while_a_call_is_pending_the_user_can_talk_and_get_a_reply():
    h = await tool_session([{"name": "get_weather", "arguments": '{"city": "Paris"}'}])
    await h.talk(np.concatenate([speech(1.0), silence(0.6)]))
    await until(h, "response.done")
    call_id = h.first("response.function_call_arguments.done")["call_id"]
    mark = len(h.events)
    await h.talk(np.concatenate([speech(1.0), silence(0.6)]))  # no output sent yet
    await until(h, "response.output_audio.delta")
    await h.clock.advance(5)
    assert events_of(h, "response.done", mark)[0]["response"]["status"] == "completed"
    messages = h.services.llm.requests[-1]
    assert messages[-2]["tool_calls"][0]["id"] == call_id  # the pending call is history
    await h.close()


async def test_response_create_overrides_tools_and_choice():
    h = await tool_session([{"name": "get_time", "arguments": '{"city": "Lima"}'}])
    await h.send({"type": "response.create", "response": {
        "tools": [TIME], "tool_choice": {"type": "function", "name": "get_time"}}})
    await until(h, "response.done")
    tools, choice = h.services.llm.tool_requests[-1]
    assert [t["function"]["name"] for t in tools] == ["get_time"]
    assert choice == "function:get_time"
    assert h.first("response.done")["response"]["output"][0]["name"] == "get_time"
    # tool_choice none: the model gets no tools at all
    await h.send({"type": "response.create", "response": {"tool_choice": "none"}})
    await until(h, "response.output_audio.delta")
    assert h.services.llm.tool_requests[-1] == (None, "auto")
    await h.clock.advance(5)
    # a named choice that is not among the tools is refused
    await h.send({"type": "response.create", "response": {
        "tool_choice": {"type": "function", "name": "get_time"}}})
    assert h.events[-1]["error"]["code"] == "invalid_tool_choice"
    await h.close()


async def test_function_items_from_the_client_are_validated():
    h = await tool_session()
    bad = [
        ({"type": "function_call_output", "output": "x"}, "item.call_id"),
        ({"type": "function_call_output", "call_id": "c1"}, "item.output"),
        ({"type": "function_call_output", "call_id": "c1", "output": 5}, "item.output"),
        ({"type": "function_call", "call_id": "c1"}, "item.name"),
    ]
    for item, param in bad:
        await h.send({"type": "conversation.item.create", "item": item})
        err = h.events[-1]
        assert err["type"] == "error" and err["error"]["code"] == "invalid_item", item
        assert err["error"]["param"] == param
    await h.send({"type": "conversation.item.create", "item": {
        "type": "function_call", "call_id": "c1", "name": "get_weather",
        "arguments": '{"city": "Pune"}'}})
    await h.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "c1", "output": "31 C"}})
    await settle()
    messages = h.session.agent.conversation.messages("sys")
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[-1] == {"role": "tool", "tool_call_id": "c1", "content": "31 C"}
    await h.close()


def test_check_call_and_schema_errors():
    tool = Tool("get_weather", "", WEATHER["parameters"])
    ok = check_call("get_weather", '{"city":"Paris", "unit":"celsius"}', (tool,))
    assert json.loads(ok.arguments) == {"city": "Paris", "unit": "celsius"}
    with pytest.raises(InvalidToolCall, match="must be one of"):
        check_call("get_weather", '{"city":"Paris", "unit":"kelvin"}', (tool,))
    assert check_call("get_weather", "", (Tool("get_weather"),)).arguments == "{}"
    schema = {"type": "object", "properties": {"n": {"type": "integer"},
                                               "xs": {"type": "array",
                                                      "items": {"type": "number"}}},
              "additionalProperties": False}
    assert schema_errors({"n": True}, schema, "a") == ["a.n must be integer"]
    assert schema_errors({"xs": [1, "2"]}, schema, "a") == ["a.xs[1] must be number"]
    assert schema_errors({"z": 1}, schema, "a") == ["a.z is not a declared parameter"]
    assert schema_errors({"n": 3, "xs": [1.5]}, schema, "a") == []


def test_history_renders_calls_and_results_as_chat_messages():
    c = Conversation()
    c.add("i1", "user", "weather?")
    c.add("i2", "assistant", "", type="function_call", call_id="c1", name="f",
          arguments="{}")
    c.add("i3", "assistant", "", type="function_call", call_id="c2", name="g",
          arguments="{}")
    c.add("i4", "tool", "r1", type="function_call_output", call_id="c1")
    msgs = c.messages("sys")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert [t["id"] for t in msgs[2]["tool_calls"]] == ["c1", "c2"]
