// The kiosk's side of endpoint protocol v1 (docs/protocol.md): hello/welcome,
// heartbeats and the clock estimate, announcements, receipts, playback reports,
// the `status` message, bye, and reconnecting with back-off.

import { SAMPLE_RATE, makeDecoder } from "/static/kiosk-audio.js";

const HEADER_BYTES = 28;
const FLAG_DISCONTINUITY = 0x0004;
/** Close codes after which retrying cannot help (as the reference endpoint, plus 1007). */
const FATAL = new Set([1003, 1007, 1009, 4000, 4001, 4003, 4006, 4009, 4010]);
const BURST_PINGS = 16;
const BURST_GAP_MS = 50;
/** At most this many streams are remembered (oldest forgotten first). */
const MAX_STREAMS = 64;

/** The endpoint clock: microseconds of performance.now(), an integer. */
export function nowUs() {
  return Math.round(performance.now() * 1000);
}

/** Server clock minus local clock, from the fastest trip in each direction (section 3.2). */
export class ClockEstimate {
  constructor() {
    this.upMin = null;
    this.downMax = null;
    this.offsetUs = null;
    this.rttUs = null;
    this.samples = 0;
  }

  update(sentUs, serverUs, receivedUs) {
    this.samples += 1;
    const rtt = receivedUs - sentUs;
    if (this.rttUs === null || rtt < this.rttUs) this.rttUs = rtt;
    const up = serverUs - sentUs;
    const down = serverUs - receivedUs;
    this.upMin = this.upMin === null ? up : Math.min(this.upMin, up);
    this.downMax = this.downMax === null ? down : Math.max(this.downMax, down);
    this.offsetUs = Math.floor((this.upMin + this.downMax) / 2);
  }
}

export class KioskLink {
  /**
   * @param {{url: string, endpointId: string, token: string, zones: string[],
   *          formats: object[], audio: import("./kiosk-audio.js").KioskAudio}} options
   */
  constructor({ url, endpointId, token, zones, formats, audio }) {
    this.url = url;
    this.endpointId = endpointId;
    this.token = token;
    this.zones = zones;
    this.formats = formats;
    this.audio = audio;
    this.ws = null;
    this.welcome = null;
    this.clock = new ClockEstimate();
    this.backoffMs = 500;
    this.stopped = false;
    this.refused = null;
    this.connections = 0;
    this.streams = new Map(); // stream number -> state (this connection)
    this.byLocal = new Map(); // local id -> state (across connections, for the worklet)
    this.nextLocal = 1;
    this.events = []; // what happened, for the tests and the curious
    this.onChange = () => {};
    this.onCaption = () => {};
    audio.onWorklet = (msg) => this.onWorklet(msg);
    this._timers = [];
    this._pings = new Map();
    this._pingId = 0;
    this._lastHeardMs = 0;
  }

  // --- connection ---------------------------------------------------------------

  start() {
    this.stopped = false;
    this.connect();
  }

