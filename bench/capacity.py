"""Capacity: how many caption and voice-agent sessions one machine holds, and what
batching and stable-prefix commits buy.

    rtmedia bench capacity [--captions] [--agents] [--start N --step N --max N]
    rtmedia bench capacity --batch-gain [--streams 8]
    rtmedia bench capacity --long-stream [--minutes 5]
    rtmedia bench capacity --finals
    rtmedia bench capacity --tts [--tts-levels 1 2 4 8] [--tts-workers 1 2 4]
    rtmedia bench capacity --chain

The ramp (default) starts a local Triton and the media server (or uses --url) and
adds sessions streaming espeak-ng speech at real-time pace until the median caption
lag passes --max-lag-ms (captions) or the median end-of-speech -> first audio passes
--max-first-audio-ms (voice agent). Each level prints the sessions held, per-stage
latency (the server's metrics), CPU seconds per audio second (tritonserver and its
model stubs plus the media server, from /proc) and Triton's measured batch size
(nv_inference_request_success / nv_inference_exec_count per model).

--batch-gain and --long-stream run the streaming Whisper code in this process (no
Triton): audio seconds per CPU second for N concurrent caption streams batched vs
one at a time, and WER, lag and cost per second of a long caption stream with
stable-prefix commits vs decoding the whole open window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "The meeting will start at nine in the morning.",
    "Please bring the quarterly report and your laptop.",
    "We need to discuss the budget for next year.",
    "The new office is close to the railway station.",
    "Our team finished the project two weeks early.",
    "Customers asked for a simpler way to pay online.",
    "The weather should be sunny for most of the week.",
    "She explained the plan in clear and simple words.",
    "Every student received a copy of the new schedule.",
    "The library will stay open late on Thursday evenings.",
    "He ordered a large coffee and a slice of apple pie.",
    "The engineers tested the bridge before it opened.",
]
RATE = 16000


def _common():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "triton_models" / "common"))
    import whisper_stream

    return whisper_stream


DEVICE = "cpu"  # --device: where the in-process benches run Whisper


def load_whisper(models_dir: Path, weights: str = "stt/whisper-tiny.en", threads: int = 2):
    from faster_whisper import WhisperModel

    return WhisperModel(str(models_dir / weights), device=DEVICE,
                        compute_type="float16" if DEVICE == "cuda" else "int8",
                        cpu_threads=threads, local_files_only=True)


def _settings(ws, **kw):
    """The model's settings for this device (config.pbtxt: one 30 s group on a GPU)."""
    return ws.WhisperSettings(english_only=True, bucket_s=30.0 if DEVICE == "cuda" else 1.0,
                              encoder_rows=0 if DEVICE == "cuda" else 1,
                              **kw)


def speech_stream(seconds: float, gap_s: float = 0.3) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """espeak-ng sentences back to back with short pauses (no end of turn): the audio
    and each sentence's end time."""
    from pipelines.speech import espeak_speech

    voiced = [espeak_speech(s) for s in SENTENCES]
    gap = np.zeros(int(gap_s * RATE), np.float32)
    parts, ends, t, i = [], [], 0.0, 0
    while t < seconds:
        k = i % len(SENTENCES)
        parts += [voiced[k], gap]
        t += (voiced[k].size + gap.size) / RATE
        ends.append((t - gap_s, SENTENCES[k]))
        i += 1
    return np.concatenate(parts), ends


