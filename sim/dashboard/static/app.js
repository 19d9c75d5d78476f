// The Virtual Factory dashboard page. Plain JavaScript, no library, no build step.
//
// Everything the broker sends is untrusted text: it is written with textContent
// and attribute setters only, never parsed as HTML.
"use strict";

const HISTORY = 60; // readings kept per sensor for its sparkline
const LOG_ROWS = 300; // rows kept in the live log
const CHOC_TYPES = new Set(["telemetry", "state", "alarm", "quality", "batch"]);

const model = {
  root: "factory",
  clientId: "dashboard",
  devices: new Map(), // id -> device
  topics: new Map(), // topic -> traffic entry
  lines: new Map(), // "site/line" -> { site, line, steps: Map }
  filter: null, // array of filter levels, or null for everything
  pendingLog: [], // messages not yet shown in the log
  dirtyDevices: new Set(),
  dirtyTopics: new Set(),
  dirtyLines: new Set(),
  frameScheduled: false,
  selected: null,
};

// -- small helpers ---------------------------------------------------------------------
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// MQTT topic filters: '+' is one level, '#' (last) is any number of levels, parent included.
function filterProblem(filter) {
  const levels = filter.split("/");
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level.includes("#") && (level !== "#" || i !== levels.length - 1)) {
      return "'#' must be a whole level and the last one (factory/alarms/#)";
    }
    if (level.includes("+") && level !== "+") return "'+' must be a whole level (factory/+/press)";
  }
  return null;
}

function topicMatches(levels, topic) {
  const parts = topic.split("/");
  for (let i = 0; i < levels.length; i++) {
    if (levels[i] === "#") return true;
    if (i >= parts.length) return false;
    if (levels[i] !== "+" && levels[i] !== parts[i]) return false;
  }
  return levels.length === parts.length;
}

function relative(topic) {
  const prefix = model.root + "/";
  return topic.startsWith(prefix) ? topic.slice(prefix.length).split("/") : null;
}

// -- the model: what the messages say ----------------------------------------------------
function device(id) {
  let d = model.devices.get(id);
  if (!d) {
    d = { id, status: null, statusReason: null, statusSince: null, state: null, stateSince: null,
          sensors: new Map(), alarms: new Map(), headDirty: true, dirtySensors: new Set() };
    model.devices.set(id, d);
  }
  model.dirtyDevices.add(id);
  return d;
}

function onMessage(m) {
  // m: {t: topic, q: qos, r: 0|1 (replayed retained), p: payload text, n: bytes, ts: seconds}
  const traffic = model.topics.get(m.t) || { count: 0, times: [], qos: 0, retain: 0, payload: "" };
  traffic.count += 1;
  traffic.times.push(Date.now());
  if (traffic.times.length > 200) traffic.times.splice(0, traffic.times.length - 200);
  traffic.qos = m.q;
  traffic.retain = m.r;
  traffic.payload = m.n === 0 ? "(empty: clears the retained message)" : m.p;
  model.topics.set(m.t, traffic);
  model.dirtyTopics.add(m.t);
  model.pendingLog.push(m);
  if (model.pendingLog.length > LOG_ROWS) model.pendingLog.splice(0, model.pendingLog.length - LOG_ROWS);

  const rel = relative(m.t);
  if (!rel) return;
  const data = parse(m.p);
  // A retained message replayed by the broker is as old as its payload says; a live one is new.
  const when = m.r && isObject(data) && typeof data.ts === "number" ? data.ts * 1000 : Date.now();
  if (rel.length === 2 && (rel[0] === "status" || rel[0] === "state")) {
    const d = device(rel[1]);
    d.headDirty = true;
    if (m.n === 0) { // the retained message was deleted
      if (rel[0] === "status") d.status = null; else d.state = null;
      if (!d.status && !d.state) model.devices.delete(rel[1]);
      return;
    }
    if (!isObject(data)) return;
    if (rel[0] === "status") {
      if (data.status !== d.status) d.statusSince = when;
      d.status = String(data.status);
      d.statusReason = data.reason === undefined ? null : String(data.reason);
    } else {
      if (!d.state || data.state !== d.state.state) d.stateSince = when;
      d.state = data;
    }
  } else if (rel.length === 3 && rel[0] === "telemetry" && isObject(data)) {
    const d = device(rel[1]);
    const s = d.sensors.get(rel[2]) || { value: null, unit: "", history: [] };
    s.value = data.value;
    s.unit = typeof data.unit === "string" ? data.unit : "";
    if (typeof data.value === "number" && Number.isFinite(data.value)) {
      s.history.push(data.value);
      if (s.history.length > HISTORY) s.history.shift();
    }
    d.sensors.set(rel[2], s);
    d.dirtySensors.add(rel[2]);
  } else if (rel.length === 3 && rel[0] === "alarms" && isObject(data)) {
    const d = device(rel[1]);
    d.headDirty = true;
    if (data.state === "raised") {
      d.alarms.set(rel[2], { severity: String(data.severity), message: String(data.message ?? ""), since: when });
    } else if (data.state === "cleared") {
      d.alarms.delete(rel[2]);
    }
  } else if (rel.length === 5 && CHOC_TYPES.has(rel[4])) {
    onChocolate(rel, data, when);
  }
}

