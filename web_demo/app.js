// Talking-avatar page: WebRTC to the media server, events on a data channel.
// No build step: plain browser JavaScript. `window.rtmedia` exposes the page state
// (the browser tests read it).
"use strict";

const params = new URLSearchParams(location.search);
const kiosk = params.has("kiosk");
const rawMic = params.has("raw");  // tests: no echo cancellation / noise suppression
const $ = (id) => document.getElementById(id);

const state = window.rtmedia = {
  connection: "idle", captions: [], conversation: [], latencies: [], errors: [],
  videoFrames: 0, fps: 0, audioSamples: [], mouthSamples: [], replyAudioStarts: [],
  speechStops: [], events: 0,
};
let pc = null, dc = null, audioCtx = null, analyser = null, mouth = null, stopAt = null;
let reconnectDelay = 1000, wanted = false, assistantEl = null;

function setState(s) { state.connection = s; $("state").textContent = s; }
function showError(msg) {
  state.errors.push(msg); $("error").textContent = msg;
  setTimeout(() => { if ($("error").textContent === msg) $("error").textContent = ""; }, 8000);
}
function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.innerHTML = `<b>${role === "user" ? "you" : "avatar"}:</b> <span></span>`;
  el.querySelector("span").textContent = text;
  $("conversation").appendChild(el);
  $("conversation").scrollTop = 1e9;
  state.conversation.push({ role, text });
  return el;
}

async function start() {
  wanted = true;
  $("start").textContent = "Stop"; $("start").className = "stop";
  setState("connecting");
  try {
    // a fresh client secret per connection (kiosk reconnects included)
    const auth = window.rtmediaAuth.headers(await window.rtmediaAuth.secret());
    state.authenticated = true;
    const config = await (await fetch("/v1/config", { headers: auth })).json();
    const constraints = rawMic
      ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
      : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    const mic = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    pc.addTransceiver("video", { direction: "recvonly" });
    dc = pc.createDataChannel("oai-events");
    dc.onmessage = (e) => onEvent(JSON.parse(e.data));
    dc.onopen = () => send({ type: "session.update", session: {
      type: "realtime",
      instructions: "You are a friendly talking avatar. Answer in one or two short sentences.",
      audio: { input: { turn_detection: { type: "server_vad", silence_duration_ms: 400 } } },
    } });
    pc.ontrack = (e) => onTrack(e, config);
    pc.onconnectionstatechange = () => {
      setState(pc.connectionState);
      if (pc.connectionState === "connected") reconnectDelay = 1000;
      if (["failed", "disconnected", "closed"].includes(pc.connectionState)) retry();
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
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  } catch (err) {
    showError("Could not connect: " + err.message);
    setState("failed");
    retry();
  }
}

function stop() {
  wanted = false;
  $("start").textContent = "Start"; $("start").className = "";
  teardown(); setState("idle");
}

function teardown() {
  if (pc) { pc.getSenders().forEach((s) => s.track && s.track.stop()); pc.close(); }
  pc = null; dc = null;
}

function retry() {
  if (!wanted || !kiosk) return;  // the kiosk reconnects by itself
  teardown();
  setState(`reconnecting in ${Math.round(reconnectDelay / 1000)} s`);
  setTimeout(() => { if (wanted) start(); }, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, 30000);
}

function send(event) { if (dc && dc.readyState === "open") dc.send(JSON.stringify(event)); }

function onTrack(e, config) {
  if (e.track.kind === "video") {
    $("avatar").srcObject = new MediaStream([e.track]);
    watchVideo(config.mouth);
  } else {
    $("voice").srcObject = new MediaStream([e.track]);
    audioCtx = audioCtx || new AudioContext();
    const src = audioCtx.createMediaStreamSource(new MediaStream([e.track]));
    analyser = audioCtx.createAnalyser();
    analyser.fftSize = 512;
    src.connect(analyser);
    watchAudio();
  }
}

// Reply audio level (WebAudio analyser: getStats levels read 0 when headless).
function watchAudio() {
  const data = new Float32Array(analyser.fftSize);
  let speaking = false;
  const tick = () => {
    if (!analyser) return;
    analyser.getFloatTimeDomainData(data);
    let sum = 0; for (const v of data) sum += v * v;
    const rms = Math.sqrt(sum / data.length);
    const now = performance.now();
    state.audioSamples.push([now, rms]);
    if (state.audioSamples.length > 3000) state.audioSamples.shift();
    if (rms > 0.01 && !speaking) {
      speaking = true;
      state.replyAudioStarts.push(now);
      if (stopAt !== null) {
        const ms = Math.round(now - stopAt);
        state.latencies.push(ms);
        $("latency").textContent = `${ms} ms`;
        stopAt = null;
      }
    } else if (rms < 0.003 && speaking) {
      speaking = false;
    }
    requestAnimationFrame(tick);
  };
  tick();
}

// Frame rate and how much the mouth region changes between frames.
function watchVideo(box) {
  const video = $("avatar");
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let prev = null, count = 0, windowStart = performance.now();
  const onFrame = () => {
    state.videoFrames++; count++;
    const now = performance.now();
    if (now - windowStart >= 1000) {
      state.fps = Math.round((count * 1000) / (now - windowStart));
      $("fps").textContent = `${state.fps} fps`;
      count = 0; windowStart = now;
    }
    if (box && video.videoWidth) {
      const [x0, y0, x1, y1] = box;
      canvas.width = x1 - x0; canvas.height = y1 - y0;
      ctx.drawImage(video, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      if (prev) {
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

function onEvent(ev) {
  state.events++;
  switch (ev.type) {
    case "input_audio_buffer.speech_started":
      $("caption").textContent = "…"; break;
    case "input_audio_buffer.speech_stopped":
      stopAt = performance.now(); state.speechStops.push(stopAt); break;
    case "conversation.item.input_audio_transcription.delta":
      $("caption").textContent = ev.transcript || ev.delta; break;
    case "conversation.item.input_audio_transcription.completed":
      $("caption").textContent = ev.transcript;
      state.captions.push(ev.transcript);
      if (ev.transcript) addMessage("user", ev.transcript);
      break;
    case "response.created":
      assistantEl = null; break;
    case "response.output_audio_transcript.delta":
      if (!assistantEl) assistantEl = addMessage("assistant", "");
      assistantEl.querySelector("span").textContent += ev.delta;
      state.conversation[state.conversation.length - 1].text += ev.delta;
      break;
    case "error":
      showError(ev.error.message); break;
  }
}

$("start").onclick = () => (wanted ? stop() : start());
if (kiosk) { document.body.classList.add("kiosk"); start(); }
if (params.has("autostart")) start();
