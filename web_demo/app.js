// Talking-avatar page: WebRTC to the media server, events on a data channel.
// No build step: plain browser JavaScript. `window.rtmedia` exposes the page state;
// with `?test=1` it also records telemetry the browser tests read (reply audio level,
// mouth pixel changes, phase timeline), which the normal page never computes.
"use strict";

const params = new URLSearchParams(location.search);
const kiosk = params.has("kiosk");
// the camera: what it shows goes with the questions asked while it is on (?camera=1: on)
let cameraOn = params.has("camera");
const testing = params.has("test");
const rawMic = params.has("raw");  // tests: no echo cancellation / noise suppression
const $ = (id) => document.getElementById(id);

const state = window.rtmedia = {
  connection: "idle", phase: "idle", phases: [], captions: [], conversation: [],
  latencies: [], errors: [], videoFrames: 0, fps: 0, muted: false, reconnects: 0,
  connects: 0, loops: 0, frameChains: 0,
  // ?test=1 only
  audioSamples: [], mouthSamples: [], replyAudioStarts: [], speechStops: [],
};

const PHASE_TEXT = {
  idle: "Press Start to talk", connecting: "Connecting…", listening: "Listening",
  heard: "Hearing you", thinking: "Thinking…", speaking: "Speaking",
  interrupted: "Interrupted — go ahead", reconnecting: "Connection lost", error: "Error",
};

// One connection at a time; everything it owns is released by teardown().
let conn = null;          // {id, pc, dc, mic, voiceSource, watchdog, meter}
let wanted = false, retryTimer = null, retryDelay = 0, retryAt = 0;
let audioCtx = null, voiceAnalyser = null, micLevel = 0;
let assistantEl = null, stopAt = null, speaking = false, responseOpen = false;
let phaseTimer = null, lastFrameAt = 0, speakingEnded = 0, wordsFrom = 0;

// -- visible state -----------------------------------------------------------------------
function setState(s) { state.connection = s; $("state").textContent = s; }

function setPhase(p, text) {
  if (state.phase !== p) {
    state.phase = p;
    state.phases.push([Math.round(performance.now()), p]);
    if (state.phases.length > 200) state.phases.shift();
  }
  $("phase").dataset.phase = p;
  $("phase-text").textContent = text || PHASE_TEXT[p] || p;
  $("stage").classList.toggle("offline", p === "reconnecting" || p === "error");
}

function showError(msg, next) {
  state.errors.push(msg);
  $("error").textContent = next ? `${msg}\n${next}` : msg;
}
function clearError() { $("error").textContent = ""; }

function showNotice(text) {
  $("notice").hidden = !text; $("notice").textContent = text || "";
}

function setCaption(text, who) {
  const el = $("caption");
  el.dataset.who = who || "";
  // the end of a long reply: the caption box holds two lines
  el.textContent = text.length > 140 ? "…" + text.slice(-140) : text;
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.innerHTML = `<b>${role === "user" ? "you" : "avatar"}:</b> <span></span>`;
  el.querySelector("span").textContent = text;
  const panel = $("conversation");
  panel.appendChild(el);
  while (panel.children.length > 200) panel.removeChild(panel.firstChild);
  panel.scrollTop = 1e9;
  state.conversation.push({ role, text });
  if (state.conversation.length > 200) state.conversation.shift();
  return el;
}

function setButtons() {
  $("start").textContent = wanted ? "Stop" : "Start";
  $("start").className = wanted ? "stop" : "";
  document.body.classList.toggle("stopped", !wanted);
  $("mute").hidden = !wanted;
  $("mute").textContent = state.muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(state.muted));
  $("camera").hidden = !wanted;
  $("camera").textContent = cameraOn ? "Camera off" : "Camera";
  $("camera").setAttribute("aria-pressed", String(cameraOn));
}

