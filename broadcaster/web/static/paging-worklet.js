// Live paging capture: hands the page the microphone's samples in 20 ms frames
// (960 samples at 48 kHz), each with the context time of its first sample.
const FRAME = 960;

class PagingCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(FRAME);
    this.n = 0;
    this.t0 = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        if (this.n === 0) this.t0 = currentTime + i / sampleRate;
        this.buf[this.n++] = ch[i];
        if (this.n === FRAME) {
          this.port.postMessage({ t: this.t0, samples: this.buf }, [this.buf.buffer]);
          this.buf = new Float32Array(FRAME);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("paging-capture", PagingCapture);
