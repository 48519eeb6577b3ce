"""Rendering the model repository for a placement, the `rtmedia triton` command, and
stopping tritonserver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from pipelines.services import STTStream, chat, synthesize
from pipelines.triton_client import TritonClient
from streaming.cli import main as cli
from streaming.model_store import ModelStore
from streaming.settings import Settings
from streaming.triton_server import (
    TritonError,
    TritonServer,
    discover_models,
    loadable_models,
    render_repository,
)
from tests.conftest import SESSION_MODELS, free_port


def test_every_model_declares_its_weights():
    models = {m.name: m for m in discover_models()}
    assert {"whisper", "whisper_base", "piper", "llm"} <= set(models)
    assert models["whisper"].weights == ["stt/whisper-tiny.en"]
    assert models["llm"].use_case == "agent"


def test_cpu_and_gpu_placement(tmp_path):
    render_repository(tmp_path / "cpu", "cpu")
    cfg = (tmp_path / "cpu" / "agent" / "llm" / "config.pbtxt").read_text()
    assert "instance_group [ { count: 1, kind: KIND_CPU } ]" in cfg
    render_repository(tmp_path / "gpu", "gpu")
    llm = (tmp_path / "gpu" / "agent" / "llm" / "config.pbtxt").read_text()
    stt = (tmp_path / "gpu" / "stt" / "whisper" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU, gpus: [ 1 ]" in llm  # heavy work on GPU 1
    assert "kind: KIND_GPU, gpus: [ 0 ]" in stt  # realtime work on GPU 0
    # the symlinked model.py of whisper_base becomes a real file
    copied = tmp_path / "gpu" / "stt" / "whisper_base" / "1" / "model.py"
    assert copied.is_file() and not copied.is_symlink()


def test_unknown_placement(tmp_path):
    with pytest.raises(TritonError, match="unknown placement"):
        render_repository(tmp_path, "tpu")
    assert cli(["triton-repo", "--out", str(tmp_path), "--placement", "tpu"]) == 2


def test_only_models_with_weights_are_loaded(tmp_path):
    store = ModelStore(tmp_path)
    store.setup()
    ready, skipped = loadable_models(store)
    assert ready == [] and any("stt/whisper-tiny.en" in s for s in skipped)


def test_rtmedia_triton_serves_and_stops_on_sigterm(model_store, tmp_path):
    http = free_port()
    env = dict(os.environ, AI_MODELS_DIR=str(model_store.root),
               RTMEDIA_STATE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "streaming.cli", "triton", "--model", "piper",
           "--http-port", str(http), "--grpc-port", str(free_port()),
           "--metrics-port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Triton ready"):
                break
        assert any(f"127.0.0.1:{http}" in ln for ln in lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/piper/ready") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = proc.stdout.read()
    assert "stopping tritonserver" in rest
    with pytest.raises(OSError):  # the server is gone, not orphaned
        urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=1)


@pytest.mark.triton
async def test_stop_after_requests_and_an_open_sequence_is_graceful(model_store, tmp_path):
    """Issue 7, defect 7: every stop ended in "Exit timeout expired" (exit code 1).

    An STT sequence that is never ended counts as an in-flight inference until it
    idles out (120 s), and a stream cancelled as its last response was written leaves
    its state behind in tritonserver, which keeps the model from unloading. Now the
    models are unloaded before SIGINT (each finishes its requests, open sequences end)
    and the client ends a finished stream instead of cancelling it.
    """
    settings = Settings.from_env().replace(
        models_dir=model_store.root, state_dir=tmp_path, triton_http_port=free_port(),
        triton_grpc_port=free_port(), triton_metrics_port=free_port(), placement="cpu")
    log = tmp_path / "tritonserver.log"
    server = TritonServer(settings, models=SESSION_MODELS, log_path=log)
    await asyncio.to_thread(server.start, wait_s=240)
    try:
        assert server.loaded == SESSION_MODELS, server.failed
        # `with server.start(...)` (the benches) enters a running server: no second
        # process (one used to replace the first in server.proc and outlive the bench)
        first = server.proc
        assert server.__enter__() is server and server.proc is first
        client = TritonClient(server.grpc_url)
        try:
            assert [c async for c in synthesize(client, "Hello there.")]
            assert [t async for t in chat(client, [{"role": "user", "content": "Hi"}],
                                          max_tokens=8)]
            async with client.stream() as stream:
                inputs = {"AUDIO": np.zeros(8000, np.int16),
                          "SAMPLE_RATE": np.array([16000], np.int32)}
                assert [r async for r in stream.infer("avatar", inputs)]
            for _ in range(5):  # streams closed early: the reply is cancelled in Triton
                for gen in (synthesize(client, "Hi."),
                            chat(client, [{"role": "user", "content": "Hi"}], max_tokens=3)):
                    async with contextlib.aclosing(gen):
                        async for _item in gen:
                            break
            stt = STTStream(client)
            await stt.push(np.zeros(16000, np.float32))  # a sequence started, never ended
            await stt.close()
        finally:
            await client.close()
    finally:
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        elapsed = time.monotonic() - started
    tail = "\n".join(log.read_text().splitlines()[-15:])
    assert "Exit timeout expired" not in tail, tail
    assert server.proc.returncode == 0, tail
    assert elapsed < 10, tail
