// Live paging (push-to-talk) for the console: mountPaging(section, {token, zones, maxPriority}).
//
// Captures the microphone (getUserMedia -> AudioWorklet, 20 ms frames at 48 kHz),
// encodes Opus with WebCodecs AudioEncoder (s16le PCM where WebCodecs or Opus is
// missing) and streams it over the paging uplink (docs/paging.md). The token goes
// in the first WebSocket message, never in a URL.

const RATE = 48000;
const FRAME = 960; // 20 ms
const BANDS = [
  ["background", 16],
  ["routine", 100],
  ["operational", 160],
  ["emergency", 240],
];
const CHIMES = ["", "two-tone", "three-tone"];
const CLOSE_TEXT = {
  4400: "refused",
  4401: "refused",
  4403: "refused",
  4408: "refused",
  4429: "refused",
  4503: "refused",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function zoneId(z) {
  return typeof z === "string" ? z : z.id;
}

function zoneName(z) {
  return typeof z === "string" ? z : z.name || z.id;
}

async function pickCodec() {
  if (typeof AudioEncoder === "undefined") return "pcm_s16le";
  try {
    const cfg = { codec: "opus", sampleRate: RATE, numberOfChannels: 1, bitrate: 32000 };
    const { supported } = await AudioEncoder.isConfigSupported(cfg);
    return supported ? "opus" : "pcm_s16le";
  } catch {
    return "pcm_s16le";
  }
}

function toS16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 32768 : s * 32767;
  }
  return out;
}

function frameMessage(seq, captureUs, payload) {
  const bytes = new Uint8Array(12 + payload.byteLength);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, seq >>> 0);
  view.setBigInt64(4, BigInt(Math.max(0, Math.round(captureUs))));
  bytes.set(new Uint8Array(payload.buffer || payload, payload.byteOffset || 0, payload.byteLength), 12);
  return bytes;
}

/** One push-to-talk session: connect, capture, stream, stop. */
class Talk {
  constructor({ token, zones, priority, chime, text, codec, mode, onState }) {
    Object.assign(this, { token, zones, priority, chime, text, codec, mode, onState });
    this.seq = 0;
    this.offsetUs = 0; // server clock minus performance.now() (µs)
    this.stopped = false;
    this.accepted = null;
    this.result = null;
    this.frames = 0;
  }

  set(state, detail = "") {
    this.state = state;
    this.onState(state, detail);
  }

