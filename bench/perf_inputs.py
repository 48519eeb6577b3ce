"""Write input-data JSON for Triton's own load generator, perf_analyzer.

    python -m bench.perf_inputs OUT_DIR

Then, against a running `rtmedia triton` (see README, "Benchmarks"):
    perf_analyzer -m piper -i grpc -u 127.0.0.1:8001 --streaming \
        --input-data OUT_DIR/piper.json --concurrency-range 1:4
    perf_analyzer -m llm -i grpc -u 127.0.0.1:8001 --streaming \
        --input-data OUT_DIR/llm.json --concurrency-range 1:2
    perf_analyzer -m whisper -i grpc -u 127.0.0.1:8001 --streaming \
        --input-data OUT_DIR/whisper.json --sequence-length 10 --concurrency-range 1:4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.models import LLM_MESSAGES, STT_TEXT, TTS_TEXT
from pipelines.speech import espeak_speech


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or ["perf-inputs"])[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "piper.json").write_text(json.dumps({"data": [{"TEXT": [TTS_TEXT]}]}))
    (out / "llm.json").write_text(json.dumps({"data": [{
        "MESSAGES": [json.dumps(LLM_MESSAGES)], "MAX_TOKENS": [64]}]}))
    audio = espeak_speech(STT_TEXT)
    chunk = 8000
    steps = [{"AUDIO": {"content": audio[i:i + chunk].tolist(),
                        "shape": [len(audio[i:i + chunk])]}}
             for i in range(0, audio.size, chunk)]
    (out / "whisper.json").write_text(json.dumps({"data": [steps]}))
    print(f"wrote piper.json, llm.json, whisper.json ({len(steps)} chunks/sequence) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
