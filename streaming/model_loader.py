"""Heavy models on demand: load on first use, unload when idle or to fit a memory budget.

The vision-language models (multimodal ``vlm``, video ``video_vlm``) are too big to
keep resident next to everything else, and most sessions never use them. So the
heavy tritonserver starts without them; the first request that needs one loads it
through Triton's repository API (its caller hears ``loading`` meanwhile instead of
an error), and the loader unloads it again after ``idle_unload_s`` without use, or
the least recently used idle model when loading another would exceed the memory
budget (GPU memory or RAM: the models' weights sizes from the store's manifests).

Each heavy model runs at most ``max_concurrent`` requests per replica; up to
``max_queue`` more wait their turn and anything beyond is refused at once with
``Busy`` (the HTTP door answers 429, the Realtime session an ``error`` event with
code ``busy``): a heavy backlog never grows without bound, and realtime models
live on the other tritonserver, so they never queue behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from pipelines.router import ModelRouter, Route
from pipelines.triton_client import TritonModelError
from pipelines.vision import VisionToken, vision_chat
from streaming import metrics as M

log = logging.getLogger(__name__)
# The heavy models this loader manages (use case -> model when the router names none)
HEAVY_MODELS = {"multimodal": "vlm", "video": "video_vlm"}
HEAVY_USE_CASES = tuple(HEAVY_MODELS)

LOAD_SECONDS = Histogram("rtmedia_model_load_seconds", "Heavy model load time (on demand)",
                         ["model"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
                         registry=M.REGISTRY)
UNLOAD_SECONDS = Histogram("rtmedia_model_unload_seconds", "Heavy model unload time",
                           ["model"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
                           registry=M.REGISTRY)
UNLOADS = Counter("rtmedia_model_unloads_total", "Heavy models unloaded, by why",
                  ["model", "reason"], registry=M.REGISTRY)
RESIDENT = Gauge("rtmedia_model_resident", "1 while the heavy model is loaded", ["model"],
                 registry=M.REGISTRY)
RESIDENT_BYTES = Gauge("rtmedia_model_resident_bytes",
                       "Weights of the loaded heavy models (the budget counts these)",
                       registry=M.REGISTRY)
INFLIGHT = Gauge("rtmedia_heavy_requests_inflight", "Heavy requests running", ["model"],
                 registry=M.REGISTRY)
REFUSED = Counter("rtmedia_heavy_requests_busy_total", "Heavy requests refused as busy",
                  ["model"], registry=M.REGISTRY)


class Busy(TritonModelError):
    """The heavy model is at its concurrency cap and queue, or memory is taken."""

    code = "busy"  # the error code a Realtime session reports


class ModelUnavailable(TritonModelError):
    """The model cannot be loaded (no weights, load failed, Triton down)."""

    code = "model_unavailable"


@dataclass
class HeavyModel:
    use_case: str
    name: str
    size_bytes: int = 0
    state: str = "unloaded"  # unloaded | loading | ready | unloading
    last_used: float = 0.0
    running: int = 0
    waiting: int = 0
    load_s: float | None = None
    error: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    slots: asyncio.Semaphore | None = None
    loading: asyncio.Task | None = None  # the load in progress, which waiters share

    def status(self) -> dict:
        return {"name": self.name, "use_case": self.use_case, "state": self.state,
                "size_bytes": self.size_bytes, "running": self.running,
                "waiting": self.waiting, "last_used": self.last_used,
                "load_s": self.load_s, "error": self.error}


def store_size(models_dir: Path, use_case: str) -> int:
    """Bytes of the checkpoint the model would load: the newest one of the use case
    (as the models' ``weights: "<use_case>/*"`` pick it); 0 when none is there."""
    import json

    best, size = -1.0, 0
    for manifest in (models_dir / use_case).glob("*/manifest.json"):
        if not (manifest.parent / "config.json").is_file():
            continue
        mtime = manifest.stat().st_mtime
        if mtime > best:
            best = mtime
            size = sum(int(f["size"]) for f in json.loads(manifest.read_text())["files"])
    return size


class ModelLoader:
    def __init__(self, router: ModelRouter, *, idle_unload_s: float = 600.0,
                 memory_budget_bytes: int = 0, max_concurrent: int = 1, max_queue: int = 4,
                 sizes: dict[str, int] | None = None, load_timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.router = router
        self.idle_unload_s = idle_unload_s
        self.memory_budget_bytes = memory_budget_bytes
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.load_timeout_s = load_timeout_s
        self.clock = clock
        for use_case, name in HEAVY_MODELS.items():
            router.models.setdefault(use_case, name)
        self.models = {uc: HeavyModel(uc, router.models[uc], (sizes or {}).get(uc, 0))
                       for uc in HEAVY_USE_CASES}
        self._reaper: asyncio.Task | None = None
        # use cases capped like the heavy models but always loaded (the agent LLM)
        self.fixed: dict[str, HeavyModel] = {}

    # -- use ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, use_case: str,
                  on_loading: Callable[[], Awaitable[None]] | None = None
                  ) -> AsyncIterator[Route]:
        """The route to a loaded heavy model, holding one of its slots meanwhile. Another
        use case (the agent LLM, loaded at start) gets the same cap, without loading."""
        model = self.models.get(use_case)
        managed = model is not None
        if model is None:
            model = self.fixed.get(use_case)
            if model is None:
                name = self.router.route(use_case).model
                model = self.fixed[use_case] = HeavyModel(use_case, name, state="ready")
        if model.slots is None:
            model.slots = asyncio.Semaphore(self.max_concurrent)
        if model.running + model.waiting >= self.max_concurrent + self.max_queue:
            REFUSED.labels(model.name).inc()
            raise Busy(f"{model.name} is busy ({model.running} running, {model.waiting} "
                       "waiting); try again shortly")
        model.waiting += 1
        try:
            if managed:
                await self.ensure_loaded(use_case, on_loading)
            await model.slots.acquire()
        finally:
            model.waiting -= 1
        model.running += 1
        INFLIGHT.labels(model.name).set(model.running)
        try:
            yield self.router.route(use_case)
        finally:
            model.running -= 1
            model.last_used = self.clock()
            INFLIGHT.labels(model.name).set(model.running)
            model.slots.release()

    async def ensure_loaded(self, use_case: str,
                            on_loading: Callable[[], Awaitable[None]] | None = None) -> None:
        model = self.models[use_case]
        client = self.router.route(use_case).client
        if model.state == "ready" and await client.model_ready(model.name):
            model.last_used = self.clock()
            return
        if on_loading is not None:
            await on_loading()
        async with model.lock:  # one load at a time per model; the others wait for it
            if model.loading is None:
                if await client.model_ready(model.name):
                    self._mark(model, "ready")
                    model.last_used = self.clock()
                    return
                await self._make_room(model)
                model.loading = asyncio.ensure_future(self._load(model, client))
                # read its error even when every waiter went away before it ended
                model.loading.add_done_callback(
                    lambda t: None if t.cancelled() else t.exception())
            loading = model.loading
        # Shielded: a waiter that goes away (a speculative reply taken back) must not
        # stop a load the next request of the turn needs; the model would be left
        # "loading" and loaded a second time.
        await asyncio.shield(loading)
        model.last_used = self.clock()

    async def _load(self, model: HeavyModel, client) -> None:
        self._mark(model, "loading")
        started = self.clock()
        try:
            await client.load(model.name, timeout=self.load_timeout_s)
        except Exception as exc:
            self._mark(model, "unloaded")
            model.error = str(exc)
            raise ModelUnavailable(f"{model.name} could not be loaded: {exc}") from exc
        finally:
            model.loading = None
        model.load_s = self.clock() - started
        model.error = ""
        LOAD_SECONDS.labels(model.name).observe(model.load_s)
        log.info("loaded %s in %.1f s", model.name, model.load_s)
        self._mark(model, "ready")

    async def _make_room(self, wanted: HeavyModel) -> None:
        """Unload least recently used idle models until ``wanted`` fits the budget."""
        if self.memory_budget_bytes <= 0:
            return
        while True:
            resident = [m for m in self.models.values()
                        if m is not wanted and m.state in ("ready", "loading")]
            if sum(m.size_bytes for m in resident) + wanted.size_bytes \
                    <= self.memory_budget_bytes:
                return
            idle = sorted((m for m in resident if m.state == "ready" and not m.running
                           and not m.waiting), key=lambda m: m.last_used)
            if not idle:
                REFUSED.labels(wanted.name).inc()
                raise Busy(f"{wanted.name} needs {wanted.size_bytes} bytes and the memory "
                           "budget is taken by models in use; try again shortly")
            await self._unload(idle[0], "lru")

    # -- unload ------------------------------------------------------------------------
    async def unload(self, use_case: str) -> None:
        await self._unload(self.models[use_case], "manual")

    async def _unload(self, model: HeavyModel, reason: str) -> None:
        client = self.router.route(model.use_case).client
        self._mark(model, "unloading")
        started = self.clock()
        await client.unload(model.name)
        # Triton unloads asynchronously: wait until the memory is really given back
        deadline = started + 30.0
        while self.clock() < deadline:
            if not await client.model_ready(model.name):
                break
            await asyncio.sleep(0.05)
        UNLOAD_SECONDS.labels(model.name).observe(self.clock() - started)
        UNLOADS.labels(model.name, reason).inc()
        log.info("unloaded %s (%s)", model.name, reason)
        self._mark(model, "unloaded")

    async def unload_idle(self) -> list[str]:
        """Unload the models unused for ``idle_unload_s``; return their names."""
        now, gone = self.clock(), []
        for model in self.models.values():
            if model.state == "ready" and not model.running and not model.waiting \
                    and now - model.last_used >= self.idle_unload_s and not model.lock.locked():
                async with model.lock:
                    await self._unload(model, "idle")
                gone.append(model.name)
        return gone

    def _mark(self, model: HeavyModel, state: str) -> None:
        model.state = state
        RESIDENT.labels(model.name).set(1 if state == "ready" else 0)
        RESIDENT_BYTES.set(sum(m.size_bytes for m in self.models.values()
                               if m.state == "ready"))

    # -- status and the idle reaper ----------------------------------------------------
    async def status(self) -> list[dict]:
        """Every heavy model, with the state Triton reports (another replica may have
        loaded or unloaded it)."""
        out = []
        for model in self.models.values():
            if model.state in ("ready", "unloaded"):
                ready = await self.router.route(model.use_case).client.model_ready(model.name)
                self._mark(model, "ready" if ready else "unloaded")
            out.append(model.status())
        return out

    def find(self, name: str) -> str:
        """The use case of a heavy model given by name or use case."""
        for use_case, model in self.models.items():
            if name in (use_case, model.name):
                return use_case
        raise KeyError(f"unknown heavy model {name!r}; known: "
                       + ", ".join(m.name for m in self.models.values()))

    def start(self) -> None:
        if self._reaper is None and self.idle_unload_s > 0:
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        period = min(max(self.idle_unload_s / 4, 0.05), 10.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.unload_idle()
            except Exception as exc:  # Triton down: try again next period
                log.warning("idle unload failed: %s", exc)

    async def close(self) -> None:
        for model in self.models.values():
            if model.loading is not None:
                model.loading.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None


@dataclass
class LoadedVision:
    """The voice agent's way to the multimodal model (pipelines.vision.VisionBackend):
    through the loader, so a turn with an image loads the model on first use and
    counts against its cap like any other heavy request."""

    loader: ModelLoader
    use_case: str = "multimodal"

    def chat(self, messages: list[dict], images: list[bytes], *, max_tokens: int,
             temperature: float | None, seed: int | None,
             on_loading: Callable[[], Awaitable[None]] | None = None
             ) -> AsyncIterator[VisionToken]:
        return self._chat(messages, images, on_loading, max_tokens=max_tokens,
                          temperature=temperature, seed=seed)

    async def _chat(self, messages: list[dict], images: list[bytes], on_loading, **opts
                    ) -> AsyncIterator[VisionToken]:
        async with self.loader.use(self.use_case, on_loading) as route:
            gen = vision_chat(route.client, messages, images, model=route.model, **opts)
            async with contextlib.aclosing(gen):
                async for tok in gen:
                    yield tok
