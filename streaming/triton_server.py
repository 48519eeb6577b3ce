"""Start the tritonserver that ships inside the nvidia-pytriton wheel, with our repositories.

What this adds over calling the binary by hand (see shared/PLATFORM.md for why):
- a backend directory holding the python backend *and* the stub for this Python;
- the environment the stub needs (venv first on PATH, the interpreter's own
  libpython on LD_LIBRARY_PATH, AI_MODELS_DIR);
- a rendered copy of ``triton_models/`` with ``instance_group`` taken from the
  placement file, and only the models whose weights are in the store loaded;
- loopback addresses, readiness wait, clean stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streaming.model_store import ModelStore
from streaming.settings import USE_CASES, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_SRC = REPO_ROOT / "triton_models"
PLACEMENT_FILE = MODELS_SRC / "placement.json"
# How long tritonserver waits on SIGINT for in-flight work (--exit-timeout-secs); stop()
# gives the models as long to finish their requests and unload before it.
EXIT_TIMEOUT_S = 5


class TritonError(RuntimeError):
    pass


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise TritonError("nvidia-pytriton is not installed (pip install nvidia-pytriton)") \
            from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def tritonserver_binary() -> Path:
    binary = pytriton_dir() / "bin" / "tritonserver"
    if not binary.exists():
        raise TritonError(f"tritonserver binary not found at {binary}")
    return binary


def make_backend_dir(state_dir: Path) -> Path:
    """A backend directory: the python backend plus the stub for the running Python."""
    src = pytriton_dir()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"no python backend stub for Python {ver} in {stub.parent.parent}")
    dest = state_dir / "backends" / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for item in [*(src / "backends" / "python").glob("*.so"),
                 src / "backends" / "python" / "triton_python_backend_utils.py", stub]:
        link = dest / item.name
        if link.is_symlink() or link.exists():
            if link.resolve() == item.resolve():
                continue
            link.unlink()
        link.symlink_to(item)
    return dest.parent


# -- model repository rendering -------------------------------------------------------
@dataclass
class RepoModel:
    use_case: str
    name: str
    path: Path
    weights: list[str] = field(default_factory=list)  # "<use_case>/<model>" it needs


def discover_models(src: Path = MODELS_SRC) -> list[RepoModel]:
    """Every ``triton_models/<use_case>/<model>/config.pbtxt``; weights from its parameters."""
    models = []
    for use_case in USE_CASES:
        for cfg in sorted((src / use_case).glob("*/config.pbtxt")):
            weights = [
                v for k, v in _string_parameters(cfg.read_text()).items() if k == "weights"
            ]
            models.append(RepoModel(use_case, cfg.parent.name, cfg.parent, weights))
    return models


def _string_parameters(pbtxt: str) -> dict[str, str]:
    import re

    pattern = re.compile(
        r'key:\s*"([^"]+)"\s*,?\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}', re.S
    )
    return dict(pattern.findall(pbtxt))


def load_placement(profile: str, path: Path = PLACEMENT_FILE) -> dict[str, dict]:
    data = json.loads(path.read_text())
    profiles = data["profiles"]
    if profile not in profiles:
        raise TritonError(f"unknown placement {profile!r}; {path} defines {sorted(profiles)}")
    chosen = profiles[profile]
    default = chosen.get("default", {"kind": "KIND_CPU", "count": 1})
    return {uc: {**default, **chosen.get(uc, {})} for uc in USE_CASES}


def instance_group(spec: dict) -> str:
    parts = [f"count: {int(spec.get('count', 1))}", f"kind: {spec['kind']}"]
    if spec["kind"] == "KIND_GPU" and spec.get("gpus") is not None:
        parts.append("gpus: [ " + ", ".join(str(int(g)) for g in spec["gpus"]) + " ]")
    return "instance_group [ { " + ", ".join(parts) + " } ]\n"


def render_repository(dest: Path, placement: str, src: Path = MODELS_SRC) -> list[Path]:
    """Copy the repositories to ``dest`` with instance_group from the placement profile."""
    groups = load_placement(placement)
    if dest.exists():
        shutil.rmtree(dest)
    # The models' shared helpers, next to the use-case folders where each model.py
    # looks for them; never a repository itself (one --model-repository per use case).
    shutil.copytree(src / "common", dest / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    repos = []
    for use_case in USE_CASES:
        out = dest / use_case
        out.mkdir(parents=True)
        repos.append(out)
        for model in discover_models(src):
            if model.use_case != use_case:
                continue
            target = out / model.name
            shutil.copytree(model.path, target, ignore=shutil.ignore_patterns("__pycache__"))
            cfg = target / "config.pbtxt"
            text = cfg.read_text()
            if "instance_group" in text:
                raise TritonError(f"{model.path}/config.pbtxt sets instance_group; placement "
                                  f"belongs in {PLACEMENT_FILE.name}")
            cfg.write_text(text.rstrip() + "\n\n# from placement profile "
                           f"'{placement}'\n" + instance_group(groups[use_case]))
    return repos


def loadable_models(store: ModelStore, src: Path = MODELS_SRC) -> tuple[list[str], list[str]]:
    """(models whose weights are in the store, messages about the ones skipped)."""
    ready, skipped = [], []
    for model in discover_models(src):
        missing = [w for w in model.weights if not (store.root / w / "manifest.json").is_file()]
        if missing:
            skipped.append(f"{model.use_case}/{model.name}: weights {', '.join(missing)} not "
                           "in the store")
        else:
            ready.append(model.name)
    return ready, skipped


# -- process --------------------------------------------------------------------------
def stub_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["AI_MODELS_DIR"] = str(settings.models_dir)
    # The stub runs Python isolated (PYTHONUTF8 is ignored): give it a UTF-8 locale.
    env.setdefault("LC_ALL", "C.UTF-8")
    env.setdefault("LANG", "C.UTF-8")
    # Keep numerical libraries from oversubscribing a small machine: each model
    # sets its own thread count from its config.
    env.setdefault("OMP_NUM_THREADS", "1")
    # Buffers of 1 MB and more straight from mmap, back to the OS when freed: glibc's
    # adaptive threshold moves big per-request buffers (LLM states, audio, tensors)
    # into the heap, which fragments and only grows over a long run (see the soak).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    return env


@dataclass
class TritonServer:
    settings: Settings
    models: list[str] | None = None  # None: every model whose weights are present
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model -> why it did not load
    stopped: bool = False  # stop() was called: a supervisor must not restart it

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.triton_host}:{self.settings.triton_http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.triton_host}:{self.settings.triton_grpc_port}"

    def command(self) -> list[str]:
        s = self.settings
        state = s.state_dir
        repos = render_repository(state / "model_repository", s.placement)
        backends = make_backend_dir(state)
        if self.models is None:
            self.loaded, self.skipped = loadable_models(ModelStore(s.models_dir))
        else:
            self.loaded = list(self.models)
        cmd = [str(tritonserver_binary())]
        cmd += [f"--model-repository={r}" for r in repos]
        cmd += [
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.loaded],
            "--exit-on-error=false",
            # Not strict: unloading one model must not make the whole server unready
            # (a load balancer would drop it). wait_ready() checks the models itself.
            "--strict-readiness=false",
            f"--http-address={s.triton_host}", f"--http-port={s.triton_http_port}",
            f"--grpc-address={s.triton_host}", f"--grpc-port={s.triton_grpc_port}",
            # Accept the pings of our gRPC clients (pipelines.triton_client.Keepalive):
            # by default tritonserver answers them with GOAWAY too_many_pings.
            *s.triton_keepalive().server_flags(),
            f"--metrics-address={s.triton_host}", f"--metrics-port={s.triton_metrics_port}",
            # Bound shutdown: open STT sequences would otherwise hold it for 30 s.
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--log-verbose={s.triton_log_verbose}",
        ]
        if s.placement == "cpu":  # GPU metrics (nv_gpu_*: the GPU dashboards) only on GPUs
            cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
                    "--cuda-memory-pool-byte-size=0:0"]
        return cmd

    def start(self, *, wait_s: float = 180.0) -> TritonServer:
        self.stopped = False
        return self._start(wait_s)

    def _start(self, wait_s: float) -> TritonServer:
        cmd = self.command()
        out = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(
            cmd, env=stub_environment(self.settings), stdout=out or None,
            stderr=subprocess.STDOUT if out else None, start_new_session=True,
        )
        if out:
            out.close()
        if self.stopped:  # stop() ran while a restart was starting it
            self.reap()
            raise TritonError("tritonserver stopped")
        try:
            self.wait_ready(wait_s)
        except BaseException:
            self.reap()  # not stop(): a supervisor may try again
            raise
        return self

    def wait_ready(self, wait_s: float) -> None:
        """Wait until every requested model is READY or has failed (reasons in ``failed``)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise TritonError(
                    f"tritonserver exited with code {self.proc.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            states = repository_index(self.http_url) if http_ok(
                f"{self.http_url}/v2/health/ready") else None
            if states is not None and all(
                    states.get(m, ("", ""))[0] in ("READY", "UNAVAILABLE") for m in self.loaded):
                self.failed = {m: states[m][1] for m in self.loaded if states[m][0] != "READY"}
                self.loaded = [m for m in self.loaded if m not in self.failed]
                return
            time.sleep(0.2)
        raise TritonError(f"tritonserver not ready after {wait_s:.0f} s")

    def stop(self, timeout_s: float = 20.0, *, drain_s: float = EXIT_TIMEOUT_S) -> None:
        """Unload every model, then SIGINT: tritonserver exits at once with code 0.

        Unloading lets each model finish the requests it is running (up to ``drain_s``)
        and ends the sequences left open in the STT sequence batcher, which a plain
        SIGINT waits for: an open sequence counts as an in-flight inference until it
        ends or idles out (max_sequence_idle_microseconds, 120 s), far beyond
        --exit-timeout-secs, so tritonserver gave up ("Exit timeout expired", code 1).
        """
        self.stopped = True
        if not self.proc or self.proc.poll() is not None:
            if self.proc is not None:
                self.reap()  # it died: its stubs and shared memory may not have
            return
        deadline = time.monotonic() + timeout_s
        unload_all(self.http_url, min(drain_s, timeout_s))
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            pass
        self.reap()  # whatever did not exit with it

    # -- supervision ---------------------------------------------------------------------
    def group_pids(self) -> list[int]:
        """tritonserver and its python-backend stubs: the process group it leads."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp
                pids.append(int(entry.name))
        return pids

    def reap(self) -> None:
        """Kill what is left of the process group (a stub outlives a killed server and
        holds ~300 MB; one ignores SIGTERM) and remove the shared-memory regions its
        stubs used (tritonserver removes them only when it exits normally)."""
        regions = set()
        for pid in self.group_pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            regions.update(a.decode() for a in args
                           if a.startswith(b"triton_python_backend_shm_region_"))
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.proc.poll() is None:
                self.proc.wait()
        for name in regions:
            shm = Path("/dev/shm") / name
            if shm.exists():
                shm.unlink(missing_ok=True)

    def supervise(self, stopping: threading.Event, *, wait_s: float = 180.0,
                  log=print) -> None:
        """Restart tritonserver whenever it dies (back-off 1 s doubling to 30 s) until
        ``stopping`` is set. Clients reconnect by themselves (gRPC back-off <= 2 s)."""
        backoff = 1.0
        while not stopping.wait(0.5):
            if self.stopped:
                return
            if self.proc is None or self.proc.poll() is None:
                continue
            log(f"tritonserver exited with code {self.proc.returncode}; restarting in "
                f"{backoff:.0f} s")
            self.reap()
            if stopping.wait(backoff):
                return
            started = time.monotonic()
            try:
                self._start(wait_s)
            except Exception as exc:  # keep trying: the media server stays up meanwhile
                log(f"tritonserver restart failed: {exc}")
                backoff = min(30.0, backoff * 2)
                continue
            log(f"tritonserver restarted in {time.monotonic() - started:.1f} s")
            backoff = 1.0

    def __enter__(self) -> TritonServer:
        # `with server.start(wait_s=...)`: already running, so not a second process
        # (which used to replace the first in self.proc and leave it running)
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def repository_index(http_url: str) -> dict[str, tuple[str, str]] | None:
    """model name -> (state, reason) from the repository API; None when unreachable."""
    req = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            return {m["name"]: (m.get("state", ""), m.get("reason", ""))
                    for m in json.loads(resp.read())}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def unload_all(http_url: str, wait_s: float) -> bool:
    """Unload every loaded model; True when all are unloaded within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    states = repository_index(http_url)
    if states is None:
        return False
    for name, (state, _reason) in states.items():
        if state in ("READY", "LOADING"):
            req = urllib.request.Request(
                f"{http_url}/v2/repository/models/{name}/unload", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=max(deadline - time.monotonic(), 0.1)):
                    pass
            except (urllib.error.URLError, OSError):
                pass  # reported by the index below
    while time.monotonic() < deadline:
        states = repository_index(http_url)
        if states is None or not any(
                state in ("READY", "LOADING", "UNLOADING") for state, _ in states.values()):
            return states is not None
        time.sleep(0.1)
    return False


def model_ready(http_url: str, name: str) -> bool:
    return http_ok(f"{http_url}/v2/models/{name}/ready")