// -- connecting ----------------------------------------------------------------------------
async function start() {
  wanted = true; clearTimeout(retryTimer); retryTimer = null;
  setButtons(); clearError(); showNotice("");
  setState("connecting"); setPhase("connecting");
  const my = conn = { id: ++state.connects, slowProbes: 0 };
  try {
    // the microphone first: its permission prompt (or refusal) comes at once
    const constraints = rawMic
      ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
      : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    let mic;
    try {
      mic = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    } catch (err) {
      throw Object.assign(err, { mic: true });
    }
    if (conn !== my) { mic.getTracks().forEach((t) => t.stop()); return; }
    my.mic = mic;
    mic.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
    // a fresh client secret per connection (reconnects included)
    const auth = window.rtmediaAuth.headers(await window.rtmediaAuth.secret());
    state.authenticated = true;
    const config = await (await fetch("/v1/config", { headers: auth })).json();
    if (conn !== my) return;
    mouthBox = config.mouth;  // the avatar's mouth area (?test=1 telemetry)
    const pc = my.pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    // video both ways: the avatar in, the camera out (a track only while it is on)
    my.video = pc.addTransceiver("video", { direction: "sendrecv" });
    if (cameraOn) attachCamera(my);
    const dc = my.dc = pc.createDataChannel("oai-events");
    dc.onmessage = (e) => { if (conn === my) onEvent(JSON.parse(e.data)); };
    dc.onopen = () => {
      send({ type: "session.update", session: {
        type: "realtime",
        instructions: "You are a friendly talking avatar. Answer in one or two short sentences.",
        audio: { input: { turn_detection: { type: "server_vad", silence_duration_ms: 400 } } },
      } });
      retryDelay = 0;
      setPhase("listening");
    };
    // a lost server shows at once: the channel closes or ICE fails (not only timeouts)
    dc.onclose = () => lost(my, "the server closed the connection");
    pc.ontrack = (e) => { if (conn === my) onTrack(e, config); };
    pc.onconnectionstatechange = () => {
      if (conn !== my) return;
      setState(pc.connectionState);
      if (["failed", "disconnected", "closed"].includes(pc.connectionState)) {
        lost(my, `connection ${pc.connectionState}`);
      }
    };
    pc.oniceconnectionstatechange = () => {
      if (["failed", "disconnected"].includes(pc.iceConnectionState)) lost(my, "network lost");
    };
    await pc.setLocalDescription(await pc.createOffer());
    const resp = await fetch("/v1/realtime/calls", {
      method: "POST", body: pc.localDescription.sdp,
      headers: { "Content-Type": "application/sdp", ...auth },
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `server answered ${resp.status}`);
    }
    if (conn !== my) return;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    my.watchdog = setInterval(() => probe(my), 1000);
    my.meter = setInterval(() => pollMicLevel(my), 100);
  } catch (err) {
    if (conn !== my) return;
    if (err.mic) return micFailed(err);
    if (/needs a key/.test(err.message)) {  // retrying cannot help: say what to change
      teardown(); wanted = false; setButtons(); setState("failed");
      setPhase("error", "Not allowed to connect");
      showError("Could not connect: " + err.message);
      return;
    }
    lost(my, err.message || String(err));
  }
}

// The server's process may vanish without closing anything: a cheap request each
// second tells at once (connection refused) instead of ICE's consent timeout. A busy
// server is not a lost one: only a refused connection, a proxy that cannot reach it
// (502/504) or two probes in a row unanswered for 4 s count.
async function probe(my) {
  if (conn !== my || my.probing) return;
  my.probing = true;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 4000);
  try {
    const r = await fetch("/healthz", { signal: ctl.signal, cache: "no-store" });
    my.slowProbes = 0;
    if (r.status === 502 || r.status === 504) lost(my, `the server is unreachable (${r.status})`);
  } catch (err) {
    if (err.name !== "AbortError" || ++my.slowProbes >= 2) lost(my, "the server is not answering");
  } finally {
    clearTimeout(timer); my.probing = false;
  }
}

function micFailed(err) {
  teardown(); wanted = false; setButtons(); setState("idle");
  const denied = err.name === "NotAllowedError" || err.name === "SecurityError";
  const msg = denied ? "Microphone access is blocked."
    : err.name === "NotFoundError" ? "No microphone found."
      : `The microphone could not be opened (${err.message || err.name}).`;
  const next = denied
    ? "Allow the microphone for this site (the icon left of the address bar, or the " +
      "browser's site settings), then press Start."
    : "Connect a microphone (or free it from another app), then press Start.";
  setPhase("error", msg);
  showError(msg, next);
  showNotice(`${msg} ${next}`);
}

