// The operator console: see docs/browser.md ("The operator console").
// Plain ES module, no build step. The API token lives in sessionStorage only and is
// sent as an Authorization header; it never goes into a URL.

const TOKEN_KEY = "broadcaster.console.token";
const RECENT_SHOWN = 30;
const BANDS = [
  ["background", 0],
  ["routine", 32],
  ["operational", 128],
  ["emergency", 224],
];

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  me: null,
  zonesConfig: [], // [{id, name}] from GET /v1/zones
  groups: [], // [{id, name, zones}] when GET /v1/zones lists them
  templates: [],
  chimes: [],
  languages: [],
  hasPreview: false,
  hasTemplates: false,
  zones: new Map(),
  endpoints: new Map(),
  announcements: new Map(),
  stream: null, // AbortController of the live stream
  schedulesTimer: null,
  renderQueued: false,
  paging: null, // what mountPaging returned
};

// --- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
    this.body = body;
  }
}

function describeError(status, body) {
  if (body && typeof body === "object") {
    const fields = (body.fields || []).map((f) => `${f.field}: ${f.message}`);
    return [body.message || body.error || `HTTP ${status}`, ...fields].join(" — ");
  }
  return `HTTP ${status}`;
}

async function api(method, path, body, extraHeaders = {}) {
  const headers = {
    Authorization: `Bearer ${state.token}`,
    Accept: "application/json",
    ...extraHeaders,
  };
  const init = { method, headers, cache: "no-store", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// --- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = `live-state ${kind}`;
}

function timeOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
}

function bandOf(priority) {
  let name = BANDS[0][0];
  for (const [band, lowest] of BANDS) if (priority >= lowest) name = band;
  return name;
}

// --- sign-in ------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/v1/me");
  state.me = me;
  sessionStorage.setItem(TOKEN_KEY, token);
  return me;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearInterval(state.schedulesTimer);
  if (state.paging && typeof state.paging.destroy === "function") {
    try {
      state.paging.destroy();
    } catch {
      // its own business
    }
  }
  state.paging = null;
  $("paging").replaceChildren(); // nothing of the last token's stays on the page
  state.zones.clear();
  state.endpoints.clear();
  state.announcements.clear();
  $("console").hidden = true;
  $("who").hidden = true;
  showSignIn("");
}

function showSignIn(message) {
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token").value = "";
  setStatus("Signed out");
  $("token").focus();
}

async function start() {
  const me = state.me;
  $("sign-in").hidden = true;
  $("who").hidden = false;
  $("who-id").textContent = me.id;
  $("who-role").textContent = me.role;
  $("who-role").className = `badge role-${me.role}`;
  $("who-zones").textContent = me.zones ? `zones: ${me.zones.join(", ")}` : "all zones";
  $("console").hidden = false;
  await loadReferenceData();
  buildSendForm();
  startStream();
  loadSchedules();
  state.schedulesTimer = setInterval(loadSchedules, 30000);
  mountPagingIfPresent();
}

function mayAnnounce() {
  return state.me && state.me.max_priority !== null;
}

function isDispatcher() {
  return mayAnnounce() && state.me.max_priority >= state.me.emergency_priority;
}

function allowedZone(zoneId) {
  return !state.me.zones || state.me.zones.includes(zoneId);
}

async function loadReferenceData() {
  const zones = await api("GET", "/v1/zones");
  state.zonesConfig = zones.zones.map((z) => ({ id: z.id, name: z.name }));
  state.groups = Array.isArray(zones.groups) ? zones.groups : [];
  try {
    const doc = await api("GET", "/v1/openapi.json");
    const props = doc.components.schemas.AnnouncementRequest.properties;
    const chime = (props.chime_before.anyOf || []).find((b) => Array.isArray(b.enum));
    state.chimes = chime ? chime.enum : [];
    const lang = (props.language.anyOf || [props.language]).find((b) => Array.isArray(b.enum));
    state.languages = lang ? lang.enum : [];
    state.hasPreview = Boolean(doc.paths["/v1/preview"] && doc.paths["/v1/preview"].post);
    state.hasTemplates = Boolean(doc.paths["/v1/templates"] && doc.paths["/v1/templates"].get);
  } catch {
    state.chimes = [];
    state.languages = [];
  }
  state.templates = [];
  if (state.hasTemplates) {
    try {
      const found = await api("GET", "/v1/templates");
      state.templates = Array.isArray(found.templates) ? found.templates : [];
    } catch {
      state.templates = [];
    }
  }
}