// factory/<site>/<line>/<step>/<machine>/<message_type>
function onChocolate(rel, data, when) {
  const [site, line, stepName, machineName, type] = rel;
  const key = `${site}/${line}`;
  let l = model.lines.get(key);
  if (!l) {
    l = { site, line, steps: new Map() };
    model.lines.set(key, l);
  }
  let step = l.steps.get(stepName);
  if (!step) {
    step = { machines: new Map(), batch: null, quality: null };
    l.steps.set(stepName, step);
  }
  const machine = step.machines.get(machineName) || { state: null };
  step.machines.set(machineName, machine);
  model.dirtyLines.add(key);
  if (!isObject(data)) return;
  if (type === "state" && data.state !== undefined) {
    machine.state = String(data.state);
    // A retained state may name the batch in the machine: the step's batch until an event says more.
    const named = data.batch_id !== undefined && data.batch_id !== null;
    if (named && (!step.batch || step.batch.fromState)) {
      step.batch = { id: String(data.batch_id), recipe: data.recipe === undefined ? "" : String(data.recipe),
                     event: "", when, fromState: machineName };
    } else if (!named && step.batch && step.batch.fromState === machineName) {
      step.batch = null; // that machine has finished with it
    }
  }
  if (type === "batch" && data.batch_id !== undefined) {
    step.batch = { id: String(data.batch_id), recipe: data.recipe === undefined ? "" : String(data.recipe),
                   event: data.event === undefined ? "" : String(data.event), when };
  }
  if (type === "quality" && data.batch_id !== undefined) {
    step.quality = { id: String(data.batch_id), result: String(data.result), when };
  }
}

// -- rendering (at most once per animation frame) -----------------------------------------
function schedule() {
  if (model.frameScheduled) return;
  model.frameScheduled = true;
  requestAnimationFrame(render);
}

function render() {
  model.frameScheduled = false;
  for (const id of model.dirtyDevices) renderDevice(id);
  model.dirtyDevices.clear();
  for (const topic of model.dirtyTopics) renderTopic(topic);
  model.dirtyTopics.clear();
  for (const key of model.dirtyLines) renderLine(key);
  model.dirtyLines.clear();
  renderLog();
  document.getElementById("devices-empty").hidden = model.devices.size > 0;
  syncDeviceChoices();
}

// The child of `container` for `key` (made by `make` the first time), children sorted by key.
const childIndex = new WeakMap(); // container -> Map(key -> child)

function keyed(container, selector, attr, key, make) {
  let index = childIndex.get(container);
  if (!index) {
    index = new Map();
    childIndex.set(container, index);
  }
  const known = index.get(key);
  if (known && known.parentNode === container) return known;
  const node = make();
  node.setAttribute(attr, key);
  const after = [...container.children].find((c) => c.matches(selector) && c.getAttribute(attr) > key);
  container.insertBefore(node, after || null);
  index.set(key, node);
  return node;
}

