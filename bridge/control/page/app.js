// The call monitor: the pool's calls and a call's events as they arrive (docs/operations.md).
// Plain browser JavaScript, no build step, no library. Talks to the control API with the token the
// user typed (kept in sessionStorage for this tab): GET /v1/calls every 2 s, GET /v1/pool every 5 s,
// and the live feed GET /v1/events read with fetch() (EventSource cannot send an Authorization
// header), resumed with Last-Event-ID after a drop.
"use strict";

const TOKEN_KEY = "vblaze-bridge-token";
const ENDED_KEPT_MS = 60000; // an ended call stays in the list this long, greyed
const HOP_NAMES = {
  audio_to_socket: "audio frame → engine socket",
  speech_end_to_utterance: "speech end → utterance",
  utterance_to_webhook_sent: "utterance → webhook sent",
  utterance_to_webhook_ack: "utterance → webhook 2xx",
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  canAct: false,
  calls: new Map(), // call_id -> {info from /v1/calls, events: [], ended: null, endedAt}
  selected: null,
  lastEventId: null,
  feed: null, // AbortController of the running feed
  timers: [],
};

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("The token was refused.");
    throw new Error("401");
  }
  return response;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.feed) state.feed.abort();
  state.timers.forEach(clearInterval);
  state.timers = [];
  $("monitor").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function signIn(token) {
  state.token = token;
  try {
    const who = await api("/v1/whoami");
    const body = who.ok ? await who.json() : { can_act: true };
    state.canAct = body.can_act !== false;
  } catch (error) {
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("monitor").hidden = false;
  $("call-actions").hidden = !state.canAct;
  refreshCalls();
  refreshPool();
  state.timers.push(setInterval(refreshCalls, 2000), setInterval(refreshPool, 5000), setInterval(render, 1000));
  runFeed();
}

// --- data -----------------------------------------------------------------------------------------

function call(id) {
  let entry = state.calls.get(id);
  if (!entry) {
    entry = { info: { call_id: id }, events: [], seqs: new Set(), ended: null, endedAt: null, paused: false };
    state.calls.set(id, entry);
  }
  return entry;
}

async function refreshCalls() {
  let body;
  try {
    const response = await api("/v1/calls");
    if (!response.ok) return;
    body = await response.json();
  } catch (error) {
    return;
  }
  const list = Array.isArray(body) ? body : body.calls || [];
  const up = new Set();
  for (const info of list) {
    up.add(info.call_id);
    const entry = call(info.call_id);
    entry.info = Object.assign({}, entry.info, info);
    entry.paused = Boolean(info.paused);
  }
  for (const [id, entry] of state.calls) {
    if (!up.has(id) && !entry.endedAt && entry.info.started_at) entry.endedAt = Date.now();
  }
  render();
}

async function refreshPool() {
  try {
    const response = await api("/v1/pool");
    if (!response.ok) return;
    const pool = await response.json();
    const badge = $("ready");
    badge.textContent = pool.ready ? "ready" : `not ready: ${pool.reason}`;
    badge.className = `badge ${pool.ready ? "ready" : "not-ready"}`;
    const rows = Object.entries(pool.hops || {}).map(([hop, figures]) =>
      `<tr><td>${esc(HOP_NAMES[hop] || hop)}</td><td>${ms(figures.p50)}</td><td>${ms(figures.p99)}</td></tr>`);
    document.querySelector("#hops tbody").innerHTML = rows.join("");
  } catch (error) {
    /* the next refresh tries again */
  }
}

function onEvent(envelope) {
  const entry = call(envelope.call_id);
  if (entry.seqs.has(envelope.seq)) return; // held events sent again after a reconnect
  entry.seqs.add(envelope.seq);
  entry.events.push(envelope);
  entry.events.sort((a, b) => a.seq - b.seq);
  const data = envelope.data || {};
  if (envelope.type === "call.started") {
    entry.info = Object.assign({ from: data.from, to: data.to, route: data.route, worker: data.worker,
      started_at: data.started_at }, entry.info);
  } else if (envelope.type === "call.paused") {
    entry.paused = true;
  } else if (envelope.type === "call.resumed") {
    entry.paused = false;
  } else if (envelope.type === "call.ended") {
    entry.ended = data;
    entry.paused = false;
    entry.endedAt = entry.endedAt || Date.now();
  }
  render();
}

// --- the live feed ----------------------------------------------------------------------------------

async function runFeed() {
  while (state.token) {
    const controller = new AbortController();
    state.feed = controller;
    const headers = {};
    if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
    try {
      const response = await api("/v1/events", { headers, signal: controller.signal });
      if (response.ok) {
        $("feed-state").textContent = "live";
        await readStream(response.body.getReader());
      }
    } catch (error) {
      if (!state.token) return;
    }
    $("feed-state").textContent = "reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function readStream(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") message.id = text;
        else if (field === "event") message.event = text;
        else if (field === "data") message.data.push(text);
      }
      if (message.event === "cut") return; // cut off for falling behind: reconnect and resume
      if (!message.data.length) continue;
      if (message.id) state.lastEventId = message.id;
      onEvent(JSON.parse(message.data.join("\n")));
    }
  }
}

// --- rendering --------------------------------------------------------------------------------------

