"""End of turn: silence only (server_vad) against the end-of-turn model (semantic_vad).

    rtmedia bench turns [--modes server_vad:400 semantic_vad:auto ...] [--pause-ms 600]
                        [--rounds N] [--url WS_URL] [--json]

Utterances are spoken by espeak-ng at real-time pace, as a microphone would. Half
of them stop mid-sentence for ``--pause-ms`` ("I would like to book a table for ...
four people tonight."), half are whole sentences. Per turn-detection mode:
  - premature turn ends: paused utterances whose turn ended at the pause
  - end of speech (the last voiced sample sent) -> first reply audio at the client,
    over the whole sentences
  - the end-of-turn model itself (smart_turn in Triton, local stack only): its
    verdict at the pause of each paused utterance and at the end of every utterance.
  - Hindi (local stack only, --no-hindi skips it): espeak-ng Hindi sentences through
    the multilingual Whisper (character error rate, share of Devanagari letters) and
    the LLM told to answer in Hindi (share of Devanagari letters in its answer).
Without --url it starts a local Triton and the media server and stops them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import unicodedata

import numpy as np

from bench.agent import last_voiced, summary
from bench.stack import api_key, local_stack
from pipelines.speech import espeak_speech
from streaming.client import RealtimeClient

RATE = 24000
PAUSED = [
    ("I would like to book a table for", "four people tonight."),
    ("So I was thinking that maybe we could", "go to the beach tomorrow."),
    ("Can you tell me the weather in", "Paris this weekend?"),
    ("I want to order a pizza with", "mushrooms and olives."),
    ("My name is", "John Smith."),
    ("Please remind me to call", "my mother at six."),
    ("The meeting has been moved to", "Thursday afternoon."),
    ("What I really need is", "a cheaper flight to Delhi."),
]
WHOLE = [
    "What is the capital of France?", "How far away is the moon?",
    "Tell me a joke about cats.", "What time does the store open?",
    "Can you recommend a good book?", "I would like to book a table for four people.",
    "Please turn off the lights in the kitchen.", "Thank you, that is all for today.",
]
HINDI = ["नमस्ते, आज मौसम कैसा है?", "भारत की राजधानी क्या है?",
         "मुझे चार लोगों के लिए एक मेज़ बुक करनी है।", "कृपया रसोई की बत्ती बंद कर दो।",
         "कल सुबह मुझे छह बजे जगा देना।"]
DEFAULT_MODES = ["server_vad:400", "server_vad:800", "semantic_vad:high",
                 "semantic_vad:auto", "semantic_vad:low"]


def spoken(text: str, rate: int = RATE) -> np.ndarray:
    """espeak-ng speech without its trailing silence."""
    audio = espeak_speech(text, rate=rate)
    return audio[:last_voiced(audio)]


def utterance(parts: tuple[str, ...], pause_s: float, rate: int = RATE) -> np.ndarray:
    gap = np.zeros(int(pause_s * rate), np.float32)
    pieces: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            pieces.append(gap)
        pieces.append(spoken(part, rate))
    return np.concatenate(pieces)


def turn_detection(mode: str) -> dict:
    kind, _, arg = mode.partition(":")
    if kind == "server_vad":
        return {"type": "server_vad", "silence_duration_ms": int(arg or 400)}
    return {"type": "semantic_vad", "eagerness": arg or "auto"}


async def one_turn(url: str, mode: str, audio: np.ndarray) -> dict:
    """Stream one utterance; when did turns end, when did the reply's audio start."""
    client = await RealtimeClient(url, api_key()).connect()
    try:
        await client.wait_for("session.created")
        fmt = {"type": "audio/pcm", "rate": RATE}
        await client.update({"type": "realtime", "instructions": "Answer in one short sentence.",
                             "max_output_tokens": 24,
                             "audio": {"input": {"format": fmt,
                                                 "turn_detection": turn_detection(mode)}}})
        lead = np.zeros(int(0.3 * RATE), np.float32)
        tail = np.zeros(int(5.0 * RATE), np.float32)  # longer than any end-of-turn silence
        t0 = time.monotonic()
        speech_end = t0 + (lead.size + audio.size) / RATE
        sender = asyncio.create_task(client.stream_audio(
            np.concatenate([lead, audio, tail]), RATE, pace=1.0))
        stops: list[float] = []
        first_audio = None
        async for ev in _events(client):
            if ev.type == "input_audio_buffer.speech_stopped":
                stops.append(ev.t)
            elif ev.type == "response.output_audio.delta" and first_audio is None \
                    and stops and stops[-1] >= speech_end - 0.05:
                first_audio = ev.t
            elif ev.type == "response.done" and first_audio is not None:
                break
            elif ev.type in ("error", "connection.closed"):
                break
        sender.cancel()
        return {"premature": sum(t < speech_end - 0.05 for t in stops),
                "latency": None if first_audio is None else first_audio - speech_end}
    finally:
        await client.close()