function renderDevice(id) {
  const container = document.getElementById("devices");
  const d = model.devices.get(id);
  if (!d) {
    for (const card of container.querySelectorAll(".device")) {
      if (card.dataset.device === id) card.remove();
    }
    return;
  }
  const card = keyed(container, ".device", "data-device", id, () => {
    const c = el("article", "device");
    const h = el("h3");
    h.append(el("span", "name"), el("span", "kind"));
    const badges = el("div", "badges");
    badges.append(el("span", "badge status"), " ", el("span", "since"), " ", el("span", "badge state"));
    c.append(h, badges, el("p", "reason"), el("dl", "setpoints"), el("dl", "counters"),
      el("ul", "sensors"), el("ul", "alarms"));
    c.addEventListener("click", () => select(c.dataset.device));
    d.headDirty = true;
    for (const name of d.sensors.keys()) d.dirtySensors.add(name);
    return c;
  });
  for (const name of d.dirtySensors) renderSensor(card, name, d.sensors.get(name));
  d.dirtySensors.clear();
  if (!d.headDirty) return;
  d.headDirty = false;
  card.querySelector(".name").textContent = id;
  const kind = d.state && d.state.kind !== undefined ? String(d.state.kind) : "";
  card.querySelector(".kind").textContent = kind;
  const status = card.querySelector(".status");
  status.textContent = d.status || "status unknown";
  status.dataset.value = d.status || "";
  card.dataset.status = d.status || "";
  card.querySelector(".since").dataset.since = d.statusSince || "";
  card.querySelector(".since").title = d.statusReason ? `reason: ${d.statusReason}` : "";
  const state = card.querySelector(".state");
  const stateName = d.state && d.state.state !== undefined ? String(d.state.state) : "";
  state.textContent = stateName || "state unknown";
  state.dataset.value = stateName;
  card.querySelector(".reason").textContent =
    d.state && d.state.reason !== undefined ? String(d.state.reason) : "";
  fillPairs(card.querySelector(".setpoints"), d.state && d.state.setpoints, "setpoint");
  fillPairs(card.querySelector(".counters"), d.state && d.state.counters, "counter");
  const alarms = card.querySelector(".alarms");
  alarms.replaceChildren();
  for (const [sensor, a] of d.alarms) {
    const item = el("li", "alarm", `${a.severity}: ${a.message}`);
    item.dataset.severity = a.severity;
    item.dataset.sensor = sensor;
    alarms.append(item);
  }
  tickSince(card);
}

