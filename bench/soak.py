"""Soak: several voice sessions talking for minutes; latency per minute, memory per process.

    rtmedia bench soak [--sessions 3] [--minutes 10] [--url WS_URL]

Each session takes turns back to back on one connection (its history grows as a
real conversation's does): a spoken question at real-time pace, the reply
played out, the next question. Printed per minute: turns, median and p95 end of
speech -> first reply audio, mean reply length; and the resident memory of the
media server, tritonserver and every python-backend stub, sampled every 15 s
(the RSS of processes is read from /proc; only with the local stack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.agent import QUESTIONS, last_voiced, pct, voice_client
from bench.stack import api_key, local_stack
from pipelines.speech import espeak_speech
from streaming.client import pcm_from_delta

RATE = 24000


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_tree(pids: dict[str, int]) -> dict[str, int]:
    """The named processes plus tritonserver's python-backend stubs, named by model (a
    model's second instance as ``stub:NAME#2``, in pid order)."""
    out = dict(pids)
    triton = pids.get("tritonserver")
    if triton is None:
        return out
    procs = sorted((p for p in Path("/proc").iterdir() if p.name.isdigit()),
                   key=lambda p: int(p.name))
    for proc in procs:
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != triton:
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        model = next((a.decode() for a in args if a.endswith(b"model.py")), "")
        base = f"stub:{Path(model).parent.parent.name if model else proc.name}"
        name, n = base, 1
        while name in out:  # the model's next instance
            n += 1
            name = f"{base}#{n}"
        out[name] = int(proc.name)
    return out


async def session_loop(url: str, questions: list[np.ndarray], until: float,
                       turns: list[dict]) -> None:
    client = await voice_client(url, RATE)
    try:
        i = 0
        while time.monotonic() < until:
            q = questions[i % len(questions)]
            i += 1
            lead = np.zeros(int(0.3 * RATE), np.float32)
            t0 = time.monotonic()
            speech_end = t0 + (lead.size + last_voiced(q)) / RATE
            sender = asyncio.create_task(client.stream_audio(
                np.concatenate([lead, q, np.zeros(RATE * 30, np.float32)]), RATE, pace=1.0))
            first, audio_s, status = None, 0.0, "timeout"
            seen: list[str] = []
            try:
                async for ev in client.iter_events(timeout=60):
                    seen.append(ev.type)
                    if ev.type == "response.output_audio.delta":
                        first = first or ev.t
                        audio_s += pcm_from_delta(ev.data).size / RATE
                    elif ev.type == "response.done":
                        status = ev.data["response"]["status"]
                        break
                    elif ev.type == "connection.closed":
                        return
            except TimeoutError:
                print(f"turn {i}: no response.done within 60 s; events: "
                      f"{[t for t in seen if not t.endswith('.delta')][-12:]}", file=sys.stderr)
            # the last deltas are up to 0.5 s ahead of playback: let them play
            await asyncio.sleep(0.6)
            sender.cancel()
            turns.append({"t": speech_end, "latency": None if first is None
                          else first - speech_end, "audio_s": audio_s, "status": status})
    finally:
        await client.close()


