// inboxflow console: draws the topic and consumer-group graph from /api/catalogue, then updates
// it, the dead-letter, breaker, account and job tables from the snapshots /events pushes.
// Actions (redrive, pause, resume) are POSTs that carry the token the page was served with.
"use strict";

const TOKEN = document.querySelector('meta[name="inboxflow-token"]').content;
const SVG_NS = "http://www.w3.org/2000/svg";
const JOB_STATUSES = ["queued", "processing", "retrying", "done", "error", "dead"];
const LAYOUT = { column: 172, nodeWidth: 156, topicHeight: 40, groupHeight: 84, dlqHeight: 22, gap: 14, top: 10 };

const nodes = new Map(); // "group:<id>" | "topic:<name>" | "dlq:<name>" -> {el, lines}
const confirmations = new Map(); // agent -> {report} while a redrive waits for confirmation
let namespace = "";

// --- formatting ---------------------------------------------------------------------------------

function rate(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? `${Math.round(value)}/s` : `${value.toFixed(1)}/s`;
}

function count(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const sign = seconds < 0 ? "-" : "";
  const left = Math.abs(seconds);
  if (left >= 86400) return `${sign}${(left / 86400).toFixed(1)} d`;
  if (left >= 3600) return `${sign}${(left / 3600).toFixed(1)} h`;
  if (left >= 60) return `${sign}${(left / 60).toFixed(1)} min`;
  return `${sign}${Math.round(left)} s`;
}

function short(topic) {
  // inboxflow.gmail.message-fetched.v1 -> message-fetched
  const parts = topic.split(".");
  return parts.length >= 4 ? parts[parts.length - 2] : topic;
}

function errors(perClass) {
  if (!perClass) return "errors –";
  const shown = Object.entries(perClass).filter(([, v]) => v > 0);
  if (!shown.length) return "errors 0/s";
  return "errors " + shown.map(([k, v]) => `${k} ${v.toFixed(1)}/s`).join(", ");
}

// --- the graph ----------------------------------------------------------------------------------

function svg(tag, attributes, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  if (parent) parent.appendChild(el);
  return el;
}

// Columns by longest path from the topics nobody produces; a group's own outputs that it also
// reads (sync's message-discovered) do not push it right.
function layers(catalogue) {
  const events = catalogue.topics.filter((t) => t.role === "event").map((t) => t.name);
  const producers = new Map(events.map((t) => [t, []]));
  for (const g of catalogue.groups) for (const t of g.produces) producers.get(t)?.push(g.group_id);
  const layer = new Map(events.filter((t) => producers.get(t).length === 0).map((t) => [t, 0]));
  for (let round = 0; round < 20; round += 1) {
    let changed = false;
    for (const g of catalogue.groups) {
      const inputs = g.sources.filter((t) => !g.produces.includes(t) && layer.has(t));
      const value = Math.max(0, ...inputs.map((t) => layer.get(t) + 1));
      if (layer.get(g.group_id) !== value) { layer.set(g.group_id, value); changed = true; }
    }
    for (const t of events) {
      const from = producers.get(t).filter((g) => layer.has(g));
      if (!from.length) continue;
      const value = Math.max(...from.map((g) => layer.get(g) + 1));
      if (layer.get(t) !== value) { layer.set(t, value); changed = true; }
    }
    if (!changed) break;
  }
  return { events, layer };
}