// --- the send form --------------------------------------------------------------------------

function option(value, label, selected = false) {
  return el("option", { value, selected }, label);
}

function buildSendForm() {
  const form = $("send-form");
  const may = mayAnnounce();
  form.hidden = !may;
  $("viewer-note").hidden = may;
  if (!may) return;

  const zoneBox = $("zone-choices");
  zoneBox.replaceChildren(
    ...state.zonesConfig
      .filter((z) => allowedZone(z.id))
      .map((z) =>
        el(
          "label",
          { class: "chip" },
          el("input", { type: "checkbox", name: "zone", value: z.id }),
          z.name || z.id,
        ),
      ),
  );
  const groupBox = $("group-choices");
  groupBox.replaceChildren(
    ...state.groups
      .filter((g) => (g.zones || []).every(allowedZone))
      .map((g) =>
        el(
          "label",
          { class: "chip group", title: (g.zones || []).join(", ") },
          el("input", { type: "checkbox", name: "group", value: g.id }),
          g.name || g.id,
        ),
      ),
  );

  const priority = $("priority");
  priority.max = String(state.me.max_priority);
  priority.value = "";
  showBand();

  for (const id of ["chime-before", "chime-after"]) {
    $(id).replaceChildren(
      option("", "(default)"),
      ...state.chimes.map((c) => option(c, c)),
    );
  }
  $("language").replaceChildren(option("", "(default)"), ...state.languages.map((l) => option(l, l)));

  state.templates = state.templates.filter(
    (t) => isDispatcher() || !t.emergency,
  );
  const hasTemplates = state.templates.length > 0;
  $("mode-row").hidden = !hasTemplates;
  if (hasTemplates) {
    $("template").replaceChildren(...state.templates.map((t) => option(t.name, t.name)));
    buildVariables();
  }
  form.querySelector("input[name=mode][value=text]").checked = true;
  showMode();
  $("text").value = "";
  $("also").replaceChildren();
  $("preview-out").hidden = true;
  showResult("");
  $("emergency").hidden = !isDispatcher();
  $("preview").hidden = !state.hasPreview;
}

function showBand() {
  const value = Number($("priority").value);
  const typed = $("priority").value.trim() !== "" && Number.isFinite(value);
  $("priority-band").textContent = typed
    ? `${bandOf(value)} · up to ${state.me.max_priority}`
    : `default · up to ${state.me.max_priority}`;
}

function mode() {
  return $("send-form").querySelector("input[name=mode]:checked").value;
}

function showMode() {
  const template = mode() === "template";
  $("template-part").hidden = !template;
  $("text-part").hidden = template;
  $("add-language").hidden = template;
  $("also").hidden = template;
}

function currentTemplate() {
  return state.templates.find((t) => t.name === $("template").value) || null;
}

function buildVariables() {
  const tpl = currentTemplate();
  const box = $("variables");
  box.replaceChildren();
  if (!tpl) return;
  $("template-text").textContent = tpl.text || "";
  for (const [name, spec] of Object.entries(tpl.variables || {})) {
    const id = `var-${name}`;
    const label = el("label", { for: id }, spec.required ? `${name} *` : name);
    let input;
    const type = spec.type || "str";
    if (Array.isArray(spec.choices)) {
      input = el("select", { id, "data-var": name, "data-type": type },
        spec.choices.map((c) => option(c, c, c === spec.default)));
    } else if (type === "bool") {
      input = el("input", { id, type: "checkbox", "data-var": name, "data-type": type,
        checked: spec.default === true });
    } else if (type === "int" || type === "float") {
      input = el("input", { id, type: "number", step: type === "int" ? "1" : "any",
        "data-var": name, "data-type": type, value: spec.default ?? "" });
    } else if (type === "time") {
      input = el("input", { id, type: "time", "data-var": name, "data-type": type,
        value: spec.default ?? "" });
    } else {
      input = el("input", { id, type: "text", "data-var": name, "data-type": type,
        maxlength: spec.max_length || undefined, value: spec.default ?? "" });
    }
    box.append(el("div", { class: "variable" }, label, input));
  }
}

