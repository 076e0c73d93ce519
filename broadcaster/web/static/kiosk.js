// The kiosk page (/kiosk): provisioning, the connection to the endpoint WebSocket,
// captions, and "tap to enable sound". See docs/browser.md.

import { KioskAudio, opusSupported, SAMPLE_RATE } from "/static/kiosk-audio.js";
import { KioskLink } from "/static/kiosk-link.js";

const STORE_KEY = "broadcaster.kiosk.v1";
const $ = (id) => document.getElementById(id);

/** The provisioned identity, kept in this browser's localStorage only. */
function loadIdentity() {
  try {
    const v = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (v && typeof v.endpoint_id === "string" && typeof v.token === "string"
        && Array.isArray(v.zones) && v.zones.length) return v;
  } catch {
    // unreadable: set up again
  }
  return null;
}

function showSetup(previous) {
  const form = $("setup");
  form.hidden = false;
  $("idle").hidden = true;
  $("status").textContent = "Not set up";
  if (previous) {
    $("setup-id").value = previous.endpoint_id;
    $("setup-zones").value = previous.zones.join(", ");
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // nothing is submitted anywhere: the page keeps it
    const identity = {
      endpoint_id: $("setup-id").value.trim(),
      token: $("setup-token").value,
      zones: $("setup-zones").value.split(",").map((z) => z.trim()).filter(Boolean),
    };
    if (!identity.endpoint_id || !identity.token || !identity.zones.length) return;
    localStorage.setItem(STORE_KEY, JSON.stringify(identity));
    $("setup-token").value = "";
    if (location.hash) history.replaceState(null, "", location.pathname);
    form.hidden = true;
    start(identity).catch(failed);
  });
}

function showCaptions(captions) {
  const box = $("captions");
  box.replaceChildren();
  for (const c of captions) {
    const p = document.createElement("p");
    if (c.language) {
      p.dataset.language = c.language;
      const tag = document.createElement("span");
      tag.className = "lang";
      tag.textContent = c.language;
      p.append(tag);
    }
    p.append(document.createTextNode(c.text));
    box.append(p);
  }
  box.hidden = captions.length === 0;
  $("idle").hidden = captions.length !== 0;
}

async function start(identity) {
  const audio = new KioskAudio();
  await audio.init();
  const site = await (await fetch("/web/site.json", { cache: "no-store" })).json();
  const formats = [{ codec: "pcm_s16le", sample_rate_hz: SAMPLE_RATE }];
  const opus = await opusSupported();
  if (opus) formats.unshift({ codec: "opus", sample_rate_hz: SAMPLE_RATE });
  const link = new KioskLink({
    url: site.endpoint_url,
    endpointId: identity.endpoint_id,
    token: identity.token,
    zones: identity.zones,
    formats,
    audio,
  });

  const playing = new Map(); // local id -> stream, while its audio plays
  link.onCaption = (st, on) => {
    if (on) playing.set(st.localId, st);
    else playing.delete(st.localId);
    // The highest priority playing (the one that is heard), the newest on a tie.
    let shown = null;
    for (const s of playing.values()) if (!shown || s.priority >= shown.priority) shown = s;
    showCaptions(shown ? shown.captions : []);
  };

  const enable = $("enable-sound");
  let wasReady = audio.ready;
  const onAudioState = () => {
    enable.hidden = audio.ready;
    if (audio.ready && !wasReady) link.resumed(); // nothing stale after a pause
    wasReady = audio.ready;
    link.sendStatus();
  };
  audio.onStateChange = onAudioState;
  enable.addEventListener("click", () => audio.enable());
  enable.hidden = audio.ready;

  link.onChange = ({ state, retryMs, format }) => {
    const status = $("status");
    status.dataset.state = state;
    if (state === "connected") {
      status.textContent = `Connected as ${identity.endpoint_id} (${identity.zones.join(", ")})`;
      $("format-info").textContent = `${format.codec}/${format.sample_rate_hz}`;
    } else if (state === "connecting") {
      status.textContent = "Connecting…";
    } else if (state === "waiting") {
      status.textContent = `Connection lost; retrying in ${(retryMs / 1000).toFixed(1)} s`;
    } else if (state === "refused") {
      const r = link.refused;
      status.textContent = `Refused by the server (${r.code}${r.reason ? `: ${r.reason}` : ""}).`
        + " Open /kiosk#setup to set it up again.";
    }
  };
  setInterval(() => {
    const c = link.clock;
    $("clock-info").textContent = c.offsetUs === null ? ""
      : `clock ±${(c.rttUs / 2000).toFixed(1)} ms · output latency `
        + `${(((audio.ctx.baseLatency || 0) + (audio.ctx.outputLatency || 0)) * 1000).toFixed(0)} ms`;
  }, 1000);
  window.addEventListener("pagehide", () => link.stop("kiosk page closed"));
  // For tests and diagnostics (same origin only, like the localStorage entry).
  window.kiosk = { audio, link, opus };
  link.start();
}

function failed(error) {
  const status = $("status");
  status.dataset.state = "refused";
  status.textContent = `The kiosk cannot start: ${error && error.message ? error.message : error}`;
}

// Typing #setup into the address bar of a running kiosk sets it up again.
window.addEventListener("hashchange", () => {
  if (location.hash === "#setup") location.reload();
});

const identity = loadIdentity();
if (!identity || location.hash === "#setup") showSetup(identity);
else start(identity).catch(failed);
