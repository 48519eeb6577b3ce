"""The avatar page with its camera on (Chromium's fake camera): a spoken question is
answered by the multimodal model from what the camera shows, and the reply is heard."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser import CHROMIUM, Browser
from tests.conftest import free_port
from tests.test_browser import QUESTION, mic_file
from tests.test_chat_completions import model_successes

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed "
                                                "(scripts/setup.sh installs it)"),
]


@pytest.fixture
async def camera_server(triton, heavy_triton, triton_settings):
    """The media server with the heavy use cases on the heavy tritonserver (no API key:
    the page connects as the demo does)."""
    from aiohttp import web

    from streaming.server import create_app

    settings = triton_settings.replace(
        port=free_port(), triton_url=triton.grpc_url, heavy_idle_unload_s=0.0,
        triton_urls={"multimodal": heavy_triton.grpc_url, "video": heavy_triton.grpc_url})
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    yield f"http://127.0.0.1:{settings.port}"
    await runner.cleanup()


async def test_camera_toggle_question_answered_from_the_camera(camera_server, heavy_triton,
                                                                tmp_path, artifacts):
    before = await model_successes(heavy_triton.http_url, "vlm")
    browser = await Browser(mic_file(tmp_path, QUESTION, 2.0, 12)).start(free_port())
    try:
        await browser.goto(camera_server + "/index.html?test=1&raw=1&autostart=1&camera=1")
        await browser.wait_for("rtmedia.connection === 'connected'", timeout=20)
        button = await browser.eval("[document.getElementById('camera').hidden, "
                                    "document.getElementById('camera').textContent]")
        await browser.wait_for("rtmedia.conversation.length >= 2", timeout=90)
        await browser.wait_for("rtmedia.replyAudioStarts.length > 0", timeout=30)
        await browser.screenshot(artifacts / "avatar_page_camera.png")
        s = await browser.eval("({conversation: rtmedia.conversation, errors: rtmedia.errors})")
        # the turn went to the multimodal model with the camera's frame (Triton counts
        # the request once its last token is sent: wait for that, with the call open)
        for _ in range(120):
            answered = await model_successes(heavy_triton.http_url, "vlm")
            if answered > before:
                break
            await asyncio.sleep(0.25)
        # off again: the next frames stop (the server's last frame goes stale)
        await browser.eval("document.getElementById('camera').click()")
        off = await browser.eval("document.getElementById('camera').textContent")
    finally:
        await browser.close()
    assert button == [False, "Camera off"], button
    assert off == "Camera"
    assert s["conversation"][0]["role"] == "user"
    assert s["conversation"][1]["role"] == "assistant"
    assert not s["errors"], s["errors"]
    assert answered >= before + 1