  async start() {
    this.set("connecting");
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    if (this.stopped) return this.abandon();
    this.ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
    await this.ctx.audioWorklet.addModule("/static/paging-worklet.js");
    const src = this.ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.ctx, "paging-capture");
    const mute = this.ctx.createGain();
    mute.gain.value = 0;
    src.connect(this.node).connect(mute).connect(this.ctx.destination);
    await this.ctx.resume();
    if (this.codec === "opus") {
      this.encoder = new AudioEncoder({
        output: (chunk) => {
          const data = new Uint8Array(chunk.byteLength);
          chunk.copyTo(data);
          this.send(chunk.timestamp, data);
        },
        error: (e) => this.fail("encoder: " + e.message),
      });
      this.encoder.configure({
        codec: "opus",
        sampleRate: RATE,
        numberOfChannels: 1,
        bitrate: 32000,
        opus: { frameDuration: 20000 },
      });
    }
    this.node.port.onmessage = (ev) => this.onFrame(ev.data);
    if (this.stopped) return this.abandon();
    this.open();
  }

  abandon() {
    // Released before anything was sent: no page at all.
    this.release();
    this.set("ended", "released before it started");
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new WebSocket(`${scheme}//${location.host}/v1/paging`);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      this.sentAt = performance.now();
      const start = {
        type: "start",
        token: this.token,
        zones: this.zones,
        priority: this.priority,
        codec: this.codec,
        sample_rate_hz: RATE,
      };
      if (this.chime) start.chime_before = this.chime;
      if (this.mode === "record") start.mode = "record";
      if (this.text) start.text = this.text;
      this.ws.send(JSON.stringify(start));
    };
    this.ws.onmessage = (ev) => this.onMessage(JSON.parse(ev.data));
    this.ws.onclose = (ev) => this.onClose(ev);
  }

  onMessage(msg) {
    const now = performance.now();
    if (msg.type === "accepted") {
      this.accepted = msg;
      this.offsetUs = msg.server_time_us - ((this.sentAt + now) / 2) * 1000;
      this.pingAt = now;
      this.ws.send(JSON.stringify({ type: "ping", id: 1 }));
      this.set(this.stopped ? "ending" : "queued");
    } else if (msg.type === "recording") {
      this.accepted = msg;
      this.offsetUs = msg.server_time_us - ((this.sentAt + now) / 2) * 1000;
      this.set(this.stopped ? "ending" : "recording");
    } else if (msg.type === "pong") {
      // A second, fresher estimate (the accepted one was before the page was set up).
      this.offsetUs = msg.server_time_us - ((this.pingAt + now) / 2) * 1000;
    } else if (msg.type === "live") {
      if (!this.stopped) this.set("live");
    } else if (msg.type === "ended") {
      this.result = msg;
    } else if (msg.type === "error") {
      this.error = msg;
    }
  }

  onClose(ev) {
    this.release();
    if (this.error || CLOSE_TEXT[ev.code]) {
      const why = this.error ? this.error.message : `closed ${ev.code}`;
      this.set("refused", why);
    } else if (this.result) {
      const r = this.result;
      if (r.ended_by === "preempted") this.set("preempted", r.reason || "");
      else if (r.state === "recorded") this.set("recorded", `${(r.duration_ms / 1000).toFixed(1)} s`);
      else {
        const lat = r.latency_ms ? ` (mic to play-at ${r.latency_ms.median} ms)` : "";
        const why = r.reason ? ` — ${r.reason}` : "";
        this.set("ended", `${r.state}${why}${lat}`);
      }
    } else {
      this.set("lost", `connection closed (${ev.code})`);
    }
  }

  captureUs(t) {
    // The frame's first sample was rendered (ctx.currentTime - t) s ago.
    const perfMs = performance.now() - (this.ctx.currentTime - t) * 1000;
    return perfMs * 1000 + this.offsetUs;
  }

  onFrame({ t, samples }) {
    if (!this.accepted || this.stopped) return;
    const capture = this.captureUs(t);
    this.frames++;
    if (this.encoder) {
      const data = new AudioData({
        format: "f32",
        sampleRate: RATE,
        numberOfFrames: FRAME,
        numberOfChannels: 1,
        timestamp: Math.round(capture),
        data: samples,
      });
      this.encoder.encode(data);
      data.close();
    } else {
      this.send(capture, toS16(samples));
    }
  }

  send(captureUs, payload) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(frameMessage(this.seq++, captureUs, payload));
    }
  }

  async stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.encoder && this.encoder.state === "configured") {
      try {
        await this.encoder.flush();
      } catch {
        /* closed meanwhile */
      }
    }
    this.release();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "stop" }));
      this.set("ending");
    } else if (this.ws && this.ws.readyState === WebSocket.CONNECTING) {
      this.set("ending");
      this.ws.addEventListener("open", () => this.ws.send(JSON.stringify({ type: "stop" })));
    }
  }

  fail(why) {
    this.error = { message: why };
    if (this.ws) this.ws.close();
    this.release();
    this.set("refused", why);
  }

  release() {
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.encoder && this.encoder.state !== "closed") {
      try {
        this.encoder.close();
      } catch {
        /* already closed */
      }
    }
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    this.stream = null;
    this.encoder = null;
  }
}

/**
 * Build the push-to-talk UI inside `section`. `zones`: ids or {id, name};
 * `maxPriority`: the highest priority the token may use (224+ offers "emergency").
 * Returns a controller: {start(), stop(), state, talk, destroy()}.
 */
