// Live captions page: microphone -> 16 kHz PCM16 over the WebSocket protocol.
// Reconnects by itself (jittered back-off, 1-2 s first, at most ~5 s) while started.
"use strict";

const params = new URLSearchParams(location.search);
const rawMic = params.has("raw");
const $ = (id) => document.getElementById(id);
const state = window.rtmedia = { connection: "idle", captions: [], partials: 0, errors: [],
  reconnects: 0, lags: [] };
let ws = null, ctx = null, stream = null, node = null, partialEl = null;
let wanted = false, retryTimer = null, retryDelay = 0, lastVoiceAt = null;

function setState(s) { state.connection = s; $("state").textContent = s; }
function showError(msg) { state.errors.push(msg); $("error").textContent = msg; }
function setButton() {
  $("start").textContent = wanted ? "Stop" : "Start"; $("start").className = wanted ? "stop" : "";
}

function b64(pcm) {
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function openMic() {
  const constraints = rawMic
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
  ctx = new AudioContext();  // the device's rate: the worklet resamples to 16 kHz
  await ctx.audioWorklet.addModule("pcm-worklet.js");
  node = new AudioWorkletNode(ctx, "pcm-capture");
  ctx.createMediaStreamSource(stream).connect(node);
  node.port.onmessage = (e) => {
    const f = e.data, pcm = new Int16Array(f.length);
    let sum = 0;
    for (let i = 0; i < f.length; i++) {
      pcm[i] = Math.max(-1, Math.min(1, f[i])) * 32767; sum += f[i] * f[i];
    }
    // the caption lag is measured from the end of the speech as heard here
    if (Math.sqrt(sum / f.length) > 0.01) lastVoiceAt = performance.now();
    if (ws && ws.readyState === 1) {
      ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: b64(pcm) }));
    }
  };
}

async function start() {
  wanted = true; clearTimeout(retryTimer); setButton();
  $("error").textContent = "";
  setState("connecting");
  try {
    if (!stream) await openMic();
  } catch (err) {
    const denied = err.name === "NotAllowedError" || err.name === "SecurityError";
    showError(denied
      ? "Microphone access is blocked. Allow the microphone for this site (the icon " +
        "left of the address bar), then press Start."
      : `The microphone could not be opened (${err.message || err.name}).`);
    stop(false);
    return;
  }
  try {
    const secret = await window.rtmediaAuth.secret();
    state.authenticated = true;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const sock = ws = new WebSocket(`${proto}://${location.host}/v1/realtime?intent=transcription`,
                                    window.rtmediaAuth.protocols(secret));
    sock.onopen = () => {
      retryDelay = 0;
      setState("connected");
      sock.send(JSON.stringify({ type: "session.update", session: { type: "transcription",
        audio: { input: { format: { type: "audio/pcm", rate: 16000 },
                          turn_detection: { type: "server_vad", silence_duration_ms: 500 } } } } }));
    };
    sock.onmessage = (e) => onEvent(JSON.parse(e.data));
    sock.onclose = () => { if (ws === sock) lost(); };
  } catch (err) {
    if (/needs a key/.test(err.message)) { showError("Could not start: " + err.message); stop(false); return; }
    lost();
  }
}

function lost() {
  ws = null;
  if (!wanted) return;
  state.reconnects++;
  retryDelay = retryDelay ? Math.min(5000, retryDelay * 1.6) : 1000;
  const delay = Math.min(5000, retryDelay * (1 + Math.random() * (retryDelay <= 1000 ? 1 : 0.25)));
  setState(`connection lost — reconnecting in ${Math.ceil(delay / 1000)} s`);
  retryTimer = setTimeout(() => { if (wanted) start(); }, delay);
}

function stop(clearMsg = true) {
  wanted = false; clearTimeout(retryTimer); setButton();
  const sock = ws; ws = null;
  if (sock) sock.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  ctx = stream = node = null;
  setState("idle");
  if (clearMsg) $("error").textContent = "";
}

function onEvent(ev) {
  if (ev.type === "conversation.item.input_audio_transcription.delta") {
    state.partials++;
    if (!partialEl) {
      partialEl = document.createElement("div");
      partialEl.className = "partial";
      $("lines").appendChild(partialEl);
    }
    partialEl.textContent = ev.transcript || ev.delta;
  } else if (ev.type === "conversation.item.input_audio_transcription.completed") {
    if (!partialEl) { partialEl = document.createElement("div"); $("lines").appendChild(partialEl); }
    partialEl.className = ""; partialEl.textContent = ev.transcript; partialEl = null;
    while ($("lines").children.length > 500) $("lines").removeChild($("lines").firstChild);
    state.captions.push(ev.transcript);
    if (lastVoiceAt !== null) {
      const ms = Math.round(performance.now() - lastVoiceAt);
      state.lags.push(ms);
      $("lag").textContent = `${ms} ms`;
    }
  } else if (ev.type === "error") {
    showError(ev.error.message);
  }
}

$("start").onclick = () => (wanted ? stop() : start());
if (params.has("autostart")) start();
