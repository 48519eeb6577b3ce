"""Heavy models on demand (streaming/model_loader.py) against the real heavy tritonserver:
load on first use with a ``loading`` callback, one load for concurrent waiters, unload
when idle, least-recently-used unload under a memory budget, busy under the cap, and
``rtmedia models load|unload|status`` through a running media server."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest

from bench.stack import free_port
from pipelines.router import ModelRouter
from pipelines.vision import vision_chat
from streaming.metrics import REGISTRY
from streaming.model_loader import Busy, ModelLoader, store_size

pytestmark = pytest.mark.triton
KEY = "sk-loader-test-0123456789"


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def router(heavy_triton):
    r = ModelRouter(heavy_triton.grpc_url)
    yield r
    await r.close()


async def unloaded(router: ModelRouter, loader: ModelLoader) -> None:
    for use_case in ("multimodal", "video"):
        if await router.route(use_case).client.model_ready(loader.models[use_case].name):
            await loader.unload(use_case)


async def ask(route) -> str:
    q = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    return "".join([t.text async for t in vision_chat(route.client, q, [png()],
                                                      model=route.model, max_tokens=4)])


async def test_load_on_first_use_once_for_concurrent_waiters(router):
    loader = ModelLoader(router, idle_unload_s=0)
    await unloaded(router, loader)
    heard = []

    async def one(i: int) -> str:
        async def loading() -> None:
            heard.append(i)
        async with loader.use("multimodal", loading) as route:
            return await ask(route)

    loader.max_queue = 4
    answers = await asyncio.gather(*(one(i) for i in range(3)))
    assert all(answers)
    assert sorted(heard) == [0, 1, 2]  # each waiter heard "loading"
    model = loader.models["multimodal"]
    assert model.state == "ready" and model.load_s and model.load_s > 0
    assert model.running == 0 and model.waiting == 0
    # warm: no loading any more
    heard.clear()
    async with loader.use("multimodal", lambda: heard.append("x")) as route:
        assert await ask(route)
    assert heard == []


async def test_a_waiter_that_goes_away_does_not_stop_the_load(router):
    """A speculative reply taken back while its model loads: the load goes on, and the
    turn's real request waits for that load instead of starting a second one."""
    loader = ModelLoader(router, idle_unload_s=0)
    await unloaded(router, loader)
    model = loader.models["multimodal"]
    loads = lambda: REGISTRY.get_sample_value(  # noqa: E731
        "rtmedia_model_load_seconds_count", {"model": "vlm"}) or 0.0
    before = loads()
    first = asyncio.ensure_future(loader.ensure_loaded("multimodal"))
    for _ in range(100):
        if model.state == "loading":
            break
        await asyncio.sleep(0.01)
    assert model.state == "loading"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert model.state == "loading" and model.loading is not None
    async with loader.use("multimodal") as route:
        assert await ask(route)
    assert model.state == "ready" and model.loading is None
    assert loads() == before + 1  # one load, which the cancelled waiter started
    await loader.close()


async def test_unload_when_idle(router):
    loader = ModelLoader(router, idle_unload_s=0.3)
    await loader.ensure_loaded("video")
    loader.start()
    try:
        for _ in range(100):
            if loader.models["video"].state == "unloaded":
                break
            await asyncio.sleep(0.1)
    finally:
        await loader.close()
    assert loader.models["video"].state == "unloaded"
    assert not await router.route("video").client.model_ready("video_vlm")


async def test_lru_unload_under_the_memory_budget(router, heavy_store):
    size = store_size(heavy_store.root, "multimodal")
    assert size > 0
    # room for one of the two models only
    loader = ModelLoader(router, idle_unload_s=0, memory_budget_bytes=int(size * 1.5),
                         sizes={"multimodal": size, "video": size})
    await unloaded(router, loader)
    await loader.ensure_loaded("multimodal")
    await loader.ensure_loaded("video")  # the idle multimodal model makes room
    client = router.route("video").client
    assert await client.model_ready("video_vlm")
    assert not await client.model_ready("vlm")
    assert loader.models["multimodal"].state == "unloaded"
    # a model in use is never evicted: loading the other one is refused as busy
    async with loader.use("video"):
        with pytest.raises(Busy, match="memory budget"):
            await loader.ensure_loaded("multimodal")