function lost(my, why) {
  if (conn !== my || !wanted) return;
  teardown();
  state.reconnects++;
  // jittered back-off: the first retries within 1-2 s, then up to ~5 s while the page
  // is visible (30 s when hidden), so many pages do not return all at the same instant
  const cap = document.hidden ? 30000 : 5000;
  retryDelay = retryDelay ? Math.min(cap, retryDelay * 1.6) : 1000;
  const delay = Math.min(cap, retryDelay * (1 + Math.random() * (retryDelay <= 1000 ? 1 : 0.25)));
  retryAt = performance.now() + delay;
  setState("reconnecting");
  setPhase("reconnecting", `Connection lost — reconnecting in ${Math.ceil(delay / 1000)} s`);
  showNotice(`Connection lost (${why}). Reconnecting by itself…`);
  retryTimer = setTimeout(() => { retryTimer = null; if (wanted) start(); }, delay);
}

function stop() {
  wanted = false; clearTimeout(retryTimer); retryTimer = null;
  teardown(); setButtons(); setState("idle"); setPhase("idle");
  clearError(); showNotice(""); setCaption("");
}

function teardown() {
  const c = conn; conn = null;
  speaking = false; responseOpen = false; stopAt = null;
  if (!c) return;
  clearInterval(c.watchdog); clearInterval(c.meter); micLevel = 0;
  if (c.dc) { c.dc.onclose = c.dc.onmessage = c.dc.onopen = null; }
  if (c.pc) {
    c.pc.onconnectionstatechange = c.pc.oniceconnectionstatechange = c.pc.ontrack = null;
    c.pc.getSenders().forEach((s) => s.track && s.track.stop());
    c.pc.close();
  }
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
  if (c.voiceSource) c.voiceSource.disconnect();
  voiceAnalyser = null;
  $("avatar").srcObject = null; $("voice").srcObject = null;  // no frozen open mouth
  state.fps = 0; $("fps").textContent = "–";
}

function send(event) {
  if (conn && conn.dc && conn.dc.readyState === "open") conn.dc.send(JSON.stringify(event));
}

// The camera's track goes on the video transceiver while it is on; off, nothing is sent
// and the server stops using its last frame within 2 s.
async function attachCamera(my) {
  try {
    const cam = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    if (conn !== my || !cameraOn) { cam.getTracks().forEach((t) => t.stop()); return; }
    await my.video.sender.replaceTrack(cam.getVideoTracks()[0]);
  } catch (err) {
    cameraOn = false; setButtons();
    showNotice(`No camera (${err.name || err}): questions are answered without it.`);
  }
}

function toggleCamera() {
  cameraOn = !cameraOn;
  setButtons();
  if (!conn || !conn.video) return;
  if (cameraOn) { attachCamera(conn); return; }
  const track = conn.video.sender.track;
  conn.video.sender.replaceTrack(null);
  if (track) track.stop();
}

function toggleMute() {
  state.muted = !state.muted;
  if (conn && conn.mic) conn.mic.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
  setButtons();
  if (state.phase === "listening") setPhase("listening", state.muted ? "Muted" : undefined);
}

// -- media ---------------------------------------------------------------------------------
function context() {
  audioCtx = audioCtx || new AudioContext();
  if (audioCtx.state === "suspended") audioCtx.resume();
  return audioCtx;
}

// The microphone level for the meter: the sender's own statistics (audioLevel of its
// media-source, which Chromium measures anyway), polled every 100 ms: no audio graph
// of our own on the microphone.
async function pollMicLevel(my) {
  if (conn !== my || !my.pc || my.statsBusy) return;
  if (!["listening", "heard"].includes(state.phase) || document.hidden) return;  // not shown
  my.statsBusy = true;
  try {
    const stats = await my.pc.getStats();
    stats.forEach((r) => {
      if (r.type === "media-source" && r.kind === "audio" && r.audioLevel !== undefined) {
        micLevel = r.audioLevel;
      }
    });
  } catch (err) { /* closed meanwhile */ } finally { my.statsBusy = false; }
}