  stop(reason = "kiosk page closed") {
    this.stopped = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.send({ type: "bye", reason });
      this.ws.close(1000, reason);
    }
  }

  /** Sound came back after a suspension: re-place every stream from now on. */
  resumed() {
    this.audio.post({ type: "clear" });
    for (const st of this.byLocal.values()) st.anchor = null;
  }

  connect() {
    for (const st of this.streams.values()) {
      // A stream of the old connection: what is buffered may play out (section 11);
      // nothing more of it comes here, and it is forgotten once played.
      if (st.status === "receiving") st.status = "lost";
      if (st.decoder) st.decoder.close();
      this.audio.post({ type: "end", id: st.localId });
    }
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.welcome = null;
    this.clock = new ClockEstimate(); // never carried across connections (section 11)
    this.streams = new Map();
    this._pings = new Map();
    this._helloSentUs = null;
    this.setState("connecting");
    ws.onopen = () => {
      this._helloSentUs = nowUs();
      // The token travels only here, in the first message (never in a URL).
      this.send({
        type: "hello", protocol: 1, endpoint_id: this.endpointId, token: this.token,
        zones: this.zones, formats: this.formats, agent: "broadcaster-kiosk-page/1",
      });
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this._lastHeardMs = performance.now();
      if (typeof event.data === "string") this.onText(event.data);
      else this.onAudio(new Uint8Array(event.data));
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.clearTimers();
      this.ws = null;
      this.log({ type: "closed", code: event.code, reason: event.reason });
      if (this.stopped) return;
      if (FATAL.has(event.code)) {
        this.refused = { code: event.code, reason: event.reason };
        this.setState("refused");
        return;
      }
      const wait = this.backoffMs * (0.8 + Math.random() * 0.4);
      this.backoffMs = Math.min(this.backoffMs * 2, 10000);
      this.setState("waiting", { retryMs: Math.round(wait) });
      setTimeout(() => {
        if (!this.stopped) this.connect();
      }, wait);
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  setState(state, extra = {}) {
    this.state = state;
    this.onChange({ state, ...extra });
  }

  clearTimers() {
    for (const t of this._timers) clearTimeout(t);
    this._timers = [];
  }

  later(fn, ms) {
    const id = setTimeout(() => {
      this._timers = this._timers.filter((t) => t !== id);
      fn();
    }, ms);
    this._timers.push(id);
  }

  log(entry) {
    this.events.push({ at: performance.now(), ...entry });
    if (this.events.length > 500) this.events.splice(0, this.events.length - 500);
  }

  /** Tell the server whether sound can come out (the `status` message). */
  sendStatus() {
    if (!this.welcome) return;
    this.send({ type: "status", audio_output: this.audio.ready ? "ready" : "blocked" });
  }

  // --- control messages ---------------------------------------------------------

  onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        return this.onWelcome(msg);
      case "ping":
        return this.send({ type: "pong", id: msg.id, echo_us: msg.sent_us, time_us: nowUs() });
      case "pong":
        return this.onPong(msg);
      case "announcement_started":
        return this.onStarted(msg);
      case "announcement_ended":
        return this.onEnded(msg);
      case "announcement_cancelled":
        return this.onCancelled(msg);
      case "error":
        this.log({ type: "error", code: msg.code, message: msg.message });
        return undefined;
      default:
        return undefined; // unknown types are ignored (section 1)
    }
  }

  onWelcome(msg) {
    const receivedUs = nowUs();
    this.welcome = msg;
    this.connections += 1;
    this.backoffMs = 500; // reset only once accepted
    this.refused = null;
    // The welcome is a clock sample of its own (section 3.2).
    if (this._helloSentUs !== null) {
      this.clock.update(this._helloSentUs, msg.server_time_us, receivedUs);
    }
    this.log({ type: "welcome", session_id: msg.session_id, format: msg.format });
    this.setState("connected", { format: msg.format });
    this.sendStatus();
    const s = msg.settings;
    let n = 0;
    const ping = () => {
      this._pingId += 1;
      const sent = nowUs();
      this._pings.set(this._pingId, sent);
      for (const id of this._pings.keys()) if (id < this._pingId - 8) this._pings.delete(id);
      this.send({ type: "ping", id: this._pingId, sent_us: sent });
      n += 1;
      this.later(ping, n < BURST_PINGS ? BURST_GAP_MS : s.heartbeat_interval_ms);
    };
    ping();
    // The server pings every interval: silence for the timeout means a dead link.
    this._lastHeardMs = performance.now();
    const watch = () => {
      if (performance.now() - this._lastHeardMs >= s.heartbeat_timeout_ms) {
        this.log({ type: "server_silent" });
        if (this.ws) this.ws.close(3000, "server silent"); // not a fatal code: reconnect
        return;
      }
      this.later(watch, 250);
    };
    this.later(watch, 250);
  }

  onPong(msg) {
    const sent = this._pings.get(msg.id);
    if (sent === undefined) return;
    this._pings.delete(msg.id);
    this.clock.update(sent, msg.time_us, nowUs());
  }

  onStarted(msg) {
    const old = this.streams.get(msg.stream);
    if (old) this.drop(old); // the same stream again (late join after a reconnect)
    for (const st of this.byLocal.values()) {
      // A stream resumed on a new connection replaces what the old one still held.
      if (st.annId === msg.announcement_id && st.stream === msg.stream) this.drop(st);
    }
    const st = {
      localId: this.nextLocal++,
      annId: msg.announcement_id,
      stream: msg.stream,
      priority: msg.priority,
      format: msg.format,
      captions: Array.isArray(msg.captions) && msg.captions.length
        ? msg.captions : [{ language: null, text: msg.text }],
      // An attenuation only (docs/protocol.md 5.5): never a boost past the true peak.
      gain: 10 ** (Math.min(0, typeof msg.gain_db === "number" ? msg.gain_db : 0) / 20),
      status: "receiving",
      chunks: 0, gaps: 0, firstSeq: null, lastSeq: null,
      firstPlayAt: null, lastEnd: null, times: [],
      anchor: null, anchors: [], // {frame, playAt, seq}: where the stream is placed
      decoded: 0, unplayed: 0, played: 0,
      startedAtUs: null, finishedAtUs: null, startFrame: null,
      ended: null, decoder: null,
    };
    try {
      st.decoder = makeDecoder(msg.format, (samples, tag) => this.onSamples(st, samples, tag),
        (e) => this.log({ type: "decode_error", stream: st.stream, message: String(e) }));
    } catch (e) {
      this.log({ type: "decode_error", stream: st.stream, message: String(e) });
    }
    this.streams.set(msg.stream, st);
    this.byLocal.set(st.localId, st);
    while (this.byLocal.size > MAX_STREAMS) {
      const oldest = this.byLocal.values().next().value;
      this.drop(oldest);
    }
    this.audio.post({ type: "stream", id: st.localId, priority: st.priority });
    this.log({ type: "announcement_started", announcement_id: st.annId, stream: st.stream,
      local: st.localId, gain_db: msg.gain_db ?? 0 });
  }

  onAudio(bytes) {
    if (bytes.byteLength < HEADER_BYTES) return;
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (v.getUint8(0) !== 1 || v.getUint8(1) !== 1) return; // unknown version or kind
    const flags = v.getUint16(2);
    const stream = v.getUint32(4);
    const seq = v.getUint32(8);
    const playAt = Number(v.getBigInt64(12));
    const durationUs = v.getUint32(20);
    const length = v.getUint32(24);
    if (length !== bytes.byteLength - HEADER_BYTES) return;
    const st = this.streams.get(stream);
    if (!st || st.status !== "receiving") return; // never started, or already over
    if (st.lastSeq !== null && seq !== st.lastSeq + 1) st.gaps += 1;
    if (st.firstSeq === null) {
      st.firstSeq = seq;
      st.firstPlayAt = playAt;
    }
    st.lastSeq = seq;
    st.chunks += 1;
    st.lastEnd = playAt + durationUs;
    st.times.push([playAt, durationUs]);
    const offset = this.clock.offsetUs;
    let frame = null;
    if (offset !== null && this.audio.ready) {
      if (st.anchor === null || flags & FLAG_DISCONTINUITY) {
        // One mapping per stream (and after each pause the server marked), so the
        // chunks of a stream follow each other sample-exactly.
        st.anchor = {
          frame: Math.round(this.audio.frameHeardAt((playAt - offset) / 1000)), playAt, seq,
        };
        st.anchors.push(st.anchor);
      }
      frame = st.anchor.frame + Math.round(((playAt - st.anchor.playAt) * SAMPLE_RATE) / 1e6);
    }
    // Decoded even when it cannot be played, so an Opus decoder's state stays whole.
    if (st.decoder) st.decoder.decode(bytes.subarray(HEADER_BYTES), { frame, playAtUs: playAt });
  }

  onSamples(st, samples, tag) {
    st.decoded += samples.length;
    if (st.status === "cancelled" || st.dropped || tag.frame === null) {
      st.unplayed += samples.length;
      return;
    }
    if (st.gain !== 1) for (let i = 0; i < samples.length; i++) samples[i] *= st.gain;
    this.audio.post({ type: "chunk", id: st.localId, frame: tag.frame, samples },
      [samples.buffer]);
  }

  async onEnded(msg) {
    const st = this.streams.get(msg.stream);
    if (!st || st.annId !== msg.announcement_id || st.status !== "receiving") return;
    st.ended = msg;
    const expected = msg.chunks - (st.firstSeq ?? 0);
    const whole = st.chunks > 0 && st.chunks === expected && st.gaps === 0;
    st.status = whole ? "complete" : "incomplete";
    this.receipt(st, st.status, st.lastEnd === null ? 0 : st.lastEnd - st.firstPlayAt);
    if (st.decoder) await st.decoder.flush();
    // Its buffered audio keeps playing to the end (section 5.6).
    this.audio.post({ type: "end", id: st.localId });
  }

  onCancelled(msg) {
    const st = this.streams.get(msg.stream);
    if (!st || st.annId !== msg.announcement_id) return; // not ours: ignored
    if (st.status === "receiving") {
      st.status = "cancelled";
      // What it got to play: the chunks whose play time has come.
      const offset = this.clock.offsetUs;
      const serverNow = offset === null ? -Infinity : nowUs() + offset;
      let playedUs = 0;
      for (const [at, dur] of st.times) if (at <= serverNow) playedUs = at + dur - st.firstPlayAt;
      this.receipt(st, "cancelled", playedUs);
    }
    // Also after announcement_ended: drop what is still buffered (no second receipt).
    st.cancelled = true;
    this.log({ type: "announcement_cancelled", announcement_id: st.annId, stream: st.stream,
      preempted_by: msg.preempted_by ?? null });
    if (msg.flush !== false) this.drop(st);
    else this.audio.post({ type: "end", id: st.localId });
  }

  receipt(st, status, durationUs) {
    this.send({
      type: "receipt", announcement_id: st.annId, stream: st.stream, status,
      chunks: st.chunks, duration_ms: Math.max(0, Math.floor(durationUs / 1000)), gaps: st.gaps,
    });
  }

  /** Forget a stream: stop its decoder and flush its samples from the ring. */
  drop(st) {
    st.dropped = true;
    if (st.decoder) st.decoder.close();
    this.audio.post({ type: "flush", id: st.localId });
    if (this.streams.get(st.stream) === st) this.streams.delete(st.stream);
    this.byLocal.delete(st.localId);
    this.onCaption(st, false);
  }

  // --- what the worklet reports -------------------------------------------------

  serverUsOfFrame(st, frame) {
    const a = this.anchorOf(st, frame);
    return Math.round(a.playAt + ((frame - a.frame) * 1e6) / SAMPLE_RATE);
  }

  /** The placement that a context frame of the stream belongs to. */
  anchorOf(st, frame) {
    let found = st.anchors[0];
    for (const a of st.anchors) if (a.frame <= frame) found = a;
    return found;
  }

  onWorklet(msg) {
    const st = this.byLocal.get(msg.id);
    if (msg.type === "started" && st) {
      st.startFrame = msg.frame;
      st.startedAtUs = this.serverUsOfFrame(st, msg.frame);
      this.send({ type: "playback", announcement_id: st.annId, stream: st.stream,
        event: "started", at_us: st.startedAtUs });
      const a = this.anchorOf(st, msg.frame);
      this.log({ type: "playback_started", announcement_id: st.annId, stream: st.stream,
        frame: msg.frame, anchor_frame: a.frame, anchor_play_at_us: a.playAt,
        anchor_seq: a.seq, first_seq: st.firstSeq, at_us: st.startedAtUs });
      this.onCaption(st, true);
    } else if (msg.type === "finished" && st) {
      st.played = msg.played;
      st.finishedAtUs = this.serverUsOfFrame(st, msg.frame);
      if (!st.cancelled && st.ended && st.startedAtUs !== null) {
        this.send({ type: "playback", announcement_id: st.annId, stream: st.stream,
          event: "finished", at_us: st.finishedAtUs });
      }
      this.log({ type: "playback_finished", announcement_id: st.annId, stream: st.stream,
        played: msg.played, peak: msg.peak, frame: msg.frame, at_us: st.finishedAtUs,
        duration_ms: st.ended ? st.ended.duration_ms : null,
        end_at_us: st.ended ? st.ended.end_at_us : null, decoded: st.decoded });
      this.byLocal.delete(st.localId);
      if (this.streams.get(st.stream) === st) this.streams.delete(st.stream);
      this.onCaption(st, false);
    } else if (msg.type === "flushed") {
      this.log({ type: "flushed", local: msg.id, dropped: msg.dropped, played: msg.played });
    }
  }
}