# -- a long caption stream: stable-prefix commits vs the whole open window ----------------
def run_stream(ws, model, audio: np.ndarray, ends: list, *, stable_s: float,
               chunk_s: float = 0.1) -> dict:
    """One caption stream fed chunk by chunk (no end of turn until the end). Time is
    simulated: a chunk is handled when it has arrived and the previous one is done,
    so lag = arrival + queueing + decode, with this machine's real decode times."""
    from pipelines.text import word_error_rate, words

    settings = _settings(ws, stable_commit=int(stable_s * RATE))
    tr = ws.StreamingTranscriber(ws.BatchedWhisper(model, settings), settings)
    step = int(chunk_s * RATE)
    clock, finals, shown = 0.0, "", []
    cpu_by_minute: dict[int, float] = {}
    for i in range(0, audio.size, step):
        piece = audio[i:i + step]
        arrive = (i + piece.size) / RATE
        c0, w0 = time.process_time(), time.perf_counter()
        text, final, _ = tr.handle(1, piece, start=i == 0, end=i + step >= audio.size,
                                   language="en")
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        clock = max(clock, arrive) + wall
        minute = int(arrive // 60)
        cpu_by_minute[minute] = cpu_by_minute.get(minute, 0.0) + cpu
        if final:
            finals = f"{finals} {text}".strip()
            current = finals
        elif text:
            current = f"{finals} {text}".strip()
        else:
            continue
        shown.append((clock, len(words(current))))
    reference, lags, total = "", [], 0
    for end_s, sentence in ends:
        if end_s > audio.size / RATE:
            break
        reference = f"{reference} {sentence}"
        total += len(words(sentence))
        seen = next((t for t, n in shown if n >= total - 1 and t >= end_s), None)
        if seen is not None:
            lags.append(seen - end_s)
    full = [m for m in cpu_by_minute if (m + 1) * 60 <= audio.size / RATE]
    return {
        "wer": round(word_error_rate(reference, finals), 3),
        "sentence_lag_median_ms": round(float(np.median(lags)) * 1000) if lags else None,
        "sentence_lag_p95_ms": round(float(np.percentile(lags, 95)) * 1000) if lags else None,
        "sentences_seen": f"{len(lags)}/{len(ends)}",
        "cpu_s_per_audio_s_first_minute": round(cpu_by_minute[full[0]] / 60, 4) if full else None,
        "cpu_s_per_audio_s_last_minute": round(cpu_by_minute[full[-1]] / 60, 4) if full else None,
        "cpu_s_per_audio_s": round(sum(cpu_by_minute.values()) / (audio.size / RATE), 4),
    }


def long_stream(models_dir: Path, minutes: float) -> dict:
    ws = _common()
    model = load_whisper(models_dir)
    audio, ends = speech_stream(minutes * 60)
    out = {"audio_s": round(audio.size / RATE, 1)}
    for name, stable_s in (("stable_prefix", 4.0), ("whole_window", 0.0)):
        out[name] = run_stream(ws, model, audio, ends, stable_s=stable_s)
        print(f"  {name}: {json.dumps(out[name])}", file=sys.stderr)
    return out


# -- batching gain: N concurrent caption streams, batched vs one at a time ----------------
def batch_gain(models_dir: Path, streams: int, seconds: float = 30.0) -> dict:
    """Every 100 ms each stream sends a chunk; one tick's chunks go to the model as one
    Triton batch would. Audio seconds transcribed per CPU second, max_batch 16 vs 1, on
    one thread (one CPU instance of the model)."""
    ws = _common()
    model = load_whisper(models_dir, threads=1)
    audio, _ = speech_stream(seconds + streams * 2.0)
    step = RATE // 10
    out: dict = {"streams": streams, "audio_s_per_stream": seconds}
    for name, max_batch in (("batched", 16), ("serial", 1)):
        settings = _settings(ws, stable_commit=4 * RATE, max_batch=max_batch)
        tr = ws.StreamingTranscriber(ws.BatchedWhisper(model, settings), settings)
        n = int(seconds * RATE)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(0, n, step):
            # stream k hears the speech from a different place (k * 2 s in)
            chunks = [ws.Chunk(k, audio[k * 2 * RATE + i:k * 2 * RATE + i + step],
                               start=i == 0, end=i + step >= n, language="en")
                      for k in range(streams)]
            tr.handle_batch(chunks, lambda _i, _r: None)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        out[name] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                     "audio_s_per_cpu_s": round(streams * seconds / cpu, 2)}
        print(f"  {name}: {json.dumps(out[name])}", file=sys.stderr)
    out["gain"] = round(out["batched"]["audio_s_per_cpu_s"] / out["serial"]["audio_s_per_cpu_s"], 2)
    return out


# -- the ramp: sessions at real-time pace until the lag passes the limit ------------------
def _process_cpu(pid: int) -> float | None:
    """utime + stime of one process (not its children); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their children (Triton's model stubs)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(d.name))
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
        total += _process_cpu(pid) or 0.0
    return total


def _own_cpu(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime of each named process alone (not its children)."""
    cpu = {name: _process_cpu(pid) for name, pid in pids.items()}
    return {name: seconds for name, seconds in cpu.items() if seconds is not None}


