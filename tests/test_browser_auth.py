"""The web pages in headless Chromium on a server that has an API key: the page never
holds the key, it gets an ephemeral client secret and connects with it."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest
from aiohttp import web

from bench.stack import free_port
from pipelines.text import word_error_rate
from streaming.server import SESSIONS, create_app
from tests.browser import CHROMIUM, Browser

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed "
                                                "(scripts/setup.sh installs it)"),
]

from tests.test_browser import mic_file  # noqa: E402

KEY = "sk-browser-" + "c0ffee1234" * 3
CAPTION = "Captions appear in the page while the speaker is still talking."


@contextlib.asynccontextmanager
async def keyed_media_server(triton, triton_settings, **changes):
    """Built like conftest's media_server, with an API key."""
    settings = triton_settings.replace(port=free_port(), triton_url=triton.grpc_url,
                                       max_sessions=4, api_key=KEY, **changes)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    try:
        yield SimpleNamespace(app=app, settings=settings,
                              http=f"http://127.0.0.1:{settings.port}")
    finally:
        await runner.cleanup()


async def page_state(browser: Browser) -> dict:
    return await browser.eval("""({captions: rtmedia.captions, errors: rtmedia.errors,
        connection: rtmedia.connection, authenticated: !!rtmedia.authenticated,
        expiresAt: window.rtmediaAuth.expiresAt,
        page: document.documentElement.outerHTML, state: JSON.stringify(rtmedia)})""")


async def test_pages_connect_with_a_client_secret(triton, triton_settings, tmp_path, artifacts):
    """RTMEDIA_DEMO_PAGES_MINT=1: the captions page (WebSocket, secret as subprotocol)
    transcribes, the avatar page (WebRTC, secret as bearer for /v1/config and the call)
    connects and shows video."""
    async with keyed_media_server(triton, triton_settings, demo_pages_mint=True) as server:
        browser = await Browser(mic_file(tmp_path, CAPTION, 1.0, 4)).start(free_port())
        try:
            await browser.goto(server.http + "/captions.html?raw=1&autostart=1")
            await browser.wait_for("rtmedia.captions.length > 0 || rtmedia.errors.length > 0",
                                   timeout=40)
            captions = await page_state(browser)
            await browser.screenshot(artifacts / "captions_page_with_key.png")
            await browser.eval("document.getElementById('start').click()")  # Stop

            await browser.goto(server.http + "/index.html?raw=1&autostart=1")
            await browser.wait_for("rtmedia.connection === 'connected' || "
                                   "rtmedia.errors.length > 0", timeout=20)
            await browser.wait_for("rtmedia.videoFrames >= 25 || rtmedia.errors.length > 0",
                                   timeout=10)
            avatar = await page_state(browser)
            await browser.eval("document.getElementById('start').click()")
        finally:
            await browser.close()
        for _ in range(100):
            if not server.app[SESSIONS]:
                break
            await asyncio.sleep(0.05)
        assert not server.app[SESSIONS]
    assert not captions["errors"], captions["errors"]
    assert captions["authenticated"] and captions["expiresAt"]
    assert word_error_rate(CAPTION, captions["captions"][0]) <= 0.4, captions["captions"]
    assert not avatar["errors"], avatar["errors"]
    assert avatar["connection"] == "connected" and avatar["authenticated"]
    for state in (captions, avatar):  # the page never saw the key
        assert KEY not in state["page"] and KEY not in state["state"]


async def test_pages_refused_without_a_secret(triton, triton_settings, tmp_path):
    """A key and no way to mint: the pages say why, and no session is opened."""
    async with keyed_media_server(triton, triton_settings) as server:
        browser = await Browser(mic_file(tmp_path, CAPTION, 0.5, 1)).start(free_port())
        try:
            await browser.goto(server.http + "/captions.html?raw=1&autostart=1")
            await browser.wait_for("rtmedia.errors.length > 0", timeout=15)
            captions = await page_state(browser)
            # the key in the URL is no way in either
            await browser.goto(server.http + f"/index.html?raw=1&autostart=1&api_key={KEY}")
            await browser.wait_for("rtmedia.errors.length > 0", timeout=15)
            avatar = await page_state(browser)
            opened = len(server.app[SESSIONS])
        finally:
            await browser.close()
    assert opened == 0
    for state in (captions, avatar):
        assert not state["authenticated"]
        assert "RTMEDIA_DEMO_PAGES_MINT" in state["errors"][0], state["errors"]
