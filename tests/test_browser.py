"""The web pages in a real headless Chromium with a fake microphone playing espeak speech."""

from __future__ import annotations

import asyncio
import base64
import json
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
            timeout=60)  # a reply may run to its 120-token budget (~35 s of speech)
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



# -- barge-in -------------------------------------------------------------------------------
LONG_QUESTION = "Please tell me a long story about a dragon who learns to bake bread."
INTERRUPTION = "Wait, stop please, what will the weather be like tomorrow in Paris?"
AUDIBLE = 0.01  # reply audio RMS above this: the avatar is talking (the page's own level)
SILENT = 0.003  # and below this it is silent (the page's speech-end level; measured: the
#                 cleared track reads <= 0.0005, the reply's speech a median of ~0.06)

# Runs before the page's scripts (none of this is in app.js):
# - the microphone: the fake capture device (the WAV file with the question) mixed with
#   what the test says through `__bargeIn.say(...)`, so the interruption comes exactly
#   when the reply is fully generated and audibly playing, however slow the CPU;
# - every data-channel event with its arrival time (performance.now());
# - a second session.update after the page's own, for a long reply;
# - the level of the reply audio track, from an AnalyserNode of our own.
BARGE_IN_PROBE = """(() => {
  const rec = window.__bargeIn = {events: [], audio: [], session: SESSION};
  const getUserMedia = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = async function (constraints) {
    const device = await getUserMedia.call(this, constraints);
    const ctx = new AudioContext({sampleRate: 48000});
    const mic = ctx.createMediaStreamDestination();
    ctx.createMediaStreamSource(device).connect(mic);
    rec.say = (b64, rate) => {  // int16 mono PCM; returns when it starts
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer);
      const buf = ctx.createBuffer(1, pcm.length, rate);
      buf.getChannelData(0).set(Float32Array.from(pcm, (v) => v / 32768));
      const src = ctx.createBufferSource();
      src.buffer = buf; src.connect(mic); src.start();
      return performance.now();
    };
    return mic.stream;
  };
  const create = RTCPeerConnection.prototype.createDataChannel;
  RTCPeerConnection.prototype.createDataChannel = function (...args) {
    const ch = create.apply(this, args);
    ch.addEventListener("message", (e) => {
      const t = performance.now();
      try { rec.events.push([t, JSON.parse(e.data)]); } catch (err) { /* not JSON */ }
    });
    // after the page's own onopen handler has sent its session.update
    ch.addEventListener("open", () => setTimeout(() => ch.send(JSON.stringify(
      {type: "session.update", session: rec.session})), 0));
    this.addEventListener("track", (e) => {
      if (e.track.kind !== "audio") return;
      const ctx = new AudioContext();
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;  // 21 ms at 48 kHz: more than one animation frame
      ctx.createMediaStreamSource(new MediaStream([e.track])).connect(analyser);
      const data = new Float32Array(analyser.fftSize);
      const tick = () => {
        analyser.getFloatTimeDomainData(data);
        let sum = 0; for (const v of data) sum += v * v;
        rec.audio.push([performance.now(), Math.sqrt(sum / data.length)]);
        requestAnimationFrame(tick);
      };
      tick();
    });
    return ch;
  };
})();"""

# How far the first reply is: its status once generated (and since when), how long ago it
# became audible, and for how long it has been quiet.
REPLY_PROGRESS = """(() => {
  const r = __bargeIn, now = performance.now();
  if (rtmedia.errors.length) return {errors: rtmedia.errors};
  const created = r.events.find((e) => e[1].type === "response.created");
  if (!created) return {};
  const id = created[1].response.id;
  const done = r.events.find((e) => e[1].type === "response.done" && e[1].response.id === id);
  const loud = r.audio.filter((a) => a[0] > created[0] && a[1] > AUDIBLE);
  return {status: done ? done[1].response.status : null, since_done: done ? now - done[0] : 0,
          played: loud.length ? now - loud[0][0] : 0,
          quiet: loud.length ? now - loud[loud.length - 1][0] : null};
})()""".replace("AUDIBLE", str(AUDIBLE))


