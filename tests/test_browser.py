"""The web pages in a real headless Chromium with a fake microphone playing espeak speech."""

from __future__ import annotations

import asyncio
import statistics

import numpy as np
import pytest

from pipelines.audio import write_wav
from pipelines.speech import espeak_speech
from pipelines.text import word_error_rate
from streaming.server import ROUTER, SESSIONS
from tests.browser import CHROMIUM, Browser
from tests.conftest import free_port

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed "
                                                "(scripts/setup.sh installs it)"),
]

QUESTION = "What is the capital of France?"
CAPTION = "Captions appear in the page while the speaker is still talking."


def mic_file(tmp_path, text: str, lead_s: float, tail_s: float):
    rate = 48000
    audio = np.concatenate([np.zeros(int(lead_s * rate), np.float32),
                            espeak_speech(text, rate=rate),
                            np.zeros(int(tail_s * rate), np.float32)])
    path = tmp_path / "mic.wav"
    write_wav(path, audio, rate)
    return path


async def test_talking_avatar_page(media_server, tmp_path, artifacts):
    browser = await Browser(mic_file(tmp_path, QUESTION, 1.5, 12)).start(free_port())
    try:
        await browser.goto(media_server.http + "/index.html?raw=1&autostart=1")
        await browser.wait_for("rtmedia.connection === 'connected'", timeout=20)
        await browser.wait_for("rtmedia.captions.length > 0", timeout=30)
        caption = await browser.eval("rtmedia.captions[0]")
        await browser.wait_for("rtmedia.replyAudioStarts.length > 0", timeout=30)
        await browser.wait_for("rtmedia.conversation.length >= 2", timeout=10)
        # let the reply play out and the avatar fall silent again
        await browser.wait_for(
            "rtmedia.audioSamples.length > 0 && performance.now() - "
            "Math.max(...rtmedia.audioSamples.filter(s => s[1] > 0.01).map(s => s[0])) > 1500",
            timeout=30)
        await browser.screenshot(artifacts / "avatar_page.png")
        s = await browser.eval("""({fps: rtmedia.fps, frames: rtmedia.videoFrames,
            audio: rtmedia.audioSamples, mouth: rtmedia.mouthSamples,
            latencies: rtmedia.latencies, errors: rtmedia.errors,
            conversation: rtmedia.conversation})""")
        await browser.eval("document.getElementById('start').click()")  # Stop
        await browser.wait_for("rtmedia.connection === 'idle'", timeout=5)
    finally:
        await browser.close()
    # Stopping the call ends the server's session and its Triton streams.
    for _ in range(100):
        if not media_server.app[SESSIONS]:
            break
        await asyncio.sleep(0.05)
    assert not media_server.app[SESSIONS]
    assert word_error_rate(QUESTION, caption) <= 0.5, caption
    assert s["conversation"][0]["role"] == "user"
    assert s["conversation"][1]["role"] == "assistant" and s["conversation"][1]["text"]
    assert not s["errors"], s["errors"]
    assert s["fps"] >= 20, s["fps"]
    assert s["latencies"] and s["latencies"][0] > 0

    # Mouth activity while the reply is audible vs while all is silent.
    audio = np.array(s["audio"])
    mouth = np.array(s["mouth"])

    def level_at(t: float) -> float:
        i = np.searchsorted(audio[:, 0], t)
        window = audio[max(0, i - 6):i + 6, 1]
        return float(window.max()) if window.size else 0.0

    speaking = [d for t, d in mouth if level_at(t) > 0.02]
    silent = [d for t, d in mouth if level_at(t) < 0.002 and t > audio[0, 0]]
    assert len(speaking) >= 10 and len(silent) >= 10, (len(speaking), len(silent))
    assert statistics.median(speaking) > 3 * max(statistics.median(silent), 0.2), (
        statistics.median(speaking), statistics.median(silent))
    assert statistics.median(silent) < 2.0


async def test_captions_page(media_server, tmp_path, artifacts):
    browser = await Browser(mic_file(tmp_path, CAPTION, 1.0, 4)).start(free_port())
    try:
        await browser.goto(media_server.http + "/captions.html?raw=1&autostart=1")
        await browser.wait_for("rtmedia.captions.length > 0", timeout=40)
        state = await browser.eval("({captions: rtmedia.captions, partials: rtmedia.partials,"
                                   " errors: rtmedia.errors})")
        text = await browser.eval("document.getElementById('lines').innerText")
        await browser.screenshot(artifacts / "captions_page.png")
    finally:
        await browser.close()
    assert word_error_rate(CAPTION, state["captions"][0]) <= 0.4, state
    assert state["partials"] >= 2  # captions appeared while the speech went on
    assert state["captions"][0] in text
    assert not state["errors"]


async def test_a_vanished_browser_leaves_nothing_running(media_server, tmp_path):
    import signal

    browser = await Browser(mic_file(tmp_path, QUESTION, 0.5, 20)).start(free_port())
    try:
        await browser.goto(media_server.http + "/index.html?raw=1&autostart=1")
        await browser.wait_for("rtmedia.connection === 'connected'", timeout=20)
        assert media_server.app[SESSIONS]
        browser.proc.send_signal(signal.SIGKILL)  # no hang-up, no close: just gone
        browser.proc.wait()
        for _ in range(200):
            if not media_server.app[SESSIONS]:
                break
            await asyncio.sleep(0.05)
    finally:
        await browser.close()
    assert not media_server.app[SESSIONS]  # within ~5 s, not ICE's ~30 s
    assert media_server.app[ROUTER].open_streams() == 0
