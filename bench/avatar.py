"""Talking-avatar benchmark over WebRTC (aiortc clients against the media server).

    rtmedia bench avatar [--turns N] [--sessions 1 2 4 ...] [--url http://HOST:PORT]

Without --url it starts Triton and the media server locally. Figures:
  - sustained avatar video fps received per session, for 1..K concurrent sessions,
    and how many sessions keep >= 24 fps;
  - A/V sync: reply audio onset vs mouth-movement onset in the received streams;
  - end of user speech (the last voiced sample the microphone sent) -> first reply
    audio received, over WebRTC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys

import aiohttp
import numpy as np

from bench.agent import QUESTIONS, last_voiced, summary
from bench.stack import api_key, local_stack
from pipelines.speech import espeak_speech
from streaming.rtc_client import ArrayMicrophone, RtcCall

LOUD = 0.01  # reply audio RMS that counts as sound
MOVING = 2.0  # mean abs pixel change of the mouth area that counts as movement


def mouth_onset(samples, after: float) -> float | None:
    for i in range(len(samples) - 3):
        t, d = samples[i]
        if t > after and d > MOVING and sum(x > MOVING for _, x in samples[i:i + 4]) >= 3:
            return t
    return None


async def mouth_box(http: str) -> list[int]:
    async with aiohttp.ClientSession() as s, s.get(http + "/v1/config") as r:
        return (await r.json())["mouth"]


async def turn(http: str, box, question: str) -> dict:
    rate = 48000
    speech = espeak_speech(question, rate=rate)
    lead = 0.5
    mic = ArrayMicrophone(np.concatenate([np.zeros(int(lead * rate), np.float32), speech]))
    call = await RtcCall(http, mic, mouth_box=box, api_key=api_key(), session={
        "type": "realtime", "instructions": "Answer in one short sentence.",
        "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}).start()
    try:
        for _ in range(400):
            if call.rec.first("response.done") or call.rec.first("error"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
    finally:
        await call.close()
    rec = call.rec
    speech_end = mic.started_at + lead + last_voiced(speech) / rate if mic.started_at else None
    stopped = rec.first("input_audio_buffer.speech_stopped")
    audio_on = next((t for t, level in rec.audio_levels
                     if stopped and t > stopped and level > LOUD), None)
    mouth_on = mouth_onset(rec.mouth, stopped) if stopped else None
    return {
        "first_audio": (audio_on - speech_end) if audio_on and speech_end else None,
        "vad_stop": (stopped - speech_end) if stopped and speech_end else None,
        "av_offset": (mouth_on - audio_on) if audio_on and mouth_on else None,
    }


async def idle_fps(http: str, k: int, seconds: float) -> list[float]:
    calls = [RtcCall(http, ArrayMicrophone(np.zeros(48000, np.float32)), api_key=api_key())
             for _ in range(k)]
    await asyncio.gather(*(c.start() for c in calls))
    await asyncio.sleep(1.5)  # connection set-up
    marks = [len(c.rec.video_frames) for c in calls]
    await asyncio.sleep(seconds)
    fps = [(len(c.rec.video_frames) - m) / seconds for c, m in zip(calls, marks, strict=True)]
    await asyncio.gather(*(c.close() for c in calls))
    return fps


async def server_turn_means(http: str) -> dict:
    """Mean per-stage turn latency the server measured (end of speech detected -> ...)."""
    async with aiohttp.ClientSession() as s, s.get(http + "/metrics") as r:
        text = await r.text()
    sums, counts = {}, {}
    for line in text.splitlines():
        if line.startswith("rtmedia_turn_latency_seconds_sum"):
            sums[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("rtmedia_turn_latency_seconds_count"):
            counts[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return {k: round(1000 * sums[k] / counts[k], 1) for k in sums if counts.get(k)}


async def run(http: str, args) -> dict:
    box = await mouth_box(http)
    results: dict = {}
    rows = []
    for k in args.sessions:
        fps = await idle_fps(http, k, args.seconds)
        rows.append({"sessions": k, "fps_min": round(min(fps), 1),
                     "fps_median": round(statistics.median(fps), 1)})
        print(f"  {k} avatar sessions: fps min {min(fps):.1f}", file=sys.stderr)
        if min(fps) < 24:
            break
    results["avatar_fps"] = rows
    results["max_sessions_at_24fps"] = max((r["sessions"] for r in rows
                                            if r["fps_min"] >= 24), default=0)
    offsets, firsts, stops = [], [], []
    for i in range(args.turns):
        r = await turn(http, box, QUESTIONS[i % len(QUESTIONS)])
        if r["av_offset"] is not None:
            offsets.append(r["av_offset"])
        if r["first_audio"] is not None:
            firsts.append(r["first_audio"])
        if r["vad_stop"] is not None:
            stops.append(r["vad_stop"])
    results["av_offset_mouth_minus_audio"] = summary(offsets)
    results["av_offset_abs"] = summary([abs(o) for o in offsets])
    results["speech_end_to_first_audio_webrtc"] = summary(firsts)
    results["speech_end_to_speech_stopped_event"] = summary(stops)
    results["server_turn_means_ms"] = await server_turn_means(http)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtmedia bench avatar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="media server http://HOST:PORT (default: start locally)")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 3, 4, 6])
    p.add_argument("--seconds", type=float, default=8.0, help="fps measuring window")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.url:
        results = asyncio.run(run(args.url, args))
    else:
        with local_stack(avatar=True) as http:
            results = asyncio.run(run(http, args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
