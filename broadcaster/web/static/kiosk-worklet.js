// The kiosk's AudioWorklet: a ring buffer indexed by the AudioContext's sample frame.
//
// The page decodes each chunk to float samples and posts it with the context frame
// at which its first sample must leave this node (its play_at on the estimated
// server clock, mapped to context frames by the page; see docs/browser.md). This
// processor writes the samples at that place in the ring and, each render quantum,
// outputs whatever is due at `currentFrame`: silence where nothing is (an underrun),
// nothing that is already past (stale audio is dropped or cut), and nothing of a
// stream that was flushed (cancel, preemption).
//
// Messages in (port): {type: "stream", id, priority}, {type: "chunk", id, frame,
// samples}, {type: "end", id}, {type: "flush", id}, {type: "clear"}.
// Messages out: {type: "started", id, frame}, {type: "finished", id, frame, played, peak},
// {type: "flushed", id, dropped, played}, {type: "stats", ...counters}.

const SIZE = 1 << 18; // ring length in frames: 5.46 s at 48 kHz (a power of two)
const MASK = SIZE - 1;
const STATS_EVERY = 64; // render quanta between stats messages (~170 ms at 48 kHz)

class KioskRingPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.samples = new Float32Array(SIZE);
    this.owner = new Int32Array(SIZE); // local stream id of each slot; 0 = empty
    this.streams = new Map(); // id -> {priority, played, written, end, ended, started}
    this.counters = {
      framesOut: 0, // every frame this node rendered (sound or silence)
      soundFrames: 0, // frames that carried a stream's samples
      staleChunks: 0, // chunks whose play time had passed entirely: dropped
      cutFrames: 0, // samples at the start of late chunks that were skipped
      farChunks: 0, // chunks too far ahead to fit in the ring: dropped
      overridden: 0, // samples of a lower-priority stream replaced by a higher one
      peak: 0, // the largest absolute sample value output (floats: may exceed 1)
    };
    this.quanta = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "stream":
        this.streams.set(msg.id, {
          priority: msg.priority, played: 0, written: 0, end: 0, ended: false, started: false,
          peak: 0,
        });
        break;
      case "chunk":
        this.write(msg.id, msg.frame, msg.samples);
        break;
      case "end": {
        const st = this.streams.get(msg.id);
        if (st) st.ended = true;
        break;
      }
      case "flush":
        this.flush(msg.id);
        break;
      case "clear":
        // The context was suspended: what is in the ring was placed for a timeline
        // that has moved on. Drop it all; the streams stay (new chunks are welcome).
        this.owner.fill(0);
        this.samples.fill(0);
        break;
      default:
        break;
    }
  }

  write(id, frame, samples) {
    const st = this.streams.get(id);
    if (!st) return; // unknown or already flushed: drop
    const now = currentFrame;
    const n = samples.length;
    if (frame + n <= now) {
      this.counters.staleChunks += 1;
      return;
    }
    if (frame + n > now + SIZE) {
      this.counters.farChunks += 1;
      return;
    }
    const skip = Math.max(0, now - frame);
    this.counters.cutFrames += skip;
    for (let i = skip; i < n; i++) {
      const slot = (frame + i) & MASK;
      const other = this.owner[slot];
      if (other !== 0 && other !== id) {
        const o = this.streams.get(other);
        // Overlapping streams (two zones): the higher priority plays; on a tie the
        // one already there (it started first) keeps the slot.
        if (o && o.priority >= st.priority) continue;
        this.counters.overridden += 1;
      }
      this.owner[slot] = id;
      this.samples[slot] = samples[i];
    }
    st.written += n - skip;
    st.end = Math.max(st.end, frame + n);
  }

  flush(id) {
    const st = this.streams.get(id);
    if (!st) return;
    let dropped = 0;
    for (let slot = 0; slot < SIZE; slot++) {
      if (this.owner[slot] === id) {
        this.owner[slot] = 0;
        this.samples[slot] = 0;
        dropped += 1;
      }
    }
    this.streams.delete(id);
    this.port.postMessage({ type: "flushed", id, dropped, played: st.played });
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const start = currentFrame;
    for (let i = 0; i < out.length; i++) {
      const slot = (start + i) & MASK;
      const id = this.owner[slot];
      if (id === 0) {
        out[i] = 0; // underrun or idle: silence
        continue;
      }
      const v = this.samples[slot];
      out[i] = v;
      if (v > this.counters.peak) this.counters.peak = v;
      else if (-v > this.counters.peak) this.counters.peak = -v;
      this.owner[slot] = 0;
      this.samples[slot] = 0;
      this.counters.soundFrames += 1;
      const st = this.streams.get(id);
      if (!st) continue;
      st.played += 1;
      if (v > st.peak) st.peak = v;
      else if (-v > st.peak) st.peak = -v;
      if (!st.started) {
        st.started = true;
        this.port.postMessage({ type: "started", id, frame: start + i });
      }
    }
    // Other output channels (if the graph asks for more) carry the same signal.
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.counters.framesOut += out.length;
    const next = start + out.length;
    for (const [id, st] of this.streams) {
      if (st.ended && st.end <= next) {
        this.streams.delete(id);
        this.port.postMessage({
          type: "finished", id, frame: st.end, played: st.played, peak: st.peak,
        });
      }
    }
    this.quanta += 1;
    if (this.quanta % STATS_EVERY === 0) {
      this.port.postMessage({ type: "stats", frame: next, ...this.counters });
    }
    return true;
  }
}

registerProcessor("kiosk-ring-player", KioskRingPlayer);