function drawGraph(catalogue) {
  const root = document.getElementById("graph");
  root.replaceChildren();
  const { events, layer } = layers(catalogue);
  const columns = [];
  const place = (key, column) => { (columns[column] ||= []).push(key); };
  for (const t of events) place(`topic:${t}`, layer.get(t) ?? 0);
  for (const g of catalogue.groups) place(`group:${g.group_id}`, layer.get(g.group_id) ?? 1);
  const boxes = new Map();
  let height = 0;
  columns.forEach((keys, column) => {
    let y = LAYOUT.top;
    for (const key of keys) {
      const isGroup = key.startsWith("group:");
      const h = isGroup ? LAYOUT.groupHeight : LAYOUT.topicHeight;
      boxes.set(key, { x: 8 + column * LAYOUT.column, y, w: LAYOUT.nodeWidth, h });
      y += h + LAYOUT.gap;
      if (isGroup) {
        const group = catalogue.groups.find((g) => `group:${g.group_id}` === key);
        boxes.set(`dlq:${group.dlq}`, { x: 8 + column * LAYOUT.column + 18, y: y - 6, w: LAYOUT.nodeWidth - 18, h: LAYOUT.dlqHeight });
        y += LAYOUT.dlqHeight + LAYOUT.gap;
      }
    }
    height = Math.max(height, y);
  });
  // Drawn at its natural size, scaled down to the page's width when narrower.
  const width = 16 + columns.length * LAYOUT.column;
  root.setAttribute("viewBox", `0 0 ${width} ${height + 4}`);
  root.setAttribute("width", "100%");
  root.style.maxWidth = `${width}px`;
  const edges = svg("g", { class: "edges" }, root);
  const drawn = svg("g", { class: "nodes" }, root);
  for (const g of catalogue.groups) {
    const group = boxes.get(`group:${g.group_id}`);
    for (const t of g.sources) edge(edges, boxes.get(`topic:${t}`), group, g.produces.includes(t));
    for (const t of g.produces) if (!g.sources.includes(t)) edge(edges, group, boxes.get(`topic:${t}`), false);
    const dlq = boxes.get(`dlq:${g.dlq}`);
    svg("path", { class: "edge failure", d: `M${dlq.x - 10},${group.y + group.h} V${dlq.y + dlq.h / 2} H${dlq.x}` }, edges);
  }
  nodes.clear();
  for (const t of events) node(drawn, "topic", t, boxes.get(`topic:${t}`), short(t), 1);
  for (const g of catalogue.groups) {
    node(drawn, "group", g.group_id, boxes.get(`group:${g.group_id}`), g.agent, 4, g.description);
    node(drawn, "dlq", g.dlq, boxes.get(`dlq:${g.dlq}`), null, 1);
  }
}

