// The kiosk's audio output: one AudioContext at 48 kHz feeding the ring-buffer
// worklet (kiosk-worklet.js), and per-stream decoders (Opus through WebCodecs,
// PCM s16le as the fallback). See docs/browser.md for the timing model.

export const SAMPLE_RATE = 48000;

/** Whether this browser can decode raw Opus packets with WebCodecs. */
export async function opusSupported() {
  if (typeof AudioDecoder === "undefined" || typeof EncodedAudioChunk === "undefined") {
    return false;
  }
  try {
    const r = await AudioDecoder.isConfigSupported({
      codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1,
    });
    return Boolean(r.supported);
  } catch {
    return false;
  }
}

export class KioskAudio {
  constructor() {
    this.ctx = null;
    this.node = null;
    this.onStateChange = () => {};
    this.onWorklet = () => {};
    this.stats = {};
  }

  async init() {
    // 48 kHz: Opus and the PCM fallback (pcm_s16le/48000) need no resampling here;
    // the browser converts to the device rate after the graph if it must.
    this.ctx = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    this.ctx.addEventListener("statechange", () => this.onStateChange(this.state));
    await this.ctx.audioWorklet.addModule("/static/kiosk-worklet.js");
    this.node = new AudioWorkletNode(this.ctx, "kiosk-ring-player", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
    });
    this.node.port.onmessage = (event) => {
      if (event.data.type === "stats") this.stats = event.data;
      this.onWorklet(event.data);
    };
    this.node.connect(this.ctx.destination);
  }

  /** "running" means sound can come out; anything else blocks it. */
  get state() {
    return this.ctx ? this.ctx.state : "suspended";
  }

  get ready() {
    return this.state === "running";
  }

  /** Called from a user gesture ("tap to enable sound"). */
  async enable() {
    if (this.ctx && this.ctx.state !== "running") await this.ctx.resume();
  }

  /**
   * A pair of clocks taken at one instant: a context time (s) and the
   * performance.now() time (ms) at which the sample of that context time is
   * heard. getOutputTimestamp() describes the sample being heard now, so the
   * context's baseLatency and outputLatency are already inside it (measured in
   * headless Chromium: its contextTime trails currentTime by their sum). Where it
   * is missing or not yet meaningful, currentTime is paired with now and the two
   * latencies are added explicitly.
   */
  anchor() {
    const ctx = this.ctx;
    const ts = typeof ctx.getOutputTimestamp === "function" ? ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0 && ts.contextTime > 0) {
      return { contextTime: ts.contextTime, perfMs: ts.performanceTime, source: "output" };
    }
    const latency = (ctx.baseLatency || 0) + (ctx.outputLatency || 0);
    return { contextTime: ctx.currentTime, perfMs: performance.now() + latency * 1000,
      source: "current" };
  }

  /** The context frame (fractional) whose sample is heard at perfMs. */
  frameHeardAt(perfMs, anchor = this.anchor()) {
    return (anchor.contextTime + (perfMs - anchor.perfMs) / 1000) * SAMPLE_RATE;
  }

  /** When (performance.now() ms) the sample of context frame `frame` is heard. */
  perfHeardAt(frame, anchor = this.anchor()) {
    return anchor.perfMs + (frame / SAMPLE_RATE - anchor.contextTime) * 1000;
  }

  post(msg, transfer = []) {
    if (this.node) this.node.port.postMessage(msg, transfer);
  }
}

/**
 * A per-stream decoder: `decode(payload, tag)` eventually calls
 * `onSamples(Float32Array, tag)` once per payload, in order.
 */
export function makeDecoder(format, onSamples, onError) {
  if (format.codec === "opus") return new OpusStreamDecoder(onSamples, onError);
  if (format.codec === "pcm_s16le" && format.sample_rate_hz === SAMPLE_RATE) {
    return new PcmStreamDecoder(onSamples);
  }
  throw new Error(`cannot play ${format.codec}/${format.sample_rate_hz}`);
}

class PcmStreamDecoder {
  constructor(onSamples) {
    this.onSamples = onSamples;
  }

  decode(payload, tag) {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const n = payload.byteLength >> 1;
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = view.getInt16(2 * i, true) / 32768;
    this.onSamples(out, tag);
  }

  async flush() {}

  close() {}
}

class OpusStreamDecoder {
  constructor(onSamples, onError) {
    this.onSamples = onSamples;
    this.tags = []; // one per packet in flight, in order (outputs come back in order)
    this.decoder = new AudioDecoder({
      output: (data) => {
        const tag = this.tags.shift();
        // Float output: Opus peaks above full scale are kept, not clipped.
        const out = new Float32Array(data.numberOfFrames);
        data.copyTo(out, { planeIndex: 0, format: "f32-planar" });
        data.close();
        if (tag !== undefined) this.onSamples(out, tag);
      },
      error: (e) => onError(e),
    });
    // Raw packets, no OpusHead: no description, so no pre-skip is applied (the server
    // already removed the encoder delay, docs/protocol.md section 6.4).
    this.decoder.configure({ codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1 });
  }

  decode(payload, tag) {
    if (this.decoder.state !== "configured") return;
    this.tags.push(tag);
    this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: tag.playAtUs, data: payload }));
  }

  async flush() {
    if (this.decoder.state === "configured") {
      try {
        await this.decoder.flush();
      } catch {
        // closed meanwhile
      }
    }
  }

  close() {
    if (this.decoder.state !== "closed") this.decoder.close();
    this.tags = [];
  }
}
