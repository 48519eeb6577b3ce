// Microphone samples -> 16 kHz blocks of 40 ms (640 samples) for the captions page.
// The AudioContext runs at the device's own rate: Firefox refuses to connect a
// microphone to a context made with another sampleRate ("AudioContext({sampleRate:
// 16000})" fails there), so the resampling happens here, by linear interpolation
// (speech for Whisper has nothing above 8 kHz worth keeping; the device's own
// anti-alias filter and the 48->16 kHz ratio keep aliasing low).
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;  // input samples per output sample (global sampleRate)
    this.pos = 0;                    // position of the next output sample in the input
    this.last = 0;                   // the previous block's last sample
    this.buf = new Float32Array(640); this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      // output samples at input positions pos, pos+step, ...; index -1 is `last`
      while (this.pos < ch.length - 1) {
        const i = Math.floor(this.pos), f = this.pos - i;
        const a = i < 0 ? this.last : ch[i];
        this.buf[this.n++] = a + (ch[i + 1] - a) * f;
        if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice(0)); this.n = 0; }
        this.pos += this.step;
      }
      this.pos -= ch.length;
      this.last = ch[ch.length - 1];
    }
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
