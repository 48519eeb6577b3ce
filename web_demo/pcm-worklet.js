// Collects microphone samples (the AudioContext runs at 16 kHz) into 40 ms blocks.
class PcmCapture extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(640); this.n = 0; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.n++] = ch[i];
        if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice(0)); this.n = 0; }
      }
    }
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
