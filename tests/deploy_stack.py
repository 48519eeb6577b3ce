"""The production shape on loopback, shared by test_nginx, test_redis and test_deploy:
one tritonserver (conftest's), a real redis-server, two media-server processes
(`rtmedia up --triton-url`, as replicas run), a real nginx in front with nginx/'s own
config and a test-made certificate. Prometheus is started by the test that needs it.
Servers are Debian's packages (scripts/setup.sh installs them)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "nginx"


def need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists()
                                    else None)
    if path is None:
        pytest.fail(f"{binary} is not installed: run scripts/setup.sh (apt-get install)")
    return path


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            result = check()
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"{what} not after {timeout} s")


def http_status(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Redis:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [need("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log")])
        import redis

        wait_until(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 10,
                   "redis-server")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Replica:
    name: str
    port: int
    metrics_port: int
    env: dict
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streaming.cli", "up", "--triton-url",
                 self.env["RTMEDIA_TRITON_URL"], "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(lambda: self.proc.poll() is None and http_status(self.http + "/readyz")
                   == 200, 90, f"{self.name} ready")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, and a second one (no grace period) when it still runs after 2 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def metric(self, name: str) -> float:
        """A metric summed over its labels, from the replica's metrics listener."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=3) as r:
            text = r.read().decode()
        return sum(float(m) for m in re.findall(
            rf'^{name}(?:\{{[^}}]*\}})? (\S+)$', text, re.M))

    def sessions_open(self) -> float:
        return self.metric("rtmedia_sessions_active")


@dataclass
class Nginx:
    folder: Path
    upstreams: list[int]
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/v1/realtime"

    @property
    def cert(self) -> Path:
        return self.folder / "certs" / "fullchain.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def configure(self) -> None:
        """nginx/ as shipped, with the listen ports and the replicas of this machine."""
        shutil.copytree(NGINX_DIR, self.folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("certs"))
        subprocess.run([str(NGINX_DIR / "make-cert.sh"), str(self.folder / "certs"),
                        "127.0.0.1", "localhost"], check=True, capture_output=True)
        site = self.folder / "conf.d" / "rtmedia.conf"
        text = site.read_text()
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{self.https_port} ssl;")
        text = text.replace("listen 80;", f"listen 127.0.0.1:{self.http_port};")
        site.write_text(text)
        upstream = self.folder / "conf.d" / "upstream.conf"
        servers = "".join(f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=10s;\n"
                          for p in self.upstreams)
        upstream.write_text(re.sub(r"(?m)^    server .*\n", "", upstream.read_text())
                            .replace("    least_conn;\n", "    least_conn;\n" + servers))
        (self.folder / "logs").mkdir(exist_ok=True)

    def command(self, *extra: str) -> list[str]:
        # user root: the test's temporary folders are private to root (pytest's tmp_path)
        globals_ = f"pid {self.folder}/nginx.pid; daemon off;" + (
            " user root;" if os.geteuid() == 0 else "")
        return [need("nginx"), "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                "-e", str(self.folder / "logs" / "error.log"), "-g", globals_, *extra]

    def start(self) -> None:
        self.configure()
        check = subprocess.run(self.command("-t"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.log = open(self.folder / "logs" / "access.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: http_status(self.https + "/healthz", self.ssl_context()) == 200,
                   10, "nginx")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def access_log(self) -> str:
        return (self.folder / "logs" / "access.log").read_text(errors="replace")


@dataclass
class Stack:
    triton: object
    triton_metrics: str  # host:port of tritonserver's /metrics
    redis: Redis
    replicas: list[Replica]
    nginx: Nginx
    folder: Path

    def restart(self, replica: Replica) -> None:
        if replica.proc is None or replica.proc.poll() is not None:
            replica.start()

    def ensure_up(self) -> None:
        """Put back what a test stopped (a replica, Redis)."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        for r in self.replicas:
            self.restart(r)


GLOBAL_MAX_SESSIONS = 5
KEY = "sk-deploy-" + "4e1b" * 8
AUTH = {"Authorization": "Bearer " + KEY}


@pytest.fixture(scope="session")
def deploy_stack(triton, triton_settings, model_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    redis_server = Redis(folder / "redis")
    redis_server.start()
    replicas = []
    for i in (1, 2):
        env = dict(os.environ, AI_MODELS_DIR=str(model_store.root),
                   RTMEDIA_STATE_DIR=str(folder / f"state-{i}"),
                   RTMEDIA_TRITON_URL=triton.grpc_url, RTMEDIA_REDIS_URL=redis_server.url,
                   RTMEDIA_METRICS_PORT=str(free_port()), RTMEDIA_MAX_SESSIONS="4",
                   RTMEDIA_GLOBAL_MAX_SESSIONS=str(GLOBAL_MAX_SESSIONS),
                   RTMEDIA_DRAIN_GRACE_S="30", RTMEDIA_API_KEY=KEY,
                   RTMEDIA_TRUSTED_PROXIES="127.0.0.1/32",
                   RTMEDIA_ALLOWED_ORIGINS="same-origin,loopback")
        replicas.append(Replica(f"media-{i}", free_port(), int(env["RTMEDIA_METRICS_PORT"]),
                                env, folder / f"media-{i}.log"))
    nginx = Nginx(folder / "nginx", [r.port for r in replicas])
    stack = Stack(triton, f"127.0.0.1:{triton_settings.triton_metrics_port}", redis_server,
                  replicas, nginx, folder)
    try:
        # both replicas import and connect at once (about 3 s each on 2 cores)
        for r in replicas:
            with open(r.log, "ab") as out:
                r.proc = subprocess.Popen(
                    [sys.executable, "-m", "streaming.cli", "up", "--triton-url",
                     triton.grpc_url, "--port", str(r.port)], env=r.env, stdout=out,
                    stderr=subprocess.STDOUT, cwd=ROOT)
        for r in replicas:
            wait_until(lambda r=r: r.proc.poll() is None and http_status(r.http + "/readyz")
                       == 200, 90, f"{r.name} ready")
        nginx.start()
        yield stack
    finally:
        if nginx.proc:
            nginx.stop()
        running = [r for r in replicas if r.proc is not None and r.proc.poll() is None]
        for r in running:  # all drain at once (none has a session left)
            r.proc.send_signal(signal.SIGTERM)
        for r in running:
            r.stop()
        redis_server.stop()


async def voice_turn(ws_url: str, text: str = "What colour is the sky?", **connect) -> dict:
    """One voice-agent turn of espeak-ng speech (sent faster than real time): the
    response.done event."""
    import numpy as np

    from pipelines.speech import espeak_speech
    from streaming.client import RealtimeClient

    client = await RealtimeClient(ws_url, KEY).connect(**connect)
    try:
        await client.wait_for("session.created")
        await client.update({"type": "realtime", "max_output_tokens": 16, "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}})
        speech = np.concatenate([espeak_speech(text, rate=24000), np.zeros(24000, np.float32)])
        await client.stream_audio(speech, 24000, pace=0, chunk_ms=200)
        done = await client.wait_for("response.done", timeout=60)
        return done.data
    finally:
        await client.close()