async def test_barge_in_stops_the_avatar(media_server, tmp_path, artifacts):
    """The user talks while the avatar is still speaking a reply that has been fully
    generated (WebRTC holds the rest of it in the track): the reply audio at the browser
    falls silent within 300 ms of the user's speech, and the reply is truncated."""
    session = {"type": "realtime", "max_output_tokens": 80, "seed": 7,
               "instructions": "Answer every question with a long story of at least eight "
                               "sentences."}
    interruption = (espeak_speech(INTERRUPTION, rate=16000) * 32767).astype("<i2")
    browser = await Browser(mic_file(tmp_path, LONG_QUESTION, 2.0, 1.0)).start(free_port())
    s = None
    try:
        await browser.add_init_script(BARGE_IN_PROBE.replace("SESSION", json.dumps(session)))
        await browser.goto(media_server.http + "/index.html?raw=1&autostart=1")
        await browser.wait_for("rtmedia.connection === 'connected'", timeout=20)
        # Interrupt once the reply is fully generated (response.done) and has been heard
        # for 2 s: while it is audible, or at once when its end is still to come (when TTS
        # is slower than real time the last sentence starts playing as it is generated).
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            p = await browser.eval(REPLY_PROGRESS)
            assert not p.get("errors"), p["errors"]
            if p.get("status") not in (None, "completed"):
                pytest.fail(f"the reply ended {p['status']} before the user spoke")
            if p.get("status") and p["played"] >= 2000 and \
                    (p["quiet"] < 100 or p["since_done"] > 300):
                break
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"no fully generated reply playing within 120 s: {p}")
            await asyncio.sleep(0.05)
        t_said = await browser.eval(
            f"__bargeIn.say('{base64.b64encode(interruption.tobytes()).decode()}', 16000)")
        started = (f"__bargeIn.events.find(e => e[0] > {t_said} && "
                   "e[1].type === 'input_audio_buffer.speech_started')")
        t_ss = await browser.wait_for(f"{started} && {started}[0]", timeout=10)
        # the window in which the avatar must be silent, then the interruption's caption
        await browser.wait_for(f"performance.now() > {t_ss} + 1600", timeout=5)
        await browser.wait_for("rtmedia.captions.length >= 2", timeout=40)
        await browser.screenshot(artifacts / "avatar_barge_in.png")
    finally:
        try:  # the whole timeline, also when the test fails
            s = await browser.eval("({events: __bargeIn.events, audio: __bargeIn.audio,"
                                   " conversation: rtmedia.conversation, errors: "
                                   "rtmedia.errors, captions: rtmedia.captions})")
            (artifacts / "avatar_barge_in.json").write_text(json.dumps(s))
        except Exception as exc:  # keep the test's own failure
            print("no timeline:", exc)
        await browser.close()
    assert s is not None
    events = [(t, ev) for t, ev in s["events"]]
    audio = np.array(s["audio"])
    assert not s["errors"], s["errors"]

    def first(kind: str, after: float = -1.0, **match):
        return next(((t, ev) for t, ev in events if ev["type"] == kind and t > after and
                     all(ev.get(k) == v for k, v in match.items())), (None, None))

    def level(t0: float, t1: float) -> np.ndarray:
        return audio[(audio[:, 0] >= t0) & (audio[:, 0] < t1), 1]

    t_created, created = first("response.created")
    reply_id = created["response"]["id"]
    item = first("response.output_item.added", response_id=reply_id)[1]["item"]
    t_done, done = next((t, ev) for t, ev in events
                        if ev["type"] == "response.done" and ev["response"]["id"] == reply_id)
    t_play = audio[(audio[:, 0] > t_created) & (audio[:, 1] > AUDIBLE)][0, 0]
    before = level(t_ss - 500, t_ss)
    print(f"\nbarge-in: reply audible {t_play - t_created:.0f} ms after response.created, "
          f"generated {(t_done - t_play) / 1000:.2f} s into playback; the user spoke "
          f"{(t_said - t_play) / 1000:.2f} s into it, speech_started arrived "
          f"{t_ss - t_said:.0f} ms later; level in the 500 ms before max {before.max():.3f}")
    assert before.max() > AUDIBLE, \
        "scenario not reached: the reply was no longer audible when the user spoke"

    # From speech_started until the next reply may start: silent after at most 300 ms.
    t_next = min([t for t, ev in events if t > t_ss and ev["type"] in
                  ("response.created", "output_audio_buffer.started")] + [t_ss + 1500])
    window = audio[(audio[:, 0] >= t_ss) & (audio[:, 0] < t_next)]
    audible = window[window[:, 1] >= SILENT]
    t_quiet = audible[-1, 0] if audible.size else t_ss
    stop_ms = t_quiet - t_ss
    after, talk = level(t_quiet + 1, t_next), level(t_play, t_said)
    print(f"barge-in: reply audio silent {stop_ms:.0f} ms after speech_started arrived, "
          f"then max level {after.max() if after.size else 0:.5f} for {t_next - t_quiet:.0f}"
          f" ms (speech: median {np.median(talk[talk > SILENT]):.3f}); events: "
          f"{[(round(t - t_ss), ev['type']) for t, ev in events if t_ss <= t < t_next]}")
    assert t_next - t_ss >= 1000, "the next reply started too soon to judge the silence"
    assert stop_ms <= 300, f"the avatar was still talking {stop_ms:.0f} ms after the user began"

    # The server says so: reply audio cleared, the assistant item truncated where it was.
    t_cleared, _ = first("output_audio_buffer.cleared", after=t_ss - 1)
    t_trunc, trunc = first("conversation.item.truncated", after=t_ss - 1)
    assert t_cleared is not None and t_trunc is not None, \
        [ev["type"] for t, ev in events if t >= t_ss]
    # what the browser heard: the time since the reply became audible, less the stalls
    # (quiet for over a second: TTS slower than real time) but for a pause's worth each
    heard = audio[(audio[:, 0] >= t_play) & (audio[:, 0] < t_ss)]
    loud_t = heard[heard[:, 1] > SILENT, 0]
    gaps = np.diff(loud_t)
    heard_ms = t_ss - t_play - float(np.sum(gaps[gaps > 1000] - 300))
    audio_ms = done["response"]["audio_s"] * 1000
    print(f"barge-in: cleared {t_cleared - t_ss:.0f} ms and truncated {t_trunc - t_ss:.0f} "
          f"ms after speech_started; audio_end_ms {trunc['audio_end_ms']} of {audio_ms:.0f}"
          f" (heard ~{heard_ms:.0f} ms, {np.sum(gaps > 1000)} stalls)")
    assert trunc["item_id"] == item["id"], (trunc, item)
    assert 0 < trunc["audio_end_ms"] < audio_ms, (trunc, audio_ms)
    assert abs(trunc["audio_end_ms"] - heard_ms) < 2000, (trunc, heard_ms)

    # The page shows the interrupted reply, then the interruption.
    roles = [m["role"] for m in s["conversation"]]
    assert roles[:3] == ["user", "assistant", "user"], s["conversation"]
    assert s["conversation"][1]["text"], s["conversation"]
    assert word_error_rate(INTERRUPTION, s["captions"][1]) <= 0.5, s["captions"]
