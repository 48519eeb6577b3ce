"""A minimal Chromium driver over the DevTools Protocol (websockets only).

Debian's chromium, headless, with a fake microphone that plays a WAV file and
loopback ICE candidates allowed (without it Chromium offers no 127.0.0.1 candidate).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, mic_wav: Path | None = None, autoplay: bool = True):
        self.mic_wav = mic_wav
        self.autoplay = autoplay  # False: sound waits for a user gesture, as by default
        self.proc: subprocess.Popen | None = None
        self.profile = tempfile.mkdtemp(prefix="rtmedia-chromium-")
        self.ws = None
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.console: list[str] = []

    async def start(self, port: int) -> Browser:
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=" + ("no-user-gesture-required" if self.autoplay
                                        else "document-user-activation-required"),
                "--allow-loopback-in-peer-connection", f"--remote-debugging-port={port}",
                "--window-size=1100,800", "about:blank"]
        if self.mic_wav:
            args.insert(-1, f"--use-file-for-fake-audio-capture={self.mic_wav}%noloop")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting a daemon, not waiting
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        targets = None
        while time.monotonic() < deadline:
            try:
                targets = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/json")
                if any(t["type"] == "page" for t in targets):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        page = next(t for t in targets or [] if t["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)
        self._reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._read_messages()

    async def _read_messages(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._waiters:
                self._waiters.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))

    async def send(self, method: str, params: dict | None = None) -> dict:
        mid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[mid] = fut
        await self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def add_init_script(self, source: str) -> str:
        """Run ``source`` in every new document before the page's own scripts."""
        result = await self.send("Page.addScriptToEvaluateOnNewDocument", {"source": source})
        return result["identifier"]

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'", timeout=15)

    async def eval(self, expression: str):
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "JS error"))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, poll: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for: {expression}")
            await asyncio.sleep(poll)

    async def viewport(self, width: int, height: int, mobile: bool = False,
                       scale: float = 1.0) -> None:
        """Emulate a screen of this size (CSS pixels), e.g. a 390x844 phone."""
        await self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})

    async def dom_counters(self) -> dict:
        """Documents, DOM nodes and JS event listeners alive in the renderer."""
        await self.send("HeapProfiler.collectGarbage")
        return await self.send("Memory.getDOMCounters")

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())