function esc(text) {
  return String(text === undefined || text === null ? "" : text).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

function duration(entry) {
  if (entry.ended && entry.ended.duration !== undefined) return entry.ended.duration;
  const started = Date.parse(entry.info.started_at);
  return Number.isNaN(started) ? null : (Date.now() - started) / 1000;
}

function gapsText(entry) {
  if (entry.ended) return (entry.ended.gaps || []).length ? entry.ended.gaps.map((g) => g.cause).join(", ") : "none";
  const pauses = entry.events.filter((e) => e.type === "call.paused").length;
  return pauses ? `${pauses} paused` : "none so far";
}

function render() {
  const now = Date.now();
  for (const [id, entry] of state.calls) {
    if (entry.endedAt && now - entry.endedAt > ENDED_KEPT_MS && id !== state.selected) state.calls.delete(id);
  }
  const rows = [];
  for (const [id, entry] of state.calls) {
    const info = entry.info;
    const seen = entry.events.filter((e) => e.type === "utterance").length; // live, before the list catches up
    const utterances = Math.max(seen, entry.ended ? 0 : Number(info.utterances) || 0);
    const status = entry.ended ? `ended (${entry.ended.reason})` : entry.paused ? "paused" : "up";
    const seconds = duration(entry);
    const classes = [entry.paused ? "paused" : "", entry.ended ? "ended" : "", id === state.selected ? "selected" : ""];
    rows.push(`<tr data-call="${esc(id)}" class="${classes.join(" ").trim()}">
      <td>${esc(info.from)}</td><td>${esc(info.to)}</td><td>${esc(info.route || "")}</td>
      <td>${esc(info.worker)}</td><td>${seconds === null ? "" : seconds.toFixed(0) + " s"}</td>
      <td class="state">${esc(status)}</td><td>${esc(info.engine || "")}</td>
      <td class="utterances">${utterances}</td><td>${esc(gapsText(entry))}</td></tr>`);
  }
  document.querySelector("#calls tbody").innerHTML = rows.join("");
  $("calls-count").textContent = `(${[...state.calls.values()].filter((e) => !e.ended).length})`;
  $("no-calls").hidden = rows.length > 0;
  renderCall();
}

function renderCall() {
  const entry = state.selected ? state.calls.get(state.selected) : null;
  $("call").hidden = !entry;
  if (!entry) return;
  $("call-title").textContent = `${entry.info.from || ""} → ${entry.info.to || ""}`;
  $("pause").hidden = entry.paused || Boolean(entry.ended);
  $("resume").hidden = !entry.paused || Boolean(entry.ended);
  $("hangup").hidden = Boolean(entry.ended);
  $("timeline").innerHTML = entry.events.map(item).join("");
}

function item(envelope) {
  const d = envelope.data || {};
  switch (envelope.type) {
    case "utterance": {
      const who = d.role ? `${d.role}${d.channel !== undefined && d.channel !== null ? " (ch " + d.channel + ")" : ""}`
        : d.channel !== undefined && d.channel !== null ? `ch ${d.channel}` : "";
      const conf = typeof d.confidence === "number" ? `<span class="conf">${d.confidence.toFixed(2)}</span>` : "";
      return `<li class="utterance"><span class="when">${d.start.toFixed(2)}–${d.end.toFixed(2)} s</span>` +
        `${who ? `<span class="role">${esc(who)}</span>` : ""}<span class="text">${esc(d.text)}</span>${conf}</li>`;
    }
    case "dtmf":
      return `<li class="dtmf"><span class="when">${d.at.toFixed(2)} s</span>DTMF ${esc(d.digit)}</li>`;
    case "call.paused":
      return `<li class="paused"><span class="when">${d.at.toFixed(2)} s</span>paused by ${esc(d.by)}` +
        `${d.reason ? ": " + esc(d.reason) : ""}</li>`;
    case "call.resumed":
      return `<li class="resumed"><span class="when">${d.at.toFixed(2)} s</span>resumed by ${esc(d.by)}</li>`;
    case "call.started":
      return `<li class="started">call started on worker ${esc(d.worker)}${d.route ? ", route " + esc(d.route) : ""}</li>`;
    case "call.ended": {
      const gaps = (d.gaps || []).map((g) => `${g.cause} ${g.start.toFixed(1)}+${g.duration.toFixed(1)} s`).join(", ");
      return `<li class="ended">call ended (${esc(d.reason)}): ${d.utterances} utterances, ` +
        `${Number(d.duration).toFixed(1)} s, gaps: ${esc(gaps || "none")}</li>`;
    }
    default:
      return `<li>${esc(envelope.type)}</li>`;
  }
}

async function act(action) {
  const id = state.selected;
  if (!id) return;
  const options = { method: "POST", headers: { "Content-Type": "application/json" } };
  if (action === "pause") options.body = JSON.stringify({ reason: $("pause-reason").value });
  else options.body = "{}";
  try {
    const response = await api(`/v1/calls/${encodeURIComponent(id)}/${action}`, options);
    $("action-result").textContent = response.ok ? `${action}: done` : `${action}: HTTP ${response.status}`;
    if (response.ok && action === "pause") call(id).paused = true;
    if (response.ok && action === "resume") call(id).paused = false;
    render();
  } catch (error) {
    $("action-result").textContent = `${action}: ${error.message}`;
  }
}

document.querySelector("#calls tbody").addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-call]");
  if (!row) return;
  state.selected = row.dataset.call;
  render();
});
$("pause").addEventListener("click", () => act("pause"));
$("resume").addEventListener("click", () => act("resume"));
$("hangup").addEventListener("click", () => act("hangup"));
$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});

if (state.token) signIn(state.token);
else signOut();
