"""The capacity bench's arithmetic on Triton's and the media server's metrics pages."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.capacity import _cpu_seconds, stage_latency, triton_batches

W = 'model="whisper",version="1"'
P = 'model="piper",version="1"'


def test_triton_batch_size_is_requests_per_execution():
    before = {f"nv_inference_request_success{{{W}}}": 10.0,
              f"nv_inference_exec_count{{{W}}}": 10.0,
              f"nv_inference_queue_duration_us{{{W}}}": 0.0,
              f"nv_inference_compute_infer_duration_us{{{W}}}": 0.0,
              f"nv_inference_request_success{{{P}}}": 5.0}
    after = {f"nv_inference_request_success{{{W}}}": 110.0,
             f"nv_inference_exec_count{{{W}}}": 35.0,
             f"nv_inference_queue_duration_us{{{W}}}": 2_000_000.0,
             f"nv_inference_compute_infer_duration_us{{{W}}}": 5_000_000.0,
             f"nv_inference_request_success{{{P}}}": 5.0}
    assert triton_batches(before, after) == {"whisper": {
        "requests": 100, "executions": 25, "batch_size": 4.0, "queue_ms": 20.0,
        "compute_ms": 50.0}}  # piper had no requests in between: left out


def test_stage_latency_interpolates_inside_the_buckets_of_the_difference():
    def page(counts):
        les = ["0.1", "0.5", "1.0", "+Inf"]
        return {f'rtmedia_turn_latency_seconds_bucket{{le="{le}",stage="first_audio"}}': c
                for le, c in zip(les, counts, strict=True)}

    before = page([5, 5, 5, 5])  # earlier turns are not counted again
    after = page([5, 5, 15, 25])
    row = stage_latency(before, after)["first_audio"]
    assert row["n"] == 20
    assert row["p50_ms"] == pytest.approx(1000)  # 10 of 20 at or below 1.0 s
    assert row["p95_ms"] is None  # past the last finite bucket


def test_cpu_seconds_counts_this_process():
    spent = _cpu_seconds([os.getpid()])
    sum(i * i for i in range(2_000_000))
    assert _cpu_seconds([os.getpid()]) > spent > 0


async def test_the_chain_bench_times_each_stage_of_a_turn_on_the_real_models(client):
    from bench.capacity import _chain_turn

    row = await _chain_turn(client, "What is the capital of France?")
    assert set(row) == {"stt_final", "llm_first_token", "llm_first_clause",
                        "tts_first_audio"}
    assert all(0 < v < 60 for v in row.values()), row
    assert row["llm_first_token"] <= row["llm_first_clause"]


def test_soak_names_each_instance_of_a_models_stub(tmp_path):
    import subprocess
    import sys

    from bench.soak import process_tree

    model = tmp_path / "whisper" / "1" / "model.py"  # as the python backend's stub args
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                  str(model)]) for _ in range(2)]
    try:
        for child in children:  # both exec'd, their command lines in /proc
            for _ in range(200):
                if b"model.py" in Path(f"/proc/{child.pid}/cmdline").read_bytes():
                    break
                time.sleep(0.01)
        tree = process_tree({"tritonserver": os.getpid()})
    finally:
        for child in children:
            child.kill()
            child.wait()
    first, second = sorted(children, key=lambda c: c.pid)
    assert tree["stub:whisper"] == first.pid and tree["stub:whisper#2"] == second.pid