async def test_busy_beyond_cap_and_queue(router):
    loader = ModelLoader(router, idle_unload_s=0, max_concurrent=1, max_queue=1)
    await loader.ensure_loaded("multimodal")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold():
        async with loader.use("multimodal"):
            entered.set()
            await release.wait()

    first = asyncio.ensure_future(hold())
    await entered.wait()
    second = asyncio.ensure_future(hold())  # waits in the queue
    await asyncio.sleep(0.05)
    assert loader.models["multimodal"].waiting == 1
    with pytest.raises(Busy, match="busy"):
        async with loader.use("multimodal"):
            pass
    release.set()
    await asyncio.gather(first, second)
    assert loader.models["multimodal"].running == 0


@pytest.fixture
async def server(heavy_triton, heavy_store, triton_settings):
    from aiohttp import web

    from streaming.server import create_app

    settings = triton_settings.replace(
        port=free_port(), triton_url=heavy_triton.grpc_url, api_key=KEY,
        models_dir=heavy_store.root, heavy_idle_unload_s=0.0)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    yield f"http://127.0.0.1:{settings.port}"
    await runner.cleanup()


async def test_cli_load_unload_status(server, heavy_triton):
    async def rtmedia(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streaming.cli", "models", *args, "--server", server,
            "--api-key", KEY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    rc, out = await rtmedia("unload", "video_vlm")
    assert rc == 0 and "unloaded" in out, out
    rc, out = await rtmedia("load", "video")
    assert rc == 0 and "ready" in out and "load" in out, out
    router = ModelRouter(heavy_triton.grpc_url)
    try:
        assert await router.route("video").client.model_ready("video_vlm")
    finally:
        await router.close()
    rc, out = await rtmedia("status")
    assert rc == 0, out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "ready" in lines["video_vlm"] and "vlm" in lines and "llm" in lines
    rc, out = await rtmedia("load", "nonesuch")
    assert rc == 1 and "unknown heavy model" in out


def test_rtmedia_up_starts_a_heavy_tritonserver_only_with_vision_models(
        heavy_store, model_store, triton_settings, tmp_path):
    """With a vision checkpoint in the store the heavy use cases (agent LLM preloaded,
    multimodal and video on demand) get their own tritonserver; without one, none."""
    import shutil

    from streaming.heavy_triton import HEAVY_PORT_OFFSET, start_heavy, vision_checkpoints
    from streaming.model_store import ModelStore
    from streaming.triton_server import repository_index

    empty = ModelStore(tmp_path / "empty")
    empty.setup()
    none, same = start_heavy(triton_settings.replace(models_dir=empty.root))
    assert none is None and same.triton_urls == triton_settings.triton_urls
    # a store with the default LLM and a vision checkpoint
    store = ModelStore(tmp_path / "store")
    store.setup()
    shutil.copytree(heavy_store.root / "multimodal" / "tiny-vlm",
                    store.root / "multimodal" / "tiny-vlm")
    for folder in (model_store.root / "agent").iterdir():
        (store.root / "agent" / folder.name).symlink_to(folder)
    assert vision_checkpoints(store.root) == ["multimodal/tiny-vlm"]
    # the heavy server's ports are the realtime ones + the offset
    base = triton_settings.replace(
        models_dir=store.root, state_dir=tmp_path / "state",
        triton_http_port=free_port() - HEAVY_PORT_OFFSET,
        triton_grpc_port=free_port() - HEAVY_PORT_OFFSET,
        triton_metrics_port=free_port() - HEAVY_PORT_OFFSET)
    heavy, routed = start_heavy(base, log=lambda _m: None, preload=["llm"])
    try:
        assert heavy is not None
        for use_case in ("agent", "multimodal", "video"):
            assert routed.triton_urls[use_case] == heavy.grpc_url
        assert "stt" not in routed.triton_urls  # realtime models stay on the first server
        states = repository_index(heavy.http_url)
        assert states is not None and states["llm"][0] == "READY"
        assert states["vlm"][0] != "READY"  # on demand
    finally:
        if heavy:
            heavy.stop()