function renderSensor(card, name, s) {
  const sensors = card.querySelector(".sensors");
  const row = keyed(sensors, ".sensor", "data-sensor", name, () => {
    const r = el("li", "sensor");
    const spark = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    spark.setAttribute("class", "spark");
    spark.setAttribute("viewBox", "0 0 90 22");
    spark.setAttribute("preserveAspectRatio", "none");
    spark.append(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
    const reading = el("span", "reading");
    reading.append(el("span", "value"), " ", el("span", "unit"));
    r.append(el("span", "name"), reading, spark);
    return r;
  });
  row.querySelector(".name").textContent = name;
  row.querySelector(".value").textContent = fmt(s.value);
  row.querySelector(".unit").textContent = s.unit;
  row.querySelector("polyline").setAttribute("points", sparkPoints(s.history));
}

function fillPairs(dl, values, kind) {
  dl.replaceChildren();
  if (!isObject(values)) return;
  for (const [name, value] of Object.entries(values)) {
    const dt = el("dt", "", name);
    const dd = el("dd", "", fmt(value));
    dd.dataset[kind] = name;
    dl.append(dt, dd);
  }
}

function sparkPoints(history) {
  if (history.length < 2) return "";
  const low = Math.min(...history);
  const high = Math.max(...history);
  const span = high - low || 1;
  return history
    .map((v, i) => `${((i / (HISTORY - 1)) * 90).toFixed(1)},${(20 - ((v - low) / span) * 18).toFixed(1)}`)
    .join(" ");
}

function tickSince(card) {
  const since = card.querySelector(".since");
  const ms = Number(since.dataset.since);
  since.textContent = ms ? `for ${ago(ms)}` : "";
}

function renderTopic(topic) {
  const tbody = document.querySelector("#traffic tbody");
  const t = model.topics.get(topic);
  const row = keyed(tbody, "tr", "data-topic", topic, () => {
    const r = el("tr");
    for (const name of ["topic", "count", "rate", "qos", "retain", "payload"]) r.append(el("td", name));
    return r;
  });
  row.querySelector(".topic").textContent = topic;
  row.querySelector(".topic").title = topic;
  row.querySelector(".count").textContent = String(t.count);
  row.querySelector(".rate").textContent = rate(t).toFixed(1);
  row.querySelector(".qos").textContent = String(t.qos);
  row.querySelector(".retain").textContent = t.retain ? "R" : "-";
  row.querySelector(".payload").textContent = t.payload;
  row.querySelector(".payload").title = t.payload.slice(0, 500);
}

function rate(t) {
  const now = Date.now();
  const recent = t.times.filter((ms) => now - ms <= 10000);
  // Only the last 200 arrivals are kept: when all of them are recent (a flood), the rate is
  // theirs over the time they span, not 200 / 10 s.
  if (recent.length >= 200) return recent.length / Math.max((now - recent[0]) / 1000, 0.001);
  return recent.length / 10;
}

function renderLog() {
  const paused = document.getElementById("log-pause").checked;
  if (paused || model.pendingLog.length === 0) return;
  const log = document.getElementById("log");
  const rows = [];
  for (const m of model.pendingLog) {
    if (model.filter && !topicMatches(model.filter, m.t)) continue;
    rows.push(logRow(m));
  }
  model.pendingLog = [];
  log.prepend(...rows.reverse());
  while (log.children.length > LOG_ROWS) log.lastElementChild.remove();
}

function logRow(m) {
  const row = el("li", "log-row");
  row.dataset.topic = m.t;
  const time = new Date(m.ts * 1000).toLocaleTimeString();
  row.append(el("span", "time", time + " "), el("span", "flags", `[q${m.q} ${m.r ? "R" : "-"}]`),
    el("span", "topic", m.t), el("span", "payload", m.n === 0 ? "<empty>" : m.p));
  return row;
}

function renderLine(key) {
  const l = model.lines.get(key);
  document.getElementById("lines-section").hidden = false;
  const container = document.getElementById("lines");
  const node = keyed(container, ".line", "data-line", key, () => {
    const n = el("div", "line");
    n.append(el("h3", "", `${l.site} / ${l.line}`), el("div", "steps"));
    return n;
  });
  const steps = node.querySelector(".steps");
  for (const [name, step] of l.steps) {
    const s = keyed(steps, ".step", "data-step", name, () => {
      const box = el("div", "step");
      box.append(el("h4", "", name), el("ul", "machines"), el("div", "batch"), el("div", "quality"));
      return box;
    });
    const machines = s.querySelector(".machines");
    for (const [mname, machine] of step.machines) {
      const item = keyed(machines, ".machine", "data-machine", mname, () => {
        const li = el("li", "machine");
        li.append(el("span", "name", mname), el("span", "badge state"));
        return li;
      });
      const badge = item.querySelector(".state");
      badge.textContent = machine.state || "?";
      badge.dataset.value = machine.state || "";
    }
    const batch = s.querySelector(".batch");
    batch.textContent = step.batch
      ? `batch ${step.batch.id}${step.batch.recipe ? ` (${step.batch.recipe})` : ""}${step.batch.event ? `: ${step.batch.event}` : ""}`
      : "no batch yet";
    batch.dataset.batch = step.batch ? step.batch.id : "";
    const quality = s.querySelector(".quality");
    quality.replaceChildren();
    if (step.quality) {
      quality.append(`quality of ${step.quality.id}: `, el("span", "verdict", step.quality.result));
      quality.dataset.result = step.quality.result;
      quality.dataset.batch = step.quality.id;
    } else {
      quality.textContent = "no quality result yet";
    }
  }
}

// -- command center --------------------------------------------------------------------------
function syncDeviceChoices() {
  const select = document.getElementById("cmd-device");
  const ids = [...model.devices.keys()].sort();
  const current = [...select.options].map((o) => o.value);
  if (ids.join("\n") !== current.join("\n")) {
    const keep = select.value;
    select.replaceChildren(...ids.map((id) => {
      const option = el("option", "", id);
      option.value = id;
      return option;
    }));
    if (ids.includes(keep)) select.value = keep;
  }
  if (!model.selected && select.value) model.selected = select.value;
  syncSetpoints();
}

function syncSetpoints() {
  const select = document.getElementById("cmd-setpoint");
  const d = model.devices.get(document.getElementById("cmd-device").value);
  const names = d && d.state && isObject(d.state.setpoints) ? Object.keys(d.state.setpoints).sort() : [];
  const current = [...select.options].map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    select.replaceChildren(...names.map((name) => {
      const option = el("option", "", name);
      option.value = name;
      return option;
    }));
  }
  document.getElementById("cmd-topic").textContent =
    `${model.root}/commands/${model.clientId}/${document.getElementById("cmd-device").value || "<device>"}`;
  for (const card of document.querySelectorAll(".device")) {
    card.classList.toggle("selected", card.dataset.device === document.getElementById("cmd-device").value);
  }
}