function onTrack(e) {
  if (e.track.kind === "video") {
    $("avatar").srcObject = new MediaStream([e.track]);
    watchVideo();
  } else {
    $("voice").srcObject = new MediaStream([e.track]);
    $("voice").play().catch(() => showNotice(
      "Click or tap the page to hear the avatar: the browser holds sound back until then."));
    const ctx = context();
    conn.voiceSource = ctx.createMediaStreamSource(new MediaStream([e.track]));
    voiceAnalyser = ctx.createAnalyser(); voiceAnalyser.fftSize = 512;
    conn.voiceSource.connect(voiceAnalyser);
  }
}

function audioRunning() { return !!audioCtx && audioCtx.state === "running"; }

function rms(analyser, buf) {
  analyser.getFloatTimeDomainData(buf);
  let sum = 0; for (const v of buf) sum += v * v;
  return Math.sqrt(sum / buf.length);
}

// One animation-frame loop for the page's lifetime (reconnects add none): levels,
// the speaking state, the fps read-out and the retry countdown.
function loop() {
  state.loops++;
  const buf = new Float32Array(512);
  const tick = () => {
    const now = performance.now();
    if (voiceAnalyser) {
      const level = rms(voiceAnalyser, buf);
      if (testing) {
        state.audioSamples.push([now, level]);
        if (state.audioSamples.length > 3000) state.audioSamples.shift();
      }
      if (level > 0.01 && !speaking) {
        speaking = true;
        if (testing) state.replyAudioStarts.push(now);
        if (stopAt !== null) {
          const ms = Math.round(now - stopAt);
          state.latencies.push(ms);
          if (state.latencies.length > 100) state.latencies.shift();
          $("latency").textContent = `${ms} ms`;
          stopAt = null;
        }
        setPhase("speaking");
      } else if (level < 0.003 && speaking) {
        speaking = false;
        speakingEnded = now;
      }
    }
    if (testing) state.reply = { speaking, responseOpen, quietMs: speaking ? 0 : now - speakingEnded };
    if (!speaking && state.phase === "speaking" && !responseOpen && now - speakingEnded > 700) {
      setPhase("listening");
    }
    if (["listening", "heard"].includes(state.phase)) {
      const level = state.muted ? 0 : Math.min(1, Math.sqrt(micLevel) * 1.5);
      $("level").style.transform = `scaleX(${level.toFixed(3)})`;
    }
    if (lastFrameAt && now - lastFrameAt > 1000 && state.fps) {  // no stale fps
      state.fps = 0; $("fps").textContent = "–";
    }
    if (retryTimer && state.phase === "reconnecting") {
      const s = Math.max(0, Math.ceil((retryAt - now) / 1000));
      $("phase-text").textContent = `Connection lost — reconnecting in ${s} s`;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

// Frame rate (and, with ?test=1, how much the mouth region changes between frames).
// One requestVideoFrameCallback chain per page: a new stream on the same element
// continues it.
let videoChain = false, mouthBox = null;
function watchVideo() {
  if (videoChain) return;
  videoChain = true; state.frameChains++;
  const video = $("avatar");
  let canvas = null, ctx = null, prev = null, count = 0, windowStart = performance.now();
  const onFrame = () => {
    state.videoFrames++; count++;
    const now = performance.now();
    lastFrameAt = now;
    if (now - windowStart >= 1000) {
      state.fps = Math.round((count * 1000) / (now - windowStart));
      $("fps").textContent = `${state.fps} fps`;
      count = 0; windowStart = now;
    }
    if (testing && mouthBox && video.videoWidth) {
      canvas = canvas || document.createElement("canvas");
      ctx = ctx || canvas.getContext("2d", { willReadFrequently: true });
      const [x0, y0, x1, y1] = mouthBox;
      canvas.width = x1 - x0; canvas.height = y1 - y0;
      ctx.drawImage(video, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      if (prev && prev.length === px.length) {
        let diff = 0;
        for (let i = 0; i < px.length; i += 4) diff += Math.abs(px[i] - prev[i]);
        state.mouthSamples.push([now, diff / (px.length / 4)]);
        if (state.mouthSamples.length > 3000) state.mouthSamples.shift();
      }
      prev = px;
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// -- protocol events -------------------------------------------------------------------------
function onEvent(ev) {
  switch (ev.type) {
    case "input_audio_buffer.speech_started":
      if (speaking || state.phase === "speaking") {  // barge-in
        setPhase("interrupted");
        clearTimeout(phaseTimer);
        phaseTimer = setTimeout(() => {
          if (state.phase === "interrupted") setPhase("heard");
        }, 1200);
      } else {
        setPhase("heard");
      }
      setCaption("…", "user");
      break;
    case "input_audio_buffer.speech_stopped":
      stopAt = performance.now();
      if (testing) state.speechStops.push(stopAt);
      setPhase("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta":
      setCaption(ev.transcript || ev.delta, "user"); break;
    case "conversation.item.input_audio_transcription.completed":
      setCaption(ev.transcript, "user");
      state.captions.push(ev.transcript);
      if (ev.transcript) addMessage("user", ev.transcript);
      break;
    case "response.created":
      assistantEl = null; responseOpen = true;
      $("voice").muted = false;  // a new reply: its audio is behind the stale tail
      if (state.phase !== "interrupted") setPhase("thinking");
      break;
    case "response.output_audio_transcript.delta":
      if (!assistantEl) assistantEl = addMessage("assistant", "");
      assistantEl.querySelector("span").textContent += ev.delta;
      state.conversation[state.conversation.length - 1].text += ev.delta;
      setCaption(assistantEl.querySelector("span").textContent, "avatar");
      if (!audioRunning() && state.phase === "thinking") {  // no level to go by: the words
        setPhase("speaking"); wordsFrom = performance.now();
      }
      break;
    case "response.done":
      responseOpen = false;
      if (ev.response && ev.response.status === "cancelled" && state.phase === "speaking") {
        setPhase("interrupted");
      } else if (!speaking && state.phase === "thinking" && !(ev.response && ev.response.audio_s)) {
        setPhase("listening");
      } else if (!audioRunning() && state.phase === "speaking") {
        // sound held back by the browser: speaking for as long as the reply's audio lasts
        const left = ((ev.response && ev.response.audio_s) || 0) * 1000 -
          (performance.now() - wordsFrom);
        setTimeout(() => {
          if (state.phase === "speaking" && !audioRunning()) setPhase("listening");
        }, Math.max(0, left));
      }
      break;
    case "output_audio_buffer.cleared":
      // The server dropped the rest of the reply, but the browser's jitter buffer still
      // holds up to a few hundred ms of it (more on a loaded network): silence it here.
      $("voice").muted = true;
      if (speaking || state.phase === "speaking") setPhase("interrupted");
      break;
    case "error":
      showError(ev.error.message); break;
  }
}

// back on screen: a retry that waits longer than the visible cap comes sooner
document.addEventListener("visibilitychange", () => {
  if (document.hidden || !retryTimer || retryAt - performance.now() < 2000) return;
  clearTimeout(retryTimer);
  const delay = 500 + Math.random() * 1000;
  retryAt = performance.now() + delay;
  retryTimer = setTimeout(() => { retryTimer = null; if (wanted) start(); }, delay);
});
// autoplay rules: the first click or tap lets sound (and its level meter) start
document.addEventListener("pointerdown", () => {
  if (audioCtx && audioCtx.state === "suspended") audioCtx.resume();
  const voice = $("voice");
  if (voice.srcObject && voice.paused) voice.play().then(() => showNotice("")).catch(() => {});
});
$("start").onclick = () => (wanted ? stop() : start());
$("mute").onclick = toggleMute;
$("camera").onclick = toggleCamera;
loop();
setButtons();
if (kiosk) document.body.classList.add("kiosk");
if (kiosk || params.has("autostart")) start();