def _metrics(url: str) -> dict[str, float]:
    """A Prometheus text page as {series: value}."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def triton_batches(before: dict, after: dict) -> dict:
    """Per model: requests, executions, measured batch size (requests / executions),
    mean queue and compute time per request, from Triton's own counters."""
    out = {}
    for key, value in after.items():
        if not key.startswith("nv_inference_request_success{"):
            continue
        model = key.split('model="')[1].split('"')[0]
        label = key[key.index("{"):]

        def delta(name, _label=label):
            return after.get(name + _label, 0.0) - before.get(name + _label, 0.0)

        requests, execs = value - before.get(key, 0.0), delta("nv_inference_exec_count")
        if requests <= 0:
            continue
        out[model] = {
            "requests": int(requests), "executions": int(execs),
            "batch_size": round(requests / execs, 2) if execs else None,
            "queue_ms": round(delta("nv_inference_queue_duration_us") / requests / 1000, 1),
            "compute_ms": round(delta("nv_inference_compute_infer_duration_us") / requests
                                / 1000, 1),
        }
    return out


def stage_latency(before: dict, after: dict, name: str = "rtmedia_turn_latency_seconds"
                  ) -> dict:
    """Median and p95 per stage of a histogram, over the requests between two scrapes."""
    stages: dict[str, list[tuple[float, float]]] = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            stage = key.split('stage="')[1].split('"')[0]
            le = key.split('le="')[1].split('"')[0]
            stages.setdefault(stage, []).append(
                (float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    out = {}
    for stage, buckets in stages.items():
        buckets.sort()
        total = buckets[-1][1]
        if total <= 0:
            continue
        row = {"n": int(total)}
        for q in (0.5, 0.95):
            prev_le, prev_c = 0.0, 0.0
            for le, c in buckets:
                if c >= q * total:
                    frac = 0.0 if c == prev_c else (q * total - prev_c) / (c - prev_c)
                    row[f"p{int(q * 100)}_ms"] = (None if le == float("inf") else
                                                  round((prev_le + frac * (le - prev_le)) * 1000))
                    break
                prev_le, prev_c = le, c
        out[stage] = row
    return out


async def caption_level(url: str, sessions: int, spread_s: float = 0.0) -> dict:
    """``sessions`` streams of the same speech; session k starts k/sessions of
    ``spread_s`` late (0: lock step, every pause of every stream at the same instant)."""
    from bench.agent import CAPTION_TEXT, caption_run, summary
    from pipelines.speech import espeak_speech

    audio = espeak_speech(CAPTION_TEXT)

    async def one(k: int) -> dict:
        await asyncio.sleep(spread_s * k / sessions)
        return await caption_run(url, audio)

    runs = await asyncio.gather(*[one(k) for k in range(sessions)], return_exceptions=True)
    ok = [r for r in runs if isinstance(r, dict)]
    finals = [r["final_lag"] for r in ok if r["final_lag"] is not None]
    return {"audio_s": sessions * audio.size / RATE,
            "word_lag": summary([x for r in ok for x in r["word_lags"]]),
            "final_lag": summary(finals), "completed": len(finals)}


async def agent_level(url: str, sessions: int, turns: int) -> dict:
    from bench.agent import QUESTIONS, agent_turn, summary
    from pipelines.speech import espeak_speech

    rate = 24000
    questions = [espeak_speech(q, rate=rate) for q in QUESTIONS]

    async def one(k: int) -> list[float | None]:
        await asyncio.sleep(0.37 * k)  # people do not all stop talking at once
        return [await agent_turn(url, questions[(k + t) % len(questions)], rate)
                for t in range(turns)]

    runs = await asyncio.gather(*[one(k) for k in range(sessions)], return_exceptions=True)
    lat = [x for r in runs if isinstance(r, list) for x in r if x is not None]
    audio_s = sum(q.size / rate + 2.3 for q in questions) / len(questions) * sessions * turns
    return {"audio_s": audio_s, "first_audio": summary(lat),
            "completed": len(lat), "turns": sessions * turns}


async def ramp(url: str, http: str, triton_metrics: str | None, procs: dict[str, int],
               kind: str, levels: list[int], args) -> list[dict]:
    from bench.soak import process_tree

    rows, pids = [], list(procs.values())
    tree = process_tree(procs)  # the media server, tritonserver and each model's stubs
    for k in levels:
        before = _metrics(triton_metrics) if triton_metrics else {}
        server0 = _metrics(http + "/metrics")
        cpu0 = _cpu_seconds(pids) if pids else None
        own0 = _own_cpu(tree)
        if kind == "captions":
            row = await caption_level(url, k, args.spread_s)
            ok = (row["completed"] == k
                  and (row["word_lag"]["median_ms"] or 1e9) <= args.max_lag_ms
                  and (row["final_lag"]["median_ms"] or 1e9) <= args.max_lag_ms)
        else:
            row = await agent_level(url, k, args.turns)
            ok = (row["completed"] == row["turns"]
                  and (row["first_audio"]["median_ms"] or 1e9) <= args.max_first_audio_ms)
        row = {"sessions": k, **row, "held": ok}
        if cpu0 is not None:
            row["cpu_s_per_audio_s"] = round((_cpu_seconds(pids) - cpu0) / row["audio_s"], 3)
            own = _own_cpu(tree)
            row["cpu_by_process"] = {name: round((own[name] - own0[name]) / row["audio_s"], 3)
                                     for name in own if name in own0}
        row["stages"] = stage_latency(server0, _metrics(http + "/metrics"))
        if triton_metrics:
            row["triton"] = triton_batches(before, _metrics(triton_metrics))
        rows.append(row)
        print(f"  {kind} x{k}: {json.dumps(row)}", file=sys.stderr)
        if not ok:
            break
    return rows


def _triton_metrics_url(pid: int) -> str | None:
    """The metrics address of the tritonserver the local stack started (its command line)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if "metrics-port" not in opts:
        return None
    return f"http://{opts.get('metrics-address', '127.0.0.1')}:{opts['metrics-port']}/metrics"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtmedia bench capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="media server ws://HOST:PORT/v1/realtime (default: start "
                                 "Triton and the server locally)")
    p.add_argument("--triton-metrics", help="Triton's metrics URL with --url "
                                            "(http://HOST:8002/metrics)")
    p.add_argument("--captions", action="store_true", help="ramp caption sessions")
    p.add_argument("--agents", action="store_true", help="ramp voice-agent sessions")
    p.add_argument("--start", type=int, default=2)
    p.add_argument("--step", type=int, default=2)
    p.add_argument("--max", type=int, default=32)
    p.add_argument("--spread-s", type=float, default=0.0,
                   help="caption sessions start spread over this many seconds (0: lock "
                        "step, the worst case: every stream pauses at the same instant)")
    p.add_argument("--agent-levels", type=int, nargs="*", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--turns", type=int, default=3, help="turns per voice-agent session")
    p.add_argument("--max-lag-ms", type=float, default=1000.0)
    p.add_argument("--max-first-audio-ms", type=float, default=1500.0)
    p.add_argument("--batch-gain", action="store_true")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tts", action="store_true", help="piper first audio under concurrency "
                                                     "for several worker counts")
    p.add_argument("--tts-levels", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--tts-workers", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--finals", action="store_true", help="END -> final latency: last "
                                                        "partial reused vs decoded again")
    p.add_argument("--chain", action="store_true", help="one turn's speculative chain, "
                   "stage by stage: STT final, LLM first clause, TTS first audio")
    p.add_argument("--long-stream", action="store_true")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--models-dir", type=Path,
                   default=Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models")))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="Whisper device for --batch-gain and --long-stream")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device

    results: dict = {}
    if args.batch_gain:
        if os.environ.get("OMP_NUM_THREADS") != "1":  # read when numpy loads: too late here
            print("note: OMP_NUM_THREADS is not 1, so numpy's BLAS threads spin and count "
                  "as CPU time; the model stubs run with 1 (OMP_NUM_THREADS=1 rtmedia bench "
                  "capacity --batch-gain)", file=sys.stderr)
        results["batch_gain"] = batch_gain(args.models_dir, args.streams)
    if args.long_stream:
        results["long_stream"] = long_stream(args.models_dir, args.minutes)
    if args.finals:
        results["finals"] = final_latency(args.models_dir)
    if args.tts:
        results["tts"] = tts_concurrency(args.models_dir, args.tts_levels, args.tts_workers)
    if args.chain:
        results["chain"] = turn_chain(args.models_dir)
    if not (args.batch_gain or args.long_stream or args.tts or args.finals or args.chain) \
            or args.captions or args.agents:
        kinds = [k for k, on in (("captions", args.captions), ("agents", args.agents)) if on] \
            or ["captions", "agents"]
        levels = {"captions": list(range(args.start, args.max + 1, args.step)),
                  "agents": args.agent_levels}

        def run_all(url: str, http: str, tm: str | None, procs: dict[str, int]) -> None:
            for kind in kinds:
                rows = asyncio.run(ramp(url, http, tm, procs, kind, levels[kind], args))
                held = [r["sessions"] for r in rows if r["held"]]
                results[kind] = {"sessions_held": max(held) if held else 0, "levels": rows}

        if args.url:
            http = args.url.replace("ws://", "http://").replace("wss://", "https://")
            run_all(args.url, http.split("/v1/")[0], args.triton_metrics, {})
        else:
            from bench.stack import local_stack

            procs: dict[str, int] = {}
            with local_stack(processes=procs) as http:
                url = http.replace("http://", "ws://") + "/v1/realtime"
                run_all(url, http, _triton_metrics_url(procs["tritonserver"]), procs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- END -> final: the last partial reused vs a new decode --------------------------------
def final_latency(models_dir: Path) -> dict:
    """Each sentence (+0.2 s of silence) streamed in 100 ms chunks, then END: time to the
    final and WER, when the final times the last partial's words vs decodes again."""
    from pipelines.speech import espeak_speech
    from pipelines.text import word_error_rate

    ws = _common()
    model = load_whisper(models_dir)
    tail = np.zeros(RATE // 5, np.float32)
    audio = [np.concatenate([espeak_speech(s), tail]) for s in SENTENCES]
    out: dict = {}
    for mode in ("reuse_last_partial", "decode_again"):
        settings = _settings(ws, stable_commit=4 * RATE)
        tr = ws.StreamingTranscriber(ws.BatchedWhisper(model, settings), settings)
        if mode == "decode_again":
            tr._reusable = lambda _state: False
        took, wers = [], []
        for k, (sentence, a) in enumerate(zip(SENTENCES, audio, strict=True)):
            for i in range(0, a.size, RATE // 10):
                tr.handle(k, a[i:i + RATE // 10], start=i == 0, end=False, language="en")
            t0 = time.perf_counter()
            text, _, _ = tr.handle(k, np.zeros(0, np.float32), start=False, end=True,
                                   language="en")
            took.append(time.perf_counter() - t0)
            wers.append(word_error_rate(sentence, text))
        out[mode] = {"end_to_final_median_ms": round(float(np.median(took)) * 1000, 1),
                     "end_to_final_p95_ms": round(float(np.percentile(took, 95)) * 1000, 1),
                     "wer": round(float(np.mean(wers)), 3)}
        print(f"  {mode}: {json.dumps(out[mode])}", file=sys.stderr)
    return out


# -- TTS under concurrency: do requests of several sessions overlap? ----------------------
async def _tts_level(client, concurrency: int, rounds: int = 3) -> dict:
    from bench.agent import summary
    from pipelines.services import synthesize

    texts = ["Sure, I can help you with that right away.",
             "The store opens at nine in the morning on weekdays.",
             "Paris is the capital of France.", "Here is a quick recipe for a cup of tea."]

    async def one(k: int) -> float:
        t0 = time.perf_counter()
        async for _chunk in synthesize(client, texts[k % len(texts)]):
            return time.perf_counter() - t0
        return float("nan")

    firsts: list[float] = []
    t0 = time.perf_counter()
    for _ in range(rounds):
        firsts += await asyncio.gather(*[one(k) for k in range(concurrency)])
    return {"concurrency": concurrency, "first_audio": summary(firsts),
            "wall_s": round(time.perf_counter() - t0, 2)}


def tts_concurrency(models_dir: Path, levels: list[int], workers: list[int]) -> dict:
    """First-audio latency of concurrent piper requests for each ``workers`` value (the
    requests one instance synthesizes in parallel): the model is reloaded with the value
    patched into its rendered config.pbtxt."""
    import re
    import tempfile

    from bench.stack import free_port
    from pipelines.triton_client import TritonClient
    from streaming.settings import Settings
    from streaming.triton_server import TritonServer

    s = Settings.from_env().replace(
        models_dir=models_dir, placement="cpu", triton_http_port=free_port(),
        triton_grpc_port=free_port(), triton_metrics_port=free_port(),
        state_dir=Path(tempfile.mkdtemp(prefix="rtmedia-capacity-")))
    config = s.state_dir / "model_repository" / "tts" / "piper" / "config.pbtxt"
    out: dict = {}

    async def measure() -> None:
        client = TritonClient(TritonServer(s).grpc_url)
        try:
            for w in workers:
                config.write_text(re.sub(r'(key: "workers", value: \{ string_value: ")\d+',
                                         rf"\g<1>{w}", config.read_text()))
                await client.load("piper")
                await _tts_level(client, 1, rounds=1)  # warm
                out[f"workers={w}"] = [await _tts_level(client, c) for c in levels]
                print(f"  piper workers={w}: {json.dumps(out[f'workers={w}'])}",
                      file=sys.stderr)
        finally:
            await client.close()

    with TritonServer(s, models=["piper"], log_path=s.state_dir / "triton.log").start(
            wait_s=240):
        asyncio.run(measure())
    return out


# -- one turn's chain: where a single session's first audio goes --------------------------
CHAIN_QUESTIONS = ["What is the capital of France?", "How far away is the moon from the earth?",
                   "Can you recommend a good book to read this weekend?",
                   "Why is the sky blue?"]


async def _chain_turn(client, question: str) -> dict[str, float]:
    from pipelines.clauses import ClauseSplitter
    from pipelines.services import STTStream, chat, synthesize
    from pipelines.speech import espeak_speech

    audio = espeak_speech(question)
    spoken = audio.size - int(0.2 * RATE)  # the question, less most of its silence
    stt = STTStream(client)
    try:
        for i in range(0, spoken, 1600):  # 100 ms chunks, as the media server sends
            await stt.push(audio[i:min(i + 1600, spoken)])
        t = time.perf_counter()
        out = await stt.push(np.zeros(1600, np.float32), end=True)
        row = {"stt_final": time.perf_counter() - t}
    finally:
        await stt.close()
    messages = [{"role": "system", "content": "You are a helpful voice assistant. Answer "
                 "in one short sentence."},
                {"role": "user", "content": out[-1].text if out else question}]
    splitter, clause = ClauseSplitter(), ""
    t = time.perf_counter()
    gen = chat(client, messages, max_tokens=60)
    async with contextlib.aclosing(gen):
        async for tok in gen:
            if tok.text and "llm_first_token" not in row:
                row["llm_first_token"] = time.perf_counter() - t
            clauses = splitter.push(tok.text) if tok.text else []
            if clauses:
                clause = clauses[0]
                break
    clause = clause or "".join(splitter.flush())
    row["llm_first_clause"] = time.perf_counter() - t
    t = time.perf_counter()
    gen = synthesize(client, clause)
    async with contextlib.aclosing(gen):
        async for _ in gen:
            row["tts_first_audio"] = time.perf_counter() - t
            break
    return row


def turn_chain(models_dir: Path, rounds: int = 3) -> dict:
    """The parts of one turn's speculative chain (what must finish between the VAD's
    pause and the first audio), each timed alone on a quiet Triton: the STT final of
    a question, the LLM's first clause (what goes to TTS first), piper's first audio
    for that clause. Medians and maxima over ``rounds`` x 4 questions."""
    import tempfile

    from bench.stack import free_port
    from pipelines.triton_client import TritonClient
    from streaming.settings import Settings
    from streaming.triton_server import TritonServer

    s = Settings.from_env().replace(
        models_dir=models_dir, triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        state_dir=Path(tempfile.mkdtemp(prefix="rtmedia-capacity-")))
    rows: list[dict] = []

    async def measure(url: str) -> None:
        client = TritonClient(url)
        try:
            await _chain_turn(client, CHAIN_QUESTIONS[0])  # warm
            for _ in range(rounds):
                for q in CHAIN_QUESTIONS:
                    rows.append(await _chain_turn(client, q))
        finally:
            await client.close()

    triton = TritonServer(s, models=[s.stt_model, s.tts_model, s.llm_model],
                          log_path=s.state_dir / "triton.log")
    with triton.start(wait_s=300):
        asyncio.run(measure(triton.grpc_url))
    return {k: {"median_ms": round(statistics.median(r[k] for r in rows) * 1000),
                "max_ms": round(max(r[k] for r in rows) * 1000)}
            for k in ("stt_final", "llm_first_token", "llm_first_clause", "tts_first_audio")}