function addLanguageRow() {
  const row = el(
    "div",
    { class: "also-row" },
    el("select", { "data-also": "language", "aria-label": "language" },
      state.languages.filter((l) => l !== "Auto").map((l) => option(l, l))),
    el("input", { type: "text", "data-also": "text", "aria-label": "text in that language",
      placeholder: "the same announcement in that language" }),
  );
  const remove = el("button", { type: "button", class: "ghost small", "aria-label": "remove" }, "×");
  remove.addEventListener("click", () => row.remove());
  row.append(remove);
  $("also").append(row);
}

function collectBody() {
  const form = $("send-form");
  const body = {};
  const zones = [...form.querySelectorAll("input[name=zone]:checked")].map((i) => i.value);
  const groups = [...form.querySelectorAll("input[name=group]:checked")].map((i) => i.value);
  const all = [...zones, ...groups];
  if (all.length) body.zones = all;
  if (mode() === "template") {
    body.template = $("template").value;
    const variables = {};
    for (const input of $("variables").querySelectorAll("[data-var]")) {
      const type = input.dataset.type;
      let value;
      if (type === "bool") value = input.checked;
      else if (type === "int" || type === "float") {
        if (input.value === "") continue;
        value = Number(input.value);
      } else value = input.value;
      variables[input.dataset.var] = value;
    }
    body.variables = variables;
  } else {
    body.text = $("text").value.trim();
    const also = [...$("also").querySelectorAll(".also-row")]
      .map((row) => ({
        language: row.querySelector("[data-also=language]").value,
        text: row.querySelector("[data-also=text]").value.trim(),
      }))
      .filter((a) => a.text);
    if (also.length) body.also = also;
  }
  const priority = $("priority").value.trim();
  if (priority !== "") body.priority = Number(priority);
  const repeats = Number($("repeats").value || 0);
  if (repeats) body.repeats = repeats;
  for (const [id, key] of [["chime-before", "chime_before"], ["chime-after", "chime_after"]]) {
    const value = $(id).value;
    if (value) body[key] = value;
  }
  if ($("language").value) body.language = $("language").value;
  return body;
}

function showResult(text, kind = "") {
  const result = $("send-result");
  result.textContent = text;
  result.className = `result ${kind}`;
}

function randomKey() {
  // getRandomValues works on plain http too (randomUUID needs a secure context).
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function send(emergency) {
  const body = collectBody();
  if (emergency) body.priority = state.me.emergency_priority;
  if (!body.zones) {
    showResult("Choose at least one zone.", "error");
    return;
  }
  // One key per click: if the answer is lost and the operator clicks again, it is a
  // new announcement; a retry of this very request (same key) never doubles it.
  const key = randomKey();
  const buttons = [$("send-button"), $("emergency")];
  for (const b of buttons) b.disabled = true;
  try {
    const record = await api("POST", "/v1/announcements", body, { "Idempotency-Key": key });
    state.announcements.set(record.id, record);
    scheduleRender();
    showResult(`Accepted: #${record.number} (${record.state})`, "ok");
  } catch (err) {
    showResult(err.message, "error");
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function askEmergency() {
  const body = collectBody();
  if (!body.zones) {
    showResult("Choose at least one zone.", "error");
    return;
  }
  const where = body.zones.join(", ");
  const what = body.text || body.template || "(no text)";
  $("confirm-text").textContent = `“${what}” to ${where}, at priority ${state.me.emergency_priority}.`;
  const dialog = $("confirm-emergency");
  dialog.returnValue = "";
  dialog.showModal();
}

async function preview() {
  const out = $("preview-out");
  try {
    const answer = await api("POST", "/v1/preview", collectBody());
    const written = [{ language: answer.language, text: answer.text }, ...(answer.also || [])];
    const spoken = Array.isArray(answer.spoken) ? answer.spoken : [];
    out.replaceChildren(
      el("div", { class: "preview-head" }, "Preview — nothing was announced"),
      ...written.map((item, i) => {
        const said = spoken[i] ? spoken[i].text : null;
        return el("div", { class: "preview-item", "data-language": item.language || "" },
          el("strong", {}, item.language || ""),
          el("div", { class: "written" }, item.text || ""),
          said && said !== item.text ? el("div", { class: "spoken" }, "spoken: ", said) : null);
      }),
    );
  } catch (err) {
    out.replaceChildren(el("p", { class: "error" }, err.message));
  }
  out.hidden = false;
}

// --- the live stream ----------------------------------------------------------------------------

function startStream() {
  let delay = 1000;
  const controller = new AbortController();
  state.stream = controller;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        setStatus("Connecting…", "wait");
        await readStream(controller.signal, () => {
          delay = 1000;
        });
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof ApiError && err.status === 401) {
          signOut();
          showSignIn("The token was refused; sign in again.");
          return;
        }
      }
      if (controller.signal.aborted) return;
      setStatus(`Reconnecting in ${Math.round(delay / 1000)} s`, "down");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  run();
}

async function readStream(signal, onOpen) {
  const response = await fetch("/v1/stream", {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
    cache: "no-store",
    referrerPolicy: "no-referrer",
    signal,
  });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiError(response.status, body);
  }
  onOpen();
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let quietTimer = null;
  const watchdog = () => {
    clearTimeout(quietTimer);
    // Heartbeats come every 15 s of quiet: 40 s without a byte is a dead stream.
    quietTimer = setTimeout(() => reader.cancel(), 40000);
  };
  watchdog();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      watchdog();
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        handleBlock(block);
      }
    }
  } finally {
    clearTimeout(quietTimer);
  }
}

function handleBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // heartbeat
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const body = JSON.parse(data.join("\n"));
  if (name === "snapshot") {
    state.zones = new Map(body.zones.map((z) => [z.id, z]));
    state.endpoints = new Map(body.endpoints.map((e) => [e.endpoint_id, e]));
    state.announcements = new Map(body.announcements.map((a) => [a.id, a]));
    state.receivedAt = performance.now();
    setStatus("Live", "up");
  } else if (name === "zone") state.zones.set(body.id, body);
  else if (name === "endpoint") state.endpoints.set(body.endpoint_id, { ...body, seenAt: performance.now() });
  else if (name === "announcement") {
    state.announcements.set(body.id, body);
    pruneAnnouncements();
  }
  scheduleRender();
}

const KEEP_ANNOUNCEMENTS = 200;

function pruneAnnouncements() {
  // A console left open for days sees many announcements: keep the newest finished ones.
  if (state.announcements.size <= KEEP_ANNOUNCEMENTS) return;
  const finished = [...state.announcements.values()]
    .filter((a) => a.state !== "queued" && a.state !== "playing")
    .sort((a, b) => (a.created_at || "").localeCompare(b.created_at || ""));
  for (const a of finished.slice(0, state.announcements.size - KEEP_ANNOUNCEMENTS)) {
    state.announcements.delete(a.id);
  }
}

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderZones();
    renderAnnouncements();
  });
}

// --- rendering ------------------------------------------------------------------------------------

