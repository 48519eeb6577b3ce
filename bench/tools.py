"""Function calling and the LLM choices: quality and speed on a fixed question set.

    rtmedia bench tools [--models llm,llm_qwen,llm_qwen15] [--round-trips MODELS] [--json]

Starts its own tritonserver with the chat models whose weights are in the store
(install the optional ones with `rtmedia models install-defaults --only
agent/qwen2.5-coder-0.5b agent/qwen2.5-coder-1.5b`). Figures, per model:
  answers     fraction of fixed factual questions answered right (keyword match)
  tool calls  fraction of requests handled right: the right function with the
              right key arguments, or no call when none is needed
  first token / call   median time from request to the first spoken token, or to the
              complete call (the call is said whole)
  tokens/s    generation speed on the answers
Then, for each model given with --round-trips, a spoken turn with a tool round trip
through the media server (espeak question, server VAD): end of speech -> the call
(response.function_call_arguments.done), result sent at once -> first answer audio,
and end of speech -> first answer audio in all; and for questions that need no tool
(tools declared all the same), end of speech -> first audio. A first turn warms the
stack up and is not counted. `--models ''` skips the quality part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.agent import last_voiced
from bench.stack import api_key, free_port, local_stack
from pipelines.services import chat
from pipelines.speech import espeak_speech
from pipelines.text import words
from pipelines.triton_client import TritonClient
from streaming.client import RealtimeClient

SYSTEM = ("You are a voice assistant. Use the tools when they help. Answer in one short "
          "sentence of plain spoken English.")
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
     "parameters": {"type": "object", "properties": {
         "city": {"type": "string"},
         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
         "required": ["city"]}},
    {"type": "function", "name": "get_time", "description": "Current local time in a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}},
    {"type": "function", "name": "set_timer", "description": "Start a countdown timer.",
     "parameters": {"type": "object", "properties": {"minutes": {"type": "number"}},
                    "required": ["minutes"]}},
]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
              for t in TOOLS]
# (question, accepted answer words or phrases, matched on whole words)
FACTS = [
    ("What is the capital of France?", {"paris"}),
    ("What is seven times eight?", {"56", "fifty six"}),
    ("How many days are there in a week?", {"7", "seven"}),
    ("Which planet is known as the red planet?", {"mars"}),
    ("At what temperature in Celsius does water boil at sea level?", {"100", "hundred"}),
    ("How many legs does a spider have?", {"8", "eight"}),
    ("Who wrote Romeo and Juliet?", {"shakespeare"}),
    ("What colour is the sky on a clear day?", {"blue"}),
    ("What is fifteen plus twenty-seven?", {"42", "forty two"}),
    ("What is the largest ocean on Earth?", {"pacific"}),
    ("How many minutes are there in two hours?", {"120", "hundred twenty", "hundred and twenty"}),
    ("What is the chemical symbol for gold?", {"au"}),
    ("Which is heavier, a kilogram of iron or a kilogram of feathers?",
     {"same", "equal", "neither", "both"}),
    ("What is the capital of Australia?", {"canberra"}),
]
# (request, expected function or None, expected arguments: name -> accepted values)
CALLS = [
    ("What's the weather like in Paris?", "get_weather", {"city": {"paris"}}),
    ("Is it raining in London right now?", "get_weather", {"city": {"london"}}),
    ("How warm is it in Mumbai today, in fahrenheit?", "get_weather",
     {"city": {"mumbai"}}),
    ("What time is it in Tokyo?", "get_time", {"city": {"tokyo"}}),
    ("Tell me the current time in New York.", "get_time", {"city": {"new york", "nyc"}}),
    ("Set a timer for ten minutes.", "set_timer", {"minutes": {"10"}}),
    ("Please start a five minute timer.", "set_timer", {"minutes": {"5"}}),
    ("Tell me a short joke.", None, {}),
    ("What is the capital of Japan?", None, {}),
    ("Say hello to my friend Priya.", None, {}),
]
ROUND_TRIP = ["What is the weather in Paris today?", "What is the weather like in Rome?",
              "Tell me the weather in Berlin.", "How is the weather in Madrid today?"]
PLAIN = ["What is the capital of Japan?", "Tell me a fun fact about cats."]


def med(xs: list[float]) -> float | None:
    return round(statistics.median(xs) * 1000) if xs else None


async def one(client: TritonClient, model: str, question: str, tools: bool) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    t0 = time.monotonic()
    first = None
    text, calls, n = "", [], 0
    kw = {"tools": CHAT_TOOLS} if tools else {}
    async for tok in chat(client, messages, model=model, max_tokens=60, temperature=0.0,
                          seed=1, **kw):
        if tok.text:
            first = first or time.monotonic() - t0
            n += 1
        text += tok.text
        calls += tok.tool_calls
    total = time.monotonic() - t0
    return {"text": text, "calls": calls, "first": first, "total": total, "pieces": n}


def call_right(calls: list[dict], name: str | None, args: dict) -> bool:
    if name is None:
        return not calls
    if len(calls) != 1 or calls[0].get("name") != name or calls[0].get("error"):
        return False
    try:
        got = json.loads(calls[0]["arguments"])
    except ValueError:
        return False
    for key, accepted in args.items():
        value = str(got.get(key, "")).lower().removesuffix(".0")
        if not any(value == a or value.startswith(a) for a in accepted):
            return False
    return True


async def quality(grpc_url: str, model: str, log) -> dict:
    client = TritonClient(grpc_url)
    try:
        await one(client, model, "Hi.", False)  # warm up
        right, firsts, rates = 0, [], []
        for question, accepted in FACTS:
            r = await one(client, model, question, False)
            said = f" {' '.join(words(r['text']))} "
            ok = any(f" {a} " in said for a in accepted)
            right += ok
            if r["first"] is not None:
                firsts.append(r["first"])
                if r["pieces"] > 1 and r["total"] > r["first"]:
                    rates.append((r["pieces"] - 1) / (r["total"] - r["first"]))
            log(f"  {model} {'ok ' if ok else 'BAD'} {question} -> {r['text'][:80]!r}")
        good, call_times = 0, []
        for question, name, args in CALLS:
            r = await one(client, model, question, True)
            ok = call_right(r["calls"], name, args)
            good += ok
            if r["calls"]:
                call_times.append(r["total"])
            log(f"  {model} {'ok ' if ok else 'BAD'} {question} -> "
                f"{r['calls'] or r['text'][:60]!r}")
        return {"model": model, "answers": f"{right}/{len(FACTS)}",
                "tool_calls": f"{good}/{len(CALLS)}", "first_token_ms": med(firsts),
                "call_ms": med(call_times),
                "tokens_per_s": round(statistics.median(rates), 1) if rates else None}
    finally:
        await client.close()


async def round_trip(http: str, question: str, rate: int = 24000) -> dict | None:
    """One spoken turn: the call, the result at once, the answer's first audio."""
    url = http.replace("http", "ws", 1) + "/v1/realtime"
    client = await RealtimeClient(url, api_key()).connect()
    try:
        await client.wait_for("session.created")
        await client.update({"type": "realtime", "instructions": SYSTEM, "tools": TOOLS,
                             "temperature": 0.0, "audio": {"input": {
                                 "format": {"type": "audio/pcm", "rate": rate},
                                 "turn_detection": {"type": "server_vad",
                                                    "silence_duration_ms": 400}}}})
        audio = espeak_speech(question, rate=rate)
        lead = np.zeros(int(0.3 * rate), np.float32)
        t0 = time.monotonic()
        speech_end = t0 + (lead.size + last_voiced(audio)) / rate
        sender = asyncio.create_task(client.stream_audio(
            np.concatenate([lead, audio, np.zeros(int(2.0 * rate), np.float32)]), rate))
        call_at = result_at = first_audio = plain_audio = None
        ok = False
        async for ev in client.iter_events(timeout=120):
            if ev.type == "response.function_call_arguments.done" and call_at is None:
                call_at = ev.t
                ok = ev.data["name"] == "get_weather"
                result_at = time.monotonic()
                await client.send({"type": "conversation.item.create", "item": {
                    "type": "function_call_output", "call_id": ev.data["call_id"],
                    "output": json.dumps({"temperature_c": 14, "conditions": "cloudy"})}})
                await client.send({"type": "response.create"})
            elif ev.type == "response.output_audio.delta" and call_at is not None:
                first_audio = ev.t
                break
            elif ev.type == "response.output_audio.delta" and plain_audio is None:
                plain_audio = ev.t
            elif ev.type == "response.done" and call_at is None:
                break  # answered without calling
            elif ev.type == "error":
                print(f"  error: {ev.data.get('error')}", file=sys.stderr)
        sender.cancel()
    finally:
        await client.close()
    if call_at is None or first_audio is None:
        return {"plain": plain_audio - speech_end} if plain_audio is not None else None
    return {"call": call_at - speech_end, "result_to_audio": first_audio - result_at,
            "total": first_audio - speech_end, "right_function": ok}