export function mountPaging(section, { token, zones, maxPriority = 223 }) {
  section.replaceChildren();
  section.classList.add("paging");
  const zoneBoxes = el("fieldset", { class: "paging-zones" }, el("legend", { text: "Zones" }));
  for (const z of zones || []) {
    const box = el("input", { type: "checkbox", value: zoneId(z), name: "paging-zone" });
    zoneBoxes.append(el("label", {}, box, " " + zoneName(z)));
  }
  const priority = el("select", { name: "paging-priority" });
  for (const [band, value] of BANDS) {
    if (value > maxPriority) continue;
    priority.append(el("option", { value: String(value), text: `${band} (${value})` }));
  }
  const operational = [...priority.options].find((o) => o.value === "160");
  if (operational) operational.selected = true;
  const recordFirst = el("input", { type: "checkbox", name: "paging-record" });
  const chime = el("select", { name: "paging-chime" });
  for (const c of CHIMES) chime.append(el("option", { value: c, text: c || "no chime" }));
  const button = el("button", { type: "button", class: "paging-talk", text: "Hold to talk" });
  const status = el("p", { class: "paging-status", role: "status", "data-state": "idle", text: "Ready" });
  const replay = el("button", { type: "button", class: "paging-replay", text: "Replay last page" });
  replay.hidden = true;
  const replayNote = el("span", { class: "paging-replay-note" });
  section.append(
    el("h2", { text: "Live paging" }),
    zoneBoxes,
    el("label", {}, "Priority ", priority),
    el("label", {}, " Chime ", chime),
    el("label", {}, recordFirst, " Record first, then send"),
    el("div", {}, button),
    status,
    el("div", {}, replay, " ", replayNote),
  );

  if (!document.querySelector('link[href="/static/paging.css"]')) {
    document.head.append(el("link", { rel: "stylesheet", href: "/static/paging.css" }));
  }
  const controller = { state: "idle", talk: null, held: false };
  const show = (state, detail) => {
    controller.state = state;
    status.dataset.state = state;
    const label = {
      connecting: "Connecting…",
      queued: "Waiting for the zones…",
      live: "LIVE — speak now",
      recording: "Recording — speak now (not on the air)",
      recorded: "Recorded",
      ending: "Ending…",
      ended: "Page ended",
      refused: "Refused",
      preempted: "Preempted by a higher priority",
      lost: "Connection lost",
    }[state];
    status.textContent = detail ? `${label}: ${detail}` : label;
    button.classList.toggle("live", state === "live");
    button.textContent =
      state === "live" ? "On air — release to end" : state === "recording" ? "Recording — release to end" : "Hold to talk";
    const result = controller.talk && controller.talk.result;
    if ((state === "ended" || state === "recorded") && result && result.replay_available) {
      controller.replayOf = result.recording_id || result.announcement_id;
      replay.textContent = result.recording_id ? "Send recording" : "Replay last page";
      replay.hidden = false;
      replayNote.textContent = "";
    }
  };

  // Replays the last recorded page (a new announcement) to the zones and priority chosen now.
  controller.replay = async () => {
    if (!controller.replayOf) return null;
    const chosen = [...zoneBoxes.querySelectorAll("input:checked")].map((b) => b.value);
    const body = { priority: Number(priority.value) };
    if (chosen.length) body.zones = chosen;
    if (chime.value) body.chime_before = chime.value;
    const r = await fetch(`/v1/announcements/${encodeURIComponent(controller.replayOf)}/replay`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      referrerPolicy: "no-referrer",
    });
    const answer = await r.json();
    controller.lastReplay = { status: r.status, body: answer };
    replayNote.textContent =
      r.status === 202 ? `Queued to play (${answer.id})` : `Refused: ${answer.message}`;
    return controller.lastReplay;
  };
  replay.addEventListener("click", () => controller.replay());

  controller.start = async () => {
    controller.held = true;
    const over = ["idle", "ended", "recorded", "refused", "preempted", "lost"];
    if (controller.talk && !over.includes(controller.state)) return;
    const chosen = [...zoneBoxes.querySelectorAll("input:checked")].map((b) => b.value);
    const picked = chosen.length ? chosen : (zones || []).map(zoneId).slice(0, 1);
    if (!picked.length) return show("refused", "choose a zone");
    const talk = new Talk({
      token,
      zones: picked,
      priority: Number(priority.value),
      chime: chime.value,
      codec: await pickCodec(),
      mode: recordFirst.checked ? "record" : "live",
      onState: show,
    });
    controller.talk = talk;
    try {
      await talk.start();
    } catch (e) {
      talk.fail(e.message || String(e));
    }
    if (!controller.held) await talk.stop(); // released while it was starting
  };
  controller.stop = async () => {
    controller.held = false;
    if (controller.talk) await controller.talk.stop();
  };
  controller.destroy = () => {
    if (controller.talk) controller.talk.stop();
    section.replaceChildren();
  };
  button.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    controller.start();
  });
  for (const ev of ["pointerup", "pointerleave", "pointercancel"]) {
    button.addEventListener(ev, () => controller.stop());
  }
  button.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) controller.start();
  });
  button.addEventListener("keyup", (e) => {
    if (e.key === " " || e.key === "Enter") controller.stop();
  });
  return controller;
}
