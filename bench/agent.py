"""End-to-end benchmark of the media server (voice agent and captions) over WebSocket.

    rtmedia bench agent [--turns N] [--captions N] [--max-sessions K] [--url WS_URL]

Without --url it starts a local Triton and the media server (as a separate
process, like production) and stops them afterwards. Audio is streamed at real
time pace, as a microphone would. Figures:
  (a) end of user speech (the last voiced sample sent) -> first reply audio at the client
  (b) caption lag: a word's end time in the audio -> the first partial caption holding it
  (c) the server's own processing time per inbound audio message (from /metrics)
  (d) concurrent caption sessions held at real-time pace before the lag grows
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request

import numpy as np

from bench.stack import api_key, local_stack
from pipelines.speech import espeak_speech
from pipelines.text import words
from streaming.client import RealtimeClient

QUESTIONS = ["What is the capital of France?", "How do I make a cup of tea?",
             "Can you recommend a good book?", "What time does the store open?",
             "Tell me something about the moon."]
CAPTION_TEXT = ("Streaming captions should follow the speaker closely, word by word, so "
                "that people who read them never fall behind the conversation.")


def last_voiced(audio: np.ndarray, level: float = 0.02) -> int:
    """Index just after the last loud sample: espeak-ng ends its speech with ~350 ms of
    silence, which must not count as speech."""
    loud = np.nonzero(np.abs(audio) > level)[0]
    return int(loud[-1]) + 1 if loud.size else audio.size


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def summary(xs: list[float]) -> dict:
    return {"median_ms": round(statistics.median(xs) * 1000, 1) if xs else None,
            "p95_ms": round(pct(xs, 95) * 1000, 1) if xs else None, "n": len(xs)}


async def voice_client(url: str, rate: int) -> RealtimeClient:
    """A connected voice-agent session with short answers and server VAD."""
    client = await RealtimeClient(url, api_key()).connect()
    await client.wait_for("session.created")
    await client.update({"type": "realtime", "instructions": "Answer in one short sentence.",
                         "audio": {"input": {
                             "format": {"type": "audio/pcm", "rate": rate},
                             "turn_detection": {"type": "server_vad",
                                                "silence_duration_ms": 400}}}})
    return client


async def agent_turn(url: str, question: np.ndarray, rate: int) -> float | None:
    client = await voice_client(url, rate)
    try:
        # 300 ms of lead-in silence, the question, then silence as a microphone would
        lead = np.zeros(int(0.3 * rate), np.float32)
        tail = np.zeros(int(2.0 * rate), np.float32)
        t_start = time.monotonic()
        speech_end = t_start + (lead.size + last_voiced(question)) / rate
        sender = asyncio.create_task(client.stream_audio(
            np.concatenate([lead, question, tail]), rate, pace=1.0))
        first = None
        async for ev in client.iter_events(timeout=30):
            if ev.type == "response.output_audio.delta" and first is None:
                first = ev.t
            if ev.type in ("response.done", "error"):
                break
        sender.cancel()
        return None if first is None else first - speech_end
    finally:
        await client.close()


async def caption_run(url: str, audio: np.ndarray, rate: int = 16000) -> dict:
    """Stream at real-time pace; lag of each word from its end in the audio to the
    first partial that holds it, and lag of the final after the speech ended."""
    client = await RealtimeClient(url, api_key()).connect(transcription=True)
    try:
        await client.wait_for("session.created")
        await client.update({"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": rate},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        lead = int(0.3 * rate)
        padded = np.concatenate([np.zeros(lead, np.float32), audio,
                                 np.zeros(int(1.5 * rate), np.float32)])
        t0 = time.monotonic()
        sender = asyncio.create_task(client.stream_audio(padded, rate, pace=1.0))
        partials: list[tuple[float, int]] = []
        final = None
        async for ev in client.iter_events(timeout=60):
            if ev.type == "conversation.item.input_audio_transcription.delta":
                partials.append((ev.t, len(words(ev.data.get("transcript", "")))))
            elif ev.type == "conversation.item.input_audio_transcription.completed":
                final = ev
                break
            elif ev.type == "error":
                break
        sender.cancel()
    finally:
        await client.close()
    lags = []
    if final is not None:
        for k, w in enumerate(final.data.get("words", []), start=1):
            word_end = t0 + lead / rate + w["end"]
            seen = next((t for t, n in partials if n >= k and t >= word_end), None)
            lags.append((seen or final.t) - word_end)
    speech_end = t0 + (lead + last_voiced(audio)) / rate
    return {"word_lags": lags,
            "final_lag": (final.t - speech_end) if final is not None else None}


def histogram_quantiles(metrics_text: str, name: str, qs=(0.5, 0.99)) -> dict:
    """Quantiles from a Prometheus histogram by linear interpolation inside buckets."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return {}
    total = buckets[-1][1]
    out = {}
    for q in qs:
        target, prev_le, prev_c = q * total, 0.0, 0.0
        for le, c in buckets:
            if c >= target:
                frac = 0 if c == prev_c else (target - prev_c) / (c - prev_c)
                value = le if le == float("inf") else prev_le + frac * (le - prev_le)
                out[f"p{int(q * 100)}_ms"] = round(value * 1000, 3)
                break
            prev_le, prev_c = le, c
    out["count"] = int(total)
    return out


