// Live captions page: microphone -> 16 kHz PCM16 over the WebSocket protocol.
"use strict";

const params = new URLSearchParams(location.search);
const rawMic = params.has("raw");
const $ = (id) => document.getElementById(id);
const state = window.rtmedia = { connection: "idle", captions: [], partials: 0, errors: [] };
let ws = null, ctx = null, stream = null, partialEl = null, stopAt = null;

function setState(s) { state.connection = s; $("state").textContent = s; }
function showError(msg) { state.errors.push(msg); $("error").textContent = msg; }

function b64(pcm) {
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function start() {
  $("start").textContent = "Stop"; $("start").className = "stop";
  setState("connecting");
  try {
    const constraints = rawMic
      ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
      : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    ctx = new AudioContext({ sampleRate: 16000 });
    await ctx.audioWorklet.addModule("pcm-worklet.js");
    const node = new AudioWorkletNode(ctx, "pcm-capture");
    ctx.createMediaStreamSource(stream).connect(node);
    const secret = await window.rtmediaAuth.secret();
    state.authenticated = true;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/v1/realtime?intent=transcription`,
                       window.rtmediaAuth.protocols(secret));
    ws.onopen = () => {
      setState("connected");
      ws.send(JSON.stringify({ type: "session.update", session: { type: "transcription",
        audio: { input: { format: { type: "audio/pcm", rate: 16000 },
                          turn_detection: { type: "server_vad", silence_duration_ms: 500 } } } } }));
      node.port.onmessage = (e) => {
        if (ws.readyState !== 1) return;
        const f = e.data, pcm = new Int16Array(f.length);
        for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-1, Math.min(1, f[i])) * 32767;
        ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: b64(pcm) }));
      };
    };
    ws.onmessage = (e) => onEvent(JSON.parse(e.data));
    ws.onclose = () => setState("closed");
    ws.onerror = () => showError("connection to the server failed");
  } catch (err) {
    showError("Could not start: " + err.message);
    setState("failed");
  }
}

function stop() {
  $("start").textContent = "Start"; $("start").className = "";
  if (ws) ws.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  ws = ctx = stream = null;
  setState("idle");
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
  } else if (ev.type === "input_audio_buffer.speech_stopped") {
    stopAt = performance.now();
  } else if (ev.type === "conversation.item.input_audio_transcription.completed") {
    if (!partialEl) { partialEl = document.createElement("div"); $("lines").appendChild(partialEl); }
    partialEl.className = ""; partialEl.textContent = ev.transcript; partialEl = null;
    state.captions.push(ev.transcript);
    if (stopAt !== null) { $("lag").textContent = `${Math.round(performance.now() - stopAt)} ms`; stopAt = null; }
  } else if (ev.type === "error") {
    showError(ev.error.message);
  }
}

$("start").onclick = () => (ws ? stop() : start());
if (params.has("autostart")) start();