def installed_models(models: list[str]) -> list[str]:
    from streaming.model_store import ModelStore
    from streaming.settings import Settings
    from streaming.triton_server import loadable_models

    ready, _ = loadable_models(ModelStore(Settings.from_env().models_dir))
    return [m for m in models if m in ready]


async def measure_quality(models: list[str], log) -> list[dict]:
    from streaming.settings import Settings
    from streaming.triton_server import TritonServer

    s = Settings.from_env().replace(
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        state_dir=Path(tempfile.mkdtemp(prefix="rtmedia-bench-tools-")))
    rows = []
    for model in models:  # one at a time: the figures do not share the CPU
        triton = TritonServer(s, models=[model], log_path=s.state_dir / "tritonserver.log")
        triton.start(wait_s=300)
        try:
            rows.append(await quality(triton.grpc_url, model, log))
        finally:
            triton.stop()
    return rows


def log(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llm,llm_qwen,llm_qwen15")
    ap.add_argument("--round-trips", default="llm_qwen",
                    help="models to run the spoken tool round trip with ('' for none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    models = installed_models([m for m in args.models.split(",") if m])
    results: dict = {"quality": asyncio.run(measure_quality(models, log)), "round_trip": {}}
    for model in installed_models([m for m in args.round_trips.split(",") if m]):
        os.environ["RTMEDIA_LLM_MODEL"] = model
        with local_stack() as http:
            asyncio.run(round_trip(http, PLAIN[0]))  # warm up (not counted)
            runs, plain, needless = [], [], 0
            for q in ROUND_TRIP + PLAIN:
                r = asyncio.run(round_trip(http, q))
                log(f"  round trip {model}: {q} -> {r}")
                if r is None:
                    continue
                if q in PLAIN:
                    if "plain" in r:
                        plain.append(r["plain"])
                    else:
                        needless += 1
                elif "call" in r:
                    runs.append(r)
        results["round_trip"][model] = {
            "tool_turns": f"{len(runs)}/{len(ROUND_TRIP)}",
            "right_function": sum(r["right_function"] for r in runs),
            "plain_turns_without_a_call": f"{len(plain)}/{len(PLAIN)}",
            "plain_speech_end_to_first_audio_ms": med(plain),
            "speech_end_to_call_ms": med([r["call"] for r in runs]),
            "result_to_first_audio_ms": med([r["result_to_audio"] for r in runs]),
            "speech_end_to_first_audio_ms": med([r["total"] for r in runs])}
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print("| model | answers right | tool calls right | first token ms | call ms | "
              "tokens/s |\n|---|---|---|---|---|---|")
        for r in results["quality"]:
            print(f"| {r['model']} | {r['answers']} | {r['tool_calls']} | "
                  f"{r['first_token_ms']} | {r['call_ms']} | {r['tokens_per_s']} |")
        for model, r in results["round_trip"].items():
            print(f"round trip {model}: {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