function select(id) {
  model.selected = id;
  document.getElementById("cmd-device").value = id;
  syncSetpoints();
}

async function sendCommand(command) {
  const error = document.getElementById("cmd-error");
  error.textContent = "";
  const request = { device: document.getElementById("cmd-device").value, command };
  const reason = document.getElementById("cmd-reason").value.trim();
  if (reason) request.reason = reason;
  if (command === "set") {
    request.setpoint = document.getElementById("cmd-setpoint").value;
    const text = document.getElementById("cmd-value").value.trim();
    // An empty or non-numeric field is sent as text: the server explains what is wrong.
    request.value = text !== "" && Number.isFinite(Number(text)) ? Number(text) : text;
  }
  let response;
  try {
    response = await fetch("api/commands", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
  } catch (err) {
    error.textContent = `the dashboard server is unreachable: ${err}`;
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || `the server answered HTTP ${response.status}`;
  }
}

const outcomes = new Map(); // command_id -> outcome that arrived before its command line

function onCommand(c) {
  const item = el("li", "outcome");
  item.dataset.commandId = String(c.command_id);
  item.dataset.device = String(c.device);
  item.dataset.result = "sent";
  item.append(el("span", "what", `${c.description} → ${c.device}`), " ", el("span", "result", "sent"),
    " ", el("span", "detail", "waiting for the device…"));
  item.title = `${c.command_id} on ${c.topic}`;
  document.getElementById("cmd-log").prepend(item);
  const early = outcomes.get(c.command_id);
  if (early) onOutcome(early);
}

function onOutcome(o) {
  const item = [...document.querySelectorAll("#cmd-log .outcome")].find((i) => i.dataset.commandId === o.command_id);
  if (!item) {
    outcomes.set(o.command_id, o);
    return;
  }
  outcomes.delete(o.command_id);
  item.dataset.result = String(o.result);
  item.querySelector(".result").textContent = String(o.result);
  item.querySelector(".detail").textContent = String(o.detail || "");
}

// -- connection --------------------------------------------------------------------------------
function setConnection(state, text) {
  const conn = document.getElementById("conn");
  conn.dataset.state = state;
  conn.textContent = text;
}

let retryMs = 500;

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.onmessage = (event) => {
    const frame = parse(event.data);
    if (!isObject(frame)) return;
    if (frame.type === "hello") {
      retryMs = 500;
      model.root = String(frame.root);
      model.clientId = String(frame.client_id);
      document.getElementById("root").textContent = `${model.root}/# on ${frame.broker}`;
      document.getElementById("filter").placeholder = `e.g. ${model.root}/telemetry/+/temperature or ${model.root}/alarms/#`;
      if (frame.connected) setConnection("live", "live");
      else setConnection("broker-down", "broker unreachable");
    } else if (frame.type === "messages") {
      for (const m of frame.items) onMessage(m);
    } else if (frame.type === "broker") {
      if (frame.connected) setConnection("live", "live");
      else setConnection("broker-down", `broker unreachable (${frame.detail})`);
    } else if (frame.type === "command") {
      onCommand(frame);
    } else if (frame.type === "outcome") {
      onOutcome(frame);
    }
    schedule();
  };
  ws.onclose = () => {
    setConnection("server-down", "dashboard server unreachable: reconnecting");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 5000);
  };
}

function start() {
  for (const button of document.querySelectorAll("#command-form button")) {
    button.addEventListener("click", () => sendCommand(button.dataset.command));
  }
  document.getElementById("command-form").addEventListener("submit", (e) => e.preventDefault());
  document.getElementById("cmd-device").addEventListener("change", (e) => select(e.target.value));
  document.getElementById("filter").addEventListener("input", (e) => {
    const text = e.target.value.trim();
    const problem = text ? filterProblem(text) : null;
    document.getElementById("filter-error").textContent = problem || "";
    if (problem) return;
    model.filter = text ? text.split("/") : null;
    for (const row of [...document.getElementById("log").children]) {
      if (model.filter && !topicMatches(model.filter, row.dataset.topic)) row.remove();
    }
  });
  setInterval(() => {
    for (const card of document.querySelectorAll(".device")) tickSince(card);
    for (const row of document.querySelectorAll("#traffic tbody tr")) {
      const t = model.topics.get(row.dataset.topic);
      if (t) row.querySelector(".rate").textContent = rate(t).toFixed(1);
    }
  }, 1000);
  connect();
}

start();