def stage_totals(http: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum, count) of the server's per-turn latency histogram."""
    req = urllib.request.Request(http + "/metrics")
    if api_key():
        req.add_header("Authorization", f"Bearer {api_key()}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for part, idx in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("rtmedia_turn_latency_seconds" + part):
                stage = line.split('stage="')[1].split('"')[0]
                out.setdefault(stage, [0.0, 0.0])[idx] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


async def sample_stages(http: str, start: float, minutes: int, rows: list[dict]) -> None:
    """Mean server-side latency per stage in each minute (from /metrics)."""
    prev = await asyncio.to_thread(stage_totals, http)
    for m in range(minutes):
        await asyncio.sleep(max(0.0, start + 60 * (m + 1) - time.monotonic()))
        now = await asyncio.to_thread(stage_totals, http)
        rows.append({stage: round((now[stage][0] - prev.get(stage, (0, 0))[0]) * 1000 /
                                  max(1.0, now[stage][1] - prev.get(stage, (0, 0))[1]))
                     for stage in now})
        prev = now


async def sample_memory(pids: dict[str, int], until: float, samples: list[dict]) -> None:
    while time.monotonic() < until:
        tree = process_tree(pids)
        samples.append({"t": time.monotonic(),
                        **{name: rss_mb(pid) for name, pid in tree.items()}})
        await asyncio.sleep(15)


async def run(url: str, args, pids: dict[str, int]) -> dict:
    http = url.replace("ws://", "http://").replace("wss://", "https://").split("/v1/")[0]
    questions = [espeak_speech(q, rate=RATE) for q in QUESTIONS]
    start = time.monotonic()
    until = start + args.minutes * 60
    turns: list[dict] = []
    memory: list[dict] = []
    tasks = [asyncio.create_task(session_loop(url, questions, until, turns))
             for _ in range(args.sessions)]
    if pids:
        tasks.append(asyncio.create_task(sample_memory(pids, until, memory)))
    stages: list[dict] = []
    tasks.append(asyncio.create_task(sample_stages(http, start, args.minutes, stages)))
    await asyncio.gather(*tasks)
    minutes = []
    for m in range(args.minutes):
        rows = [t for t in turns if start + 60 * m <= t["t"] < start + 60 * (m + 1)]
        lat = [t["latency"] for t in rows if t["latency"] is not None]
        minutes.append({
            "minute": m + 1, "turns": len(rows),
            "failed": sum(t["status"] != "completed" for t in rows),
            "median_ms": round(statistics.median(lat) * 1000) if lat else None,
            "p95_ms": round(pct(lat, 95) * 1000) if lat else None,
            "reply_audio_s": round(statistics.mean(t["audio_s"] for t in rows), 1)
            if rows else None,
            "server_mean_ms": stages[m] if m < len(stages) else {}})
    result: dict = {"sessions": args.sessions, "minutes": minutes}
    if memory:
        first = next((s for s in memory if s["t"] >= start + 60), memory[0])
        # halfway: growth in the second half tells a leak from a warm-up (prompt states
        # and buffers grow until histories reach their cap in the first minutes)
        half = next((s for s in memory if s["t"] >= start + args.minutes * 30), first)
        last = memory[-1]
        result["rss_mb"] = {name: {"after_1_min": round(first.get(name) or 0),
                                   "halfway": round(half.get(name) or 0),
                                   "end": round(last.get(name) or 0)}
                            for name in last if name != "t"}
    first_med, last_med = minutes[0]["median_ms"], minutes[-1]["median_ms"]
    if first_med and last_med:
        result["last_over_first_minute"] = round(last_med / first_med, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtmedia bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="media server ws://HOST:PORT/v1/realtime (default: start "
                                 "Triton and the server locally)")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.url:
        result = asyncio.run(run(args.url, args, {}))
    else:
        pids: dict[str, int] = {}
        with local_stack(processes=pids) as http:
            url = http.replace("http://", "ws://") + "/v1/realtime"
            result = asyncio.run(run(url, args, pids))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.sessions} sessions, {args.minutes} min")
    print("minute  turns  failed  median_ms  p95_ms  reply_audio_s  server mean per stage (ms)")
    for m in result["minutes"]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(m["server_mean_ms"].items()))
        print(f"{m['minute']:>6}  {m['turns']:>5}  {m['failed']:>6}  {m['median_ms']!s:>9}  "
              f"{m['p95_ms']!s:>6}  {m['reply_audio_s']!s:>13}  {stages}")
    if "last_over_first_minute" in result:
        print(f"last minute / first minute median: {result['last_over_first_minute']}")
    for name, v in result.get("rss_mb", {}).items():
        growth = (v["end"] / v["after_1_min"] - 1) * 100 if v["after_1_min"] else 0
        second = (v["end"] / v["halfway"] - 1) * 100 if v["halfway"] else 0
        print(f"RSS {name}: {v['after_1_min']} MB after 1 min -> {v['halfway']} MB halfway "
              f"-> {v['end']} MB ({growth:+.0f} %; second half {second:+.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