function shortText(ann) {
  if (!ann) return "";
  const text = ann.text || "";
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

function endpointRow(ep, withAudio) {
  const connected = ep.connected;
  const status = ep.supervision ? ep.supervision.status : connected ? "ok" : "offline";
  const faulty = status === "faulty";
  const label = faulty ? "faulty" : connected ? "online" : status === "never_connected" ? "never seen" : status;
  const audio = ep.audio_output === undefined || ep.audio_output === null ? "" : ep.audio_output;
  const heard = ep.last_heard_s === undefined || ep.last_heard_s === null ? "" : `${ep.last_heard_s} s ago`;
  const offset = ep.sync_error_ms === undefined || ep.sync_error_ms === null ? "" : `${ep.sync_error_ms} ms`;
  return el(
    "tr",
    { class: faulty ? "faulty" : connected ? "online" : "offline", "data-endpoint": ep.endpoint_id },
    el("td", {}, el("span", { class: `dot ${faulty ? "bad" : connected ? "good" : "off"}` }), ep.endpoint_id),
    el("td", {}, label),
    el("td", { class: "mono" }, ep.format || ""),
    el("td", { class: "num", title: "round trip" }, ep.rtt_ms === undefined || ep.rtt_ms === null ? "" : `${ep.rtt_ms} ms`),
    el("td", { class: "num", title: "sync error of its last playback" }, offset),
    el("td", { class: "num" }, connected ? heard : ""),
    withAudio ? el("td", { class: audio === "blocked" ? "warn" : "" }, audio) : null,
  );
}

function renderZones() {
  const box = $("zone-cards");
  const cards = [];
  const byZone = new Map();
  for (const ep of state.endpoints.values()) {
    for (const z of ep.allowed_zones || ep.zones || []) {
      if (!byZone.has(z)) byZone.set(z, []);
      byZone.get(z).push(ep);
    }
  }
  for (const zone of state.zones.values()) {
    const playing = zone.playing ? state.announcements.get(zone.playing) : null;
    const waiting = (zone.waiting || []).map((id) => state.announcements.get(id)).filter(Boolean);
    const eps = (byZone.get(zone.id) || []).sort((a, b) => a.endpoint_id.localeCompare(b.endpoint_id));
    const online = eps.filter((e) => e.connected).length;
    const withAudio = eps.some((e) => e.audio_output !== undefined && e.audio_output !== null);
    const heads = ["Endpoint", "State", "Format", "RTT", "Sync", "Heard", ...(withAudio ? ["Audio"] : [])];
    cards.push(
      el(
        "article",
        { class: `zone ${zone.playing ? "busy" : ""}`, "data-zone": zone.id },
        el("header", {},
          el("h3", {}, zone.name || zone.id),
          el("span", { class: "muted" }, `${online}/${eps.length} online`)),
        el("p", { class: "now" },
          playing
            ? [el("span", { class: "badge playing" }, "playing"), ` ${shortText(playing)}`]
            : el("span", { class: "muted" }, "quiet")),
        waiting.length
          ? el("ol", { class: "waiting" }, waiting.map((a) =>
            el("li", {}, el("span", { class: "badge queued" }, `waits · ${a.priority}`), ` ${shortText(a)}`)))
          : null,
        eps.length
          ? el("table", { class: "grid endpoints" },
            el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
            el("tbody", {}, eps.map((ep) => endpointRow(ep, withAudio))))
          : el("p", { class: "muted" }, "no endpoint configured"),
      ),
    );
  }
  box.replaceChildren(...cards);
}

function coverageCell(ann) {
  const zones = Object.entries(ann.coverage || {}).map(([zone, info]) => {
    const heard = info && typeof info === "object" ? info.heard : info;
    const kind = heard === true ? "good" : heard === false ? "bad" : "warn";
    const label = heard === true ? "heard" : heard === false ? "not heard" : "unconfirmed";
    return el("span", { class: `chip small ${kind}`, title: `zone ${zone}: ${label}` }, zone);
  });
  const receipts = Object.entries(ann.endpoints || {}).map(([eid, d]) => {
    const r = d.receipt;
    const kind = r ? (r.status === "complete" ? "good" : "warn") : d.state === "missed" ? "bad" : "";
    const label = r ? `${r.status} · ${(r.duration_ms / 1000).toFixed(1)} s` : d.state || "waiting";
    return el("span", { class: `receipt ${kind}`, "data-receipt": eid, title: `endpoint ${eid}` },
      `${eid}: ${label}`);
  });
  return [el("div", { class: "chips" }, zones), el("div", { class: "receipts" }, receipts)];
}

function mayCancel(ann) {
  if (!mayAnnounce()) return false;
  if (ann.state !== "queued" && ann.state !== "playing") return false;
  if (state.me.zones && !ann.zones.every((z) => state.me.zones.includes(z))) return false;
  return state.me.role !== "operator" || ann.created_by === state.me.id;
}

function renderAnnouncements() {
  const rows = [...state.announcements.values()]
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""))
    .slice(0, RECENT_SHOWN)
    .map((ann) => {
      let action = null;
      if (mayCancel(ann)) {
        action = el("button", { type: "button", class: "ghost small cancel", "data-cancel": ann.id }, "Cancel");
      }
      return el(
        "tr",
        { "data-announcement": ann.id, class: `state-${ann.state}` },
        el("td", { class: "num" }, timeOf(ann.created_at)),
        el("td", { title: ann.reason || "" }, shortText(ann)),
        el("td", {}, (ann.zones || []).join(", ")),
        el("td", { class: `num ${ann.priority >= (state.me?.emergency_priority ?? 224) ? "warn" : ""}` }, ann.priority),
        el("td", {}, el("span", { class: `badge ${ann.state}` }, ann.state)),
        el("td", {}, coverageCell(ann)),
        el("td", {}, action),
      );
    });
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No announcements yet.")));
  }
  $("announcement-rows").replaceChildren(...rows);
}

