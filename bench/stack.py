"""The local stack the end-to-end benchmarks run against: a tritonserver and the media
server as a separate process (as in production), started and stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_key() -> str | None:
    """The key for a media server given with --url (RTMEDIA_API_KEY), if any."""
    return os.environ.get("RTMEDIA_API_KEY") or None


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # e.g. /readyz 503 with its reasons
            last = exc.read(2000).decode(errors="replace")
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    hint = (" (is the model store filled? AI_MODELS_DIR, `rtmedia models install-defaults`)"
            if "not ready" in last or "missing" in last else "")
    raise RuntimeError(f"{url} not ready after {timeout} s: {last.strip() or 'no answer'}"
                       + hint)


@contextlib.contextmanager
def local_stack(*, avatar: bool = False, processes: dict[str, int] | None = None,
                extra_models: tuple[str, ...] = (), urls: dict[str, str] | None = None
                ) -> Iterator[str]:
    """Yield the media server's http://HOST:PORT; stop everything on exit. ``processes``
    receives the pids of "tritonserver" and "media-server" (for memory figures),
    ``urls`` Triton's gRPC address ("triton"); ``extra_models`` are loaded too."""
    from streaming.settings import Settings
    from streaming.triton_server import TritonServer

    s = Settings.from_env().replace(
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        state_dir=Path(tempfile.mkdtemp(prefix="rtmedia-bench-")))
    models = [s.stt_model, s.tts_model, s.llm_model] + ([s.avatar_model] if avatar else [])
    models += list(extra_models)
    triton = TritonServer(s, models=models, log_path=s.state_dir / "tritonserver.log")
    print("starting tritonserver ...", file=sys.stderr)
    triton.start(wait_s=300)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streaming.cli", "up", "--triton-url",
                             triton.grpc_url, "--port", str(port)],
                            env=dict(os.environ, RTMEDIA_MAX_SESSIONS="64"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = f"http://127.0.0.1:{port}"
    if urls is not None:
        urls["triton"] = triton.grpc_url
    if processes is not None and triton.proc is not None:
        processes.update({"tritonserver": triton.proc.pid, "media-server": proc.pid})
    try:
        wait_http(http + "/readyz", 60)
        yield http
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        triton.stop()