async def _events(client: RealtimeClient):
    """The session's events until 30 s pass without one."""
    try:
        async for ev in client.iter_events(timeout=30):
            yield ev
    except TimeoutError:
        return


async def model_verdicts(grpc_url: str, pause_s: float) -> dict:
    """smart_turn's probability of "complete" where it is asked: at a mid-sentence
    pause (120 ms in), and at the end of every utterance."""
    from pipelines.router import ModelRouter
    from pipelines.services import TritonTurnJudge

    judge = TritonTurnJudge(ModelRouter(grpc_url))
    pause = np.zeros(int(0.12 * 16000), np.float32)
    try:
        at_pause = [await judge.complete(np.concatenate([spoken(a, 16000), pause]))
                    for a, _ in PAUSED]
        at_end = [await judge.complete(np.concatenate([utterance(p, pause_s, 16000), pause]))
                  for p in PAUSED]
        at_end += [await judge.complete(np.concatenate([spoken(w, 16000), pause]))
                   for w in WHOLE]
        t = time.monotonic()
        for _ in range(10):
            await judge.complete(spoken(WHOLE[0], 16000))
        call_ms = (time.monotonic() - t) * 100
    finally:
        await judge.router.close()
    return {
        "pauses_judged_incomplete": f"{sum(p < 0.5 for p in at_pause)}/{len(at_pause)}",
        "ends_judged_complete": f"{sum(p >= 0.5 for p in at_end)}/{len(at_end)}",
        "p_at_pause": [round(p, 2) for p in at_pause],
        "p_at_end": [round(p, 2) for p in at_end],
        "call_ms": round(call_ms, 1),
    }


def letters(text: str) -> str:
    return "".join(c for c in text if c.isalpha() or unicodedata.category(c).startswith("M"))


def devanagari_share(text: str) -> float:
    chars = letters(text)
    return sum(0x0900 <= ord(c) < 0x0980 for c in chars) / len(chars) if chars else 0.0