async function cancel(id) {
  try {
    const record = await api("POST", `/v1/announcements/${encodeURIComponent(id)}/cancel`);
    state.announcements.set(record.id, record);
    scheduleRender();
  } catch (err) {
    showResult(err.message, "error");
  }
}

// --- schedules -------------------------------------------------------------------------------------

async function loadSchedules() {
  if (!state.token) return;
  let list;
  try {
    list = await api("GET", "/v1/schedules");
  } catch (err) {
    $("schedules-note").textContent = err.status === 404 ? "No schedules on this server." : err.message;
    $("schedule-rows").replaceChildren();
    return;
  }
  const rows = list.schedules.map((s) => {
    const may = mayManageSchedule(s);
    const next = (s.next_firings || []).slice(0, 3).map((f) => el("div", { class: "num" }, new Date(f).toLocaleString()));
    const action = may
      ? el("button", { type: "button", class: "ghost small", "data-schedule": s.id,
        "data-action": s.paused ? "resume" : "pause" }, s.paused ? "Resume" : "Pause")
      : null;
    return el("tr", { class: s.paused ? "paused" : "" },
      el("td", {}, el("div", {}, s.id, " ", s.paused ? el("span", { class: "badge queued" }, "paused") : null),
        el("div", { class: "hint" }, s.trigger || "")),
      el("td", {}, s.template || (s.text ? `“${s.text}”` : "")),
      el("td", {}, s.paused ? el("span", { class: "muted" }, "—") : next),
      el("td", {}, action));
  });
  $("schedule-rows").replaceChildren(...rows);
  $("schedules-note").textContent = rows.length ? "" : "No schedules.";
}

function scheduleZones(schedule) {
  if (Array.isArray(schedule.zones) && schedule.zones.length) return schedule.zones;
  const tpl = state.templates.find((t) => t.name === schedule.template);
  return tpl && Array.isArray(tpl.zones) ? tpl.zones : null; // null: not known here
}

function mayManageSchedule(schedule) {
  if (!mayAnnounce()) return false;
  if (!state.me.zones) return true;
  const zones = scheduleZones(schedule);
  // Not known (a template this page cannot see): offered, and the server decides.
  return zones === null || zones.every((z) => state.me.zones.includes(z));
}

async function scheduleAction(id, action) {
  try {
    await api("POST", `/v1/schedules/${encodeURIComponent(id)}/${action}`);
  } catch (err) {
    $("schedules-note").textContent = err.message;
  }
  loadSchedules();
}

// --- live paging (its own module, written separately) --------------------------------------------

async function mountPagingIfPresent() {
  const section = $("paging");
  if (!mayAnnounce()) return;
  try {
    const module = await import("/static/paging.js");
    if (typeof module.mountPaging === "function") {
      const zones = state.zonesConfig.filter((z) => allowedZone(z.id));
      state.paging = module.mountPaging(section, {
        token: state.token,
        zones,
        maxPriority: state.me.max_priority,
      });
    }
  } catch {
    // No live paging on this server yet: the section stays empty.
  }
}

// --- wiring ---------------------------------------------------------------------------------------

function wire() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    try {
      await signIn(token);
      await start();
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(err.status === 401 ? "That token is not known here." : err.message);
    }
  });
  $("sign-out").addEventListener("click", signOut);
  // The send form's controls (built per sign-in, wired once).
  const form = $("send-form");
  $("priority").addEventListener("input", showBand);
  $("template").addEventListener("change", buildVariables);
  for (const radio of form.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", showMode);
  }
  $("add-language").addEventListener("click", addLanguageRow);
  $("preview").addEventListener("click", preview);
  $("emergency").addEventListener("click", askEmergency);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(false);
  });
  $("announcement-rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-cancel]");
    if (button) cancel(button.dataset.cancel);
  });
  $("schedule-rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-schedule]");
    if (button) scheduleAction(button.dataset.schedule, button.dataset.action);
  });
  $("confirm-emergency").addEventListener("close", () => {
    if ($("confirm-emergency").returnValue === "confirm") send(true);
  });
}

async function boot() {
  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) {
    showSignIn("");
    return;
  }
  try {
    await signIn(saved);
    await start();
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(err.status === 401 ? "The saved token was refused; sign in again." : err.message);
  }
}

boot();