async def run(url: str, http: str, args) -> dict:
    results: dict = {}
    rate = 24000
    lat = []
    for i in range(args.turns):
        q = espeak_speech(QUESTIONS[i % len(QUESTIONS)], rate=rate)
        r = await agent_turn(url, q, rate)
        if r is not None:
            lat.append(r)
    results["speech_end_to_first_audio"] = summary(lat)

    audio = espeak_speech(CAPTION_TEXT)
    word_lags, final_lags = [], []
    for _ in range(args.captions):
        r = await caption_run(url, audio)
        word_lags += r["word_lags"]
        if r["final_lag"] is not None:
            final_lags.append(r["final_lag"])
    results["caption_word_lag"] = summary(word_lags)
    results["caption_final_after_speech_end"] = summary(final_lags)

    text = await asyncio.to_thread(_fetch, http + "/metrics")
    results["server_processing_per_audio_message"] = histogram_quantiles(
        text, "rtmedia_inbound_audio_processing_seconds")

    concurrency = []
    for k in args.sessions:
        runs = await asyncio.gather(*[caption_run(url, audio) for _ in range(k)])
        lags = [x for r in runs for x in r["word_lags"]]
        finals = [r["final_lag"] for r in runs if r["final_lag"] is not None]
        row = {"sessions": k, "word_lag": summary(lags),
               "final_lag": summary(finals), "completed": len(finals)}
        concurrency.append(row)
        print(f"  {k} concurrent caption sessions: word lag median "
              f"{row['word_lag']['median_ms']} ms, final lag median "
              f"{row['final_lag']['median_ms']} ms", file=sys.stderr)
        if not realtime(row, args.max_lag_ms):
            break
    results["concurrent_captions"] = concurrency
    held = [r["sessions"] for r in concurrency if realtime(r, args.max_lag_ms)]
    results["max_realtime_caption_sessions"] = max(held) if held else 0
    return results


def realtime(row: dict, max_lag_ms: float) -> bool:
    """Every session finished and both the word lag and the final lag stay bounded."""
    return (row["completed"] == row["sessions"]
            and (row["word_lag"]["median_ms"] or 1e9) <= max_lag_ms
            and (row["final_lag"]["median_ms"] or 1e9) <= max_lag_ms)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url) as resp:
        return resp.read().decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtmedia bench agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="media server ws://HOST:PORT/v1/realtime (default: start "
                                 "Triton and the server locally)")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--captions", type=int, default=5)
    p.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 6, 8, 12])
    p.add_argument("--max-lag-ms", type=float, default=1000.0,
                   help="median word or final caption lag above which a concurrency "
                        "level is not real time")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if args.url:
        http = args.url.replace("ws://", "http://").replace("wss://", "https://")
        results = asyncio.run(run(args.url, http.split("/v1/")[0], args))
    else:
        with local_stack() as http:
            url = http.replace("http://", "ws://") + "/v1/realtime"
            results = asyncio.run(run(url, http, args))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for key, value in results.items():
        print(f"{key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
