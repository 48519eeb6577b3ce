"""Per-model benchmark over gRPC streaming against a running (or self-started) Triton.

    rtmedia bench models [--url HOST:PORT] [--runs N] [--json]

Without --url it starts the local tritonserver with the default models from the
store (AI_MODELS_DIR), measures, and stops it. Figures (medians over --runs):
- STT: real-time factor (processing time / audio time, chunks sent back to back)
  and the latency of the final transcript after the last chunk;
- TTS: time to first audio and real-time factor;
- LLM: time to first token and tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.stack import free_port
from pipelines.services import STTStream, chat, synthesize
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from pipelines.triton_client import TritonClient

STT_TEXT = ("Streaming speech recognition turns the words of a caller into text while "
            "they are still talking, and the final transcript arrives right after they stop.")
TTS_TEXT = ("Thanks for waiting. I found your booking for two nights, and the room is "
            "ready when you arrive. Is there anything else I can help with today?")
LLM_MESSAGES = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


async def bench_stt(client: TritonClient, runs: int, model: str, chunk_s: float) -> dict:
    audio = espeak_speech(STT_TEXT)
    duration = audio.size / 16000
    chunk = int(chunk_s * 16000)
    rtf, final_lat, wer = [], [], []
    for _ in range(runs):
        stt = STTStream(client, model=model)
        t0 = time.perf_counter()
        final = None
        for i in range(0, audio.size, chunk):
            last = i + chunk >= audio.size
            t_last = time.perf_counter()
            for t in await stt.push(audio[i:i + chunk], end=last):
                if t.final:
                    final = t
        done = time.perf_counter()
        await stt.close()
        rtf.append((done - t0) / duration)
        final_lat.append((done - t_last) * 1000)
        wer.append(word_error_rate(STT_TEXT, final.text if final else ""))
    return {"model": model, "audio_s": round(duration, 2), "chunk_s": chunk_s,
            "rtf_median": round(median(rtf), 3),
            "final_after_last_chunk_ms_median": round(median(final_lat), 1),
            "final_after_last_chunk_ms_p95": round(p95(final_lat), 1),
            "wer_median": round(median(wer), 3)}


async def bench_tts(client: TritonClient, runs: int, model: str) -> dict:
    ttfa, rtf = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        first, samples, rate = None, 0, 22050
        async for chunk in synthesize(client, TTS_TEXT, model=model):
            first = first or time.perf_counter() - t0
            samples += chunk.audio.size
            rate = chunk.sample_rate
        total = time.perf_counter() - t0
        ttfa.append(first * 1000)
        rtf.append(total / (samples / rate))
    return {"model": model, "first_audio_ms_median": round(median(ttfa), 1),
            "first_audio_ms_p95": round(p95(ttfa), 1), "rtf_median": round(median(rtf), 3)}


async def bench_llm(client: TritonClient, runs: int, model: str, tokens: int) -> dict:
    ttft, tps = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        first, n = None, 0
        gen = chat(client, LLM_MESSAGES, model=model, max_tokens=tokens, ignore_eos=True,
                   temperature=0.7)
        async with contextlib.aclosing(gen):
            async for tok in gen:
                if tok.text:
                    first = first or time.perf_counter()
                    n += 1
        end = time.perf_counter()
        ttft.append((first - t0) * 1000)
        tps.append((n - 1) / (end - first) if n > 1 else 0.0)
    return {"model": model, "first_token_ms_median": round(median(ttft), 1),
            "first_token_ms_p95": round(p95(ttft), 1),
            "tokens_per_s_median": round(median(tps), 1), "tokens": tokens}


async def run(url: str, args: argparse.Namespace) -> dict:
    client = TritonClient(url)
    try:
        results = {}
        if "stt" in args.only:
            results["stt"] = await bench_stt(client, args.runs, args.stt_model, args.chunk_s)
        if "tts" in args.only:
            results["tts"] = await bench_tts(client, args.runs, args.tts_model)
        if "llm" in args.only:
            results["llm"] = await bench_llm(client, args.runs, args.llm_model, args.tokens)
        return results
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtmedia bench models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="Triton gRPC HOST:PORT (default: start a local one)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", nargs="*", default=["stt", "tts", "llm"])
    p.add_argument("--stt-model", default="whisper")
    p.add_argument("--tts-model", default="piper")
    p.add_argument("--llm-model", default="llm")
    p.add_argument("--chunk-s", type=float, default=0.5)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--placement", default=None)
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args(argv)

    server = None
    url = args.url
    if not url:
        from streaming.settings import Settings
        from streaming.triton_server import TritonServer

        s = Settings.from_env()
        s = s.replace(triton_http_port=free_port(), triton_grpc_port=free_port(),
                      triton_metrics_port=free_port(), placement=args.placement,
                      state_dir=Path(tempfile.mkdtemp(prefix="rtmedia-bench-")))
        wanted = {"stt": args.stt_model, "tts": args.tts_model, "llm": args.llm_model}
        server = TritonServer(s, models=[wanted[k] for k in args.only],
                              log_path=s.state_dir / "tritonserver.log")
        print(f"starting tritonserver for {', '.join(server.models)} ...", file=sys.stderr)
        server.start(wait_s=300)
        url = server.grpc_url
    try:
        results = asyncio.run(run(url, args))
    finally:
        if server:
            server.stop()
    results["runs"] = args.runs
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for key in ("stt", "tts", "llm"):
        if key in results:
            fields = "  ".join(f"{k}={v}" for k, v in results[key].items())
            print(f"{key.upper():<4} {fields}")
    print(f"(medians over {args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
