// Microphone samples -> 16 kHz blocks of 40 ms (640 samples) for the captions page.
// The AudioContext runs at the device's own rate: Firefox refuses to connect a
// microphone to a context made with another sampleRate ("AudioContext({sampleRate:
// 16000})" fails there), so the resampling happens here. Each output sample is the
// mean of the input samples since the previous one (2-3 at 44.1/48 kHz): a boxcar
// low-pass and decimation in one, enough for speech recognition.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;  // input samples per output sample (global sampleRate)
    this.pos = 0; this.acc = 0; this.cnt = 0;
    this.buf = new Float32Array(640); this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.acc += ch[i]; this.cnt++; this.pos += 1;
        if (this.pos >= this.step) {
          this.pos -= this.step;
          this.buf[this.n++] = this.acc / this.cnt;
          this.acc = 0; this.cnt = 0;
          if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice(0)); this.n = 0; }
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