def char_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = letters(reference), letters(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


async def hindi_quality(grpc_url: str, stt_model: str, llm_model: str) -> dict:
    """Hindi through the small models: what Whisper base hears, what the LLM answers."""
    from pipelines.agent import DEFAULT_INSTRUCTIONS
    from pipelines.languages import answer_in
    from pipelines.services import STTStream, chat
    from pipelines.triton_client import TritonClient

    client = TritonClient(grpc_url)
    rows = []
    try:
        for sentence in HINDI:
            audio = espeak_speech(sentence, voice="hi")
            stt = STTStream(client, model=stt_model, language="hi")
            try:
                t = time.monotonic()
                finals = [x for x in await stt.push(audio, end=True) if x.final]
                stt_ms = (time.monotonic() - t) * 1000
            finally:
                await stt.close()
            heard = finals[0].text if finals else ""
            messages = [{"role": "system", "content": answer_in(DEFAULT_INSTRUCTIONS, "hi")},
                        {"role": "user", "content": heard or sentence}]
            reply = "".join([tok.text async for tok in chat(
                client, messages, model=llm_model, max_tokens=40, temperature=0.0)])
            rows.append({"said": sentence, "heard": heard, "reply": reply.strip(),
                         "cer": round(char_error_rate(sentence, heard), 2),
                         "heard_devanagari": round(devanagari_share(heard), 2),
                         "reply_devanagari": round(devanagari_share(reply), 2),
                         "stt_ms": round(stt_ms)})
    finally:
        await client.close()
    n = len(rows)
    return {"sentences": rows,
            "mean_cer": round(sum(r["cer"] for r in rows) / n, 2),
            "heard_devanagari": round(sum(r["heard_devanagari"] for r in rows) / n, 2),
            "reply_devanagari": round(sum(r["reply_devanagari"] for r in rows) / n, 2)}


async def run(url: str, args, grpc_url: str | None) -> dict:
    pause_s = args.pause_ms / 1000
    paused = [utterance(p, pause_s) for p in PAUSED]
    whole = [spoken(w) for w in WHOLE]
    results: dict = {"pause_ms": args.pause_ms, "modes": {}}
    if grpc_url:
        results["model"] = await model_verdicts(grpc_url, pause_s)
        print(f"  smart_turn: {results['model']}", file=sys.stderr)
    if grpc_url and not args.no_hindi:
        from streaming.settings import Settings

        s = Settings.from_env()
        results["hindi"] = await hindi_quality(grpc_url, s.stt_multilingual_model, s.llm_model)
        print(f"  hindi: {results['hindi']}", file=sys.stderr)
    # modes take turns on each utterance, so a busy spell of the machine hits them alike
    premature = dict.fromkeys(args.modes, 0)
    cut: dict[str, list[str]] = {m: [] for m in args.modes}  # which were cut
    latencies: dict[str, list[float]] = {m: [] for m in args.modes}
    for _ in range(args.rounds):
        for parts, audio in zip(PAUSED, paused, strict=True):
            for mode in args.modes:
                if (await one_turn(url, mode, audio))["premature"]:
                    premature[mode] += 1
                    cut[mode].append(parts[0])
        for audio in whole:
            for mode in args.modes:
                r = await one_turn(url, mode, audio)
                if r["latency"] is not None and not r["premature"]:
                    latencies[mode].append(r["latency"])
    for mode in args.modes:
        row = {"premature_turn_ends": f"{premature[mode]}/{len(paused) * args.rounds}",
               "cut_at_the_pause": cut[mode],
               "speech_end_to_first_audio": summary(latencies[mode])}
        results["modes"][mode] = row
        print(f"  {mode}: {row}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rtmedia bench turns", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=DEFAULT_MODES,
                    help="server_vad:SILENCE_MS or semantic_vad:EAGERNESS")
    ap.add_argument("--pause-ms", type=int, default=600, help="mid-sentence pause")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--url", help="ws://HOST:PORT/v1/realtime of a running media server")
    ap.add_argument("--no-hindi", action="store_true", help="skip the Hindi figures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.url:
        results = asyncio.run(run(args.url, args, None))
    else:
        from streaming.settings import Settings

        s = Settings.from_env()
        urls: dict[str, str] = {}
        extra = (s.turn_model,) + (() if args.no_hindi else (s.stt_multilingual_model,))
        with local_stack(extra_models=extra, urls=urls) as http:
            ws = http.replace("http://", "ws://") + "/v1/realtime"
            results = asyncio.run(run(ws, args, urls["triton"]))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        m = results.get("model")
        if m:
            print("smart_turn: mid-sentence pauses judged incomplete "
                  f"{m['pauses_judged_incomplete']}, utterance ends judged complete "
                  f"{m['ends_judged_complete']}, "
                  f"{m['call_ms']} ms a call")
        h = results.get("hindi")
        if h:
            print(f"Hindi: Whisper base CER {h['mean_cer']}, Devanagari share heard "
                  f"{h['heard_devanagari']}, in the LLM's answers {h['reply_devanagari']}")
            for r in h["sentences"]:
                print(f"  {r['said']} -> {r['heard']} | {r['reply'][:60]}")
        print(f"{'mode':<22}{'premature ends':>16}{'first audio median':>20}{'p95':>8}")
        for mode, row in results["modes"].items():
            lat = row["speech_end_to_first_audio"]
            print(f"{mode:<22}{row['premature_turn_ends']:>16}{lat['median_ms'] or '-':>20}"
                  f"{lat['p95_ms'] or '-':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