function edge(parent, from, to, back) {
  if (!from || !to) return;
  if (back || to.x <= from.x) {
    // A group reading its own output: loop over the top of both nodes.
    const top = Math.min(from.y, to.y) - 6;
    svg("path", { class: "edge back", d: `M${from.x + from.w / 2},${from.y} C${from.x + from.w / 2},${top - 14} ${to.x + to.w / 2},${top - 14} ${to.x + to.w / 2},${to.y}` }, parent);
    return;
  }
  const x1 = from.x + from.w;
  const y1 = from.y + from.h / 2;
  const x2 = to.x;
  const y2 = to.y + to.h / 2;
  const bend = (x2 - x1) / 2;
  svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}` }, parent);
}

function node(parent, kind, name, box, title, lineCount, description) {
  const el = svg("g", { class: `node ${kind}`, "data-kind": kind, "data-name": name, transform: `translate(${box.x},${box.y})` }, parent);
  svg("title", {}, el).textContent = description ? `${name}\n${description}` : name;
  svg("rect", { width: box.w, height: box.h, rx: 5 }, el);
  const lines = [];
  let y = 15;
  if (title !== null) {
    const heading = svg("text", { class: "title", x: 8, y }, el);
    heading.textContent = title;
    y += 14;
    if (kind === "group") {
      const badge = svg("text", { class: "badge state", x: box.w - 6, y: 14, "text-anchor": "end" }, el);
      lines.push(badge);
    }
  }
  for (let i = 0; i < lineCount; i += 1) {
    lines.push(svg("text", { class: "metric", x: 8, y: title === null ? 15 : y }, el));
    y += 13;
  }
  nodes.set(`${kind}:${name}`, { el, lines });
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function renderGraph(snapshot) {
  const workersOf = new Map();
  for (const w of snapshot.workers) for (const g of w.groups) (workersOf.get(g) || workersOf.set(g, []).get(g)).push(w.url);
  for (const t of snapshot.topics) {
    const n = nodes.get(`topic:${t.name}`);
    if (!n) continue;
    setText(n.lines[0], t.exists ? `${count(t.records)} rec · ${rate(t.per_second)}` : "missing");
  }
  for (const g of snapshot.groups) {
    const n = nodes.get(`group:${g.group_id}`);
    if (!n) continue;
    const [badge, lag, flow, failures, tiers] = n.lines;
    const open = snapshot.breakers.filter((b) => b.state !== "closed" && (workersOf.get(g.group_id) || []).includes(b.worker));
    setText(badge, open.length ? `breaker ${open[0].state}` : g.state ? `${g.state} ${g.members}` : "");
    badge.classList.toggle("open", open.length > 0);
    const change = g.lag_change === null ? "" : ` (${g.lag_change >= 0 ? "+" : ""}${g.lag_change})`;
    setText(lag, `lag ${count(g.lag)}${change}`);
    setText(flow, `in ${rate(g.in_per_second)} · out ${rate(g.out_per_second)}`);
    setText(failures, errors(g.errors_per_second));
    setText(tiers, g.tiers.length ? "retry " + g.tiers.map((t) => count(t.depth)).join(" · ") : "no retry tiers");
    n.el.classList.toggle("rising", g.trend === "rising");
    n.el.classList.toggle("alert", open.length > 0);
    const d = nodes.get(`dlq:${g.dlq.topic}`);
    if (d) {
      setText(d.lines[0], g.dlq.exists ? `DLQ ${count(g.dlq.pending)} pending` : "DLQ missing");
      d.el.classList.toggle("alert", g.dlq.pending > 0);
    }
  }
}

// --- tables -------------------------------------------------------------------------------------

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// Rows keyed by id and updated in place, so a button is never replaced under the pointer.
function keyedRow(tbody, key, columns) {
  let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.key = key;
    for (const className of columns) cell(row, "", className);
    tbody.appendChild(row);
  }
  return row;
}

function dropOtherRows(tbody, keys) {
  for (const row of [...tbody.rows]) if (!keys.has(row.dataset.key)) row.remove();
}

function renderDlqs(snapshot) {
  const tbody = document.querySelector("#dlqs tbody");
  const keys = new Set();
  for (const g of snapshot.groups) {
    keys.add(g.agent);
    const row = keyedRow(tbody, g.agent, ["", "num", "num", "actions"]);
    row.dataset.agent = g.agent;
    setText(row.cells[0], g.group_id);
    setText(row.cells[1], g.dlq.exists ? count(g.dlq.pending) : "missing");
    row.cells[1].classList.toggle("bad", g.dlq.pending > 0);
    setText(row.cells[2], count(g.dlq.records));
    if (!row.cells[3].firstChild) showRedrive(row.cells[3], g.agent);
  }
  dropOtherRows(tbody, keys);
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function showRedrive(td, agent) {
  confirmations.delete(agent);
  const b = button("Redrive…", () => planRedrive(td, agent));
  b.dataset.action = "redrive";
  td.replaceChildren(b);
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Inboxflow-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function say(text, bad) {
  const out = document.getElementById("action-result");
  out.textContent = text;
  out.classList.toggle("bad", Boolean(bad));
}

async function planRedrive(td, agent) {
  td.replaceChildren(document.createTextNode("checking…"));
  let report;
  try {
    report = await post(`/api/dlq/${encodeURIComponent(agent)}/redrive`, { execute: false });
  } catch (error) {
    say(`redrive of ${agent}: ${error.message}`, true);
    showRedrive(td, agent);
    return;
  }
  if (report.moved === 0) {
    say(`${report.dlq_topic}: nothing to redrive`);
    showRedrive(td, agent);
    return;
  }
  confirmations.set(agent, report);
  const question = document.createElement("span");
  question.textContent = `Send ${report.moved} record(s) to ${report.target_topic}? `;
  const confirm = button("Confirm redrive", () => runRedrive(td, agent), "danger");
  confirm.dataset.action = "confirm-redrive";
  const cancel = button("Cancel", () => showRedrive(td, agent));
  cancel.dataset.action = "cancel-redrive";
  td.replaceChildren(question, confirm, document.createTextNode(" "), cancel);
}

async function runRedrive(td, agent) {
  td.replaceChildren(document.createTextNode("redriving…"));
  try {
    const report = await post(`/api/dlq/${encodeURIComponent(agent)}/redrive`, { execute: true });
    say(`sent ${report.moved} record(s) from ${report.dlq_topic} to ${report.target_topic} (replay id ${report.replay_id})`);
  } catch (error) {
    say(`redrive of ${agent}: ${error.message}`, true);
  }
  showRedrive(td, agent);
}

function renderBreakers(snapshot) {
  const tbody = document.querySelector("#breakers tbody");
  tbody.replaceChildren();
  if (!snapshot.breakers.length) {
    const row = tbody.insertRow();
    cell(row, "no breaker reported", "muted").colSpan = 3;
  }
  for (const b of snapshot.breakers) {
    const row = tbody.insertRow();
    cell(row, b.name);
    cell(row, b.state, b.state === "closed" ? "" : "bad");
    cell(row, b.worker, "muted");
  }
  const workers = document.querySelector("#workers tbody");
  workers.replaceChildren();
  if (!snapshot.workers.length) {
    const row = workers.insertRow();
    cell(row, "no metrics endpoints given (--metrics URL or INBOXFLOW_METRICS_PORT)", "muted").colSpan = 3;
  }
  for (const w of snapshot.workers) {
    const row = workers.insertRow();
    cell(row, w.url);
    cell(row, w.up ? "up" : "down", w.up ? "" : "warn").title = w.error || "";
    cell(row, w.groups.map((g) => g.replace(`${namespace}-`, "")).join(", ") || "–", "muted");
  }
}

function renderAccounts(snapshot) {
  const tbody = document.querySelector("#accounts tbody");
  const keys = new Set();
  const now = Date.parse(snapshot.taken_at);
  for (const a of snapshot.accounts || []) {
    keys.add(a.user_id);
    const row = keyedRow(tbody, a.user_id, ["", "", "", "num", "", "num", "actions"]);
    row.dataset.user = a.user_id;
    setText(row.cells[0], a.user_id);
    // Right after an action, a snapshot taken before it must not show the old state again.
    const held = Number(row.dataset.holdUntil || 0) > Date.now();
    if (!held) {
      row.dataset.state = a.state;
      setText(row.cells[1], a.state);
      renderAccountAction(row.cells[6], a);
    }
    const synced = a.last_synced_at ? `${duration((now - Date.parse(a.last_synced_at)) / 1000)} ago` : "never";
    setText(row.cells[2], a.last_sync_outcome ? `${synced} (${a.last_sync_outcome})` : synced);
    row.cells[2].title = a.last_sync_error || "";
    setText(row.cells[3], duration(a.staleness_seconds));
    row.cells[3].classList.toggle("bad", a.stale);
    setText(row.cells[4], a.watch_expires_in_seconds === null ? "no watch" : `in ${duration(a.watch_expires_in_seconds)}`);
    renderQuota(row.cells[5], a);
  }
  dropOtherRows(tbody, keys);
  setText(document.getElementById("quota-note"), snapshot.quota.note ? `quota ${snapshot.quota.note}` : `quota: units charged in the last ${duration(snapshot.quota.window_seconds)} against ${count(snapshot.quota.ceiling)} per account`);
}

function renderQuota(td, account) {
  if (!td.firstChild) {
    td.append(document.createElement("span"), Object.assign(document.createElement("span"), { className: "quota" }));
    td.lastChild.appendChild(document.createElement("span"));
  }
  const units = account.quota_units;
  setText(td.firstChild, units === null ? `? / ${count(account.quota_ceiling)}` : `${count(Math.round(units))} / ${count(account.quota_ceiling)}`);
  const share = units === null ? 0 : Math.min(1, units / account.quota_ceiling);
  td.lastChild.firstChild.style.width = `${Math.round(share * 100)}%`;
}

function renderAccountAction(td, account) {
  const wanted = account.state === "active" ? "pause" : account.state === "paused" ? "resume" : null;
  if (td.dataset.busy === "1") return; // a request is on its way; its answer redraws the cell
  const current = td.firstChild && td.firstChild.dataset ? td.firstChild.dataset.action : null;
  if (current === wanted && (wanted !== null || !td.firstChild)) return;
  if (!wanted) { td.replaceChildren(); return; }
  const b = button(wanted === "pause" ? "Pause" : "Resume", () => changeAccount(td, account.user_id, wanted));
  b.dataset.action = wanted;
  td.replaceChildren(b);
}

async function changeAccount(td, user, action) {
  td.dataset.busy = "1";
  td.firstChild.disabled = true;
  try {
    const result = await post(`/api/accounts/${encodeURIComponent(user)}/${action}`);
    say(`${result.account.user_id} is ${result.account.state}${result.warning ? `; ${result.warning}` : ""}`);
    const row = td.parentElement;
    row.dataset.holdUntil = String(Date.now() + 3000);
    row.dataset.state = result.account.state;
    setText(row.cells[1], result.account.state);
    td.dataset.busy = "";
    renderAccountAction(td, result.account);
  } catch (error) {
    say(`${action} ${user}: ${error.message}`, true);
    td.dataset.busy = "";
    td.firstChild.disabled = false;
  }
}

function renderJobs(snapshot) {
  const table = document.getElementById("jobs");
  const jobs = snapshot.jobs || {};
  const seen = new Set(Object.values(jobs).flatMap((rows) => Object.keys(rows)));
  const statuses = [...JOB_STATUSES, ...[...seen].filter((s) => !JOB_STATUSES.includes(s)).sort()];
  const head = document.createElement("tr");
  for (const s of ["kind", ...statuses]) {
    const th = document.createElement("th");
    th.className = s === "kind" ? "" : "num";
    th.textContent = s;
    head.appendChild(th);
  }
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const [kind, rows] of Object.entries(jobs)) {
    const row = body.insertRow();
    row.dataset.kind = kind;
    cell(row, kind);
    for (const s of statuses) cell(row, count(rows[s] || 0), (s === "error" || s === "dead") && rows[s] ? "num bad" : "num");
  }
  if (!Object.keys(jobs).length) cell(body.insertRow(), snapshot.jobs ? "no job rows yet" : "not read", "muted");
}

// --- wiring -------------------------------------------------------------------------------------

function render(snapshot) {
  namespace = snapshot.namespace;
  setText(document.getElementById("namespace"), snapshot.namespace);
  setText(document.getElementById("taken-at"), snapshot.taken_at.replace("T", " ").replace("+00:00", " UTC"));
  const problems = document.getElementById("problems");
  problems.hidden = snapshot.problems.length === 0;
  setText(problems, snapshot.problems.map((p) => `cannot read ${p}`).join(" · "));
  renderGraph(snapshot);
  renderDlqs(snapshot);
  renderBreakers(snapshot);
  renderAccounts(snapshot);
  renderJobs(snapshot);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

function setLive(up) {
  const live = document.getElementById("live");
  live.textContent = up ? "live" : "reconnecting";
  live.classList.toggle("up", up);
  live.classList.toggle("down", !up);
}

async function start() {
  // The graph first: it is what the snapshots annotate. Retried while the console starts up.
  for (;;) {
    try {
      const response = await fetch("/api/catalogue");
      if (response.ok) {
        drawGraph(await response.json());
        break;
      }
    } catch (error) {
      setLive(false);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (event) => {
    setLive(true);
    render(JSON.parse(event.data));
  });
  events.addEventListener("error", () => setLive(false));
}

start();
