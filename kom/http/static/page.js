// kom's status page: polls /api/status and /api/trend once a second, draws with uPlot.
// Device texts reach the page: everything is set with textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const TAG_LIMIT = 500;
let selected = decodeURIComponent(location.hash.slice(1));
let chart = null;
let chartTag = null;
let filter = "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function age(seconds) {
  if (seconds == null) return "—";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function since(epoch, now) {
  const when = new Date(epoch * 1000);
  return when.toLocaleTimeString() + " (" + age(now - epoch) + ")";
}

// A tag's name may break after its dots and underscores (narrow screens), not inside words.
function breakable(name) {
  const out = document.createDocumentFragment();
  for (const part of name.split(/(?<=[._])/)) out.append(part, el("wbr"));
  return out;
}

function show(value) {
  if (value == null) return "—";
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.0+)?Z$/.test(value)) {
    return value.replace("T", " ").replace(/\.0+Z$/, "Z"); // a time: breakable at the space
  }
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString();
    return value.toLocaleString(undefined, { maximumFractionDigits: 3 });
  }
  if (typeof value === "boolean") return value ? "true" : "false";
  return String(value);
}

function stateClass(state) {
  if (state === "connected" || state === "on") return "state good";
  if (state === "idle" || state === "off" || state === "simulation") return "state other";
  return "state bad";
}

function card(title, state, rows) {
  const dl = el("dl");
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  return el("div", { class: "card" }, el("h3", {}, el("span", {}, title), el("span", { class: stateClass(state) }, state)), dl);
}

function renderHealth(doc) {
  const badge = document.getElementById("health");
  badge.textContent = doc.healthy ? "healthy" : "failing";
  badge.className = "badge " + (doc.healthy ? "ok" : "bad");
  const reasons = document.getElementById("reasons");
  reasons.hidden = doc.healthy;
  reasons.textContent = doc.health.reasons.join(" · ");
  document.getElementById("clock").textContent =
    "updated " + new Date(doc.now * 1000).toLocaleTimeString() + " · " + doc.updates.toLocaleString() + " updates";
}

function renderLines(doc) {
  const box = document.getElementById("lines");
  box.replaceChildren(...doc.lines.map((l) => card("line " + l.name, l.state, [
    ["broker", l.broker || "—"],
    ["since", since(l.since, doc.now)],
    ["reconnects", l.reconnects],
    ["messages", l.received.toLocaleString() + " (" + l.rate + "/s)"],
    ["last message", age(l.last_message_age)],
    ["unrouted", l.unrouted],
    ["acks pending", l.acks_pending],
    ...(l.last_error ? [["last error", l.last_error]] : []),
  ])));
}

function renderSinks(doc) {
  const box = document.getElementById("sinks");
  const sinks = doc.health.sinks;
  if (!sinks.length) { box.replaceChildren(el("p", { class: "muted" }, "no sinks")); return; }
  box.replaceChildren(...sinks.map((s) => card(s.name, s.ok ? "committing" : "failing", [
    ["rows", s.rows.toLocaleString()],
    ["last commit", s.last_commit == null ? "—" : age(doc.now - s.last_commit) + " ago"],
    ...(s.error ? [["error", s.error], ["failing since", since(s.failing_since, doc.now)]] : []),
  ])));
  for (const node of box.querySelectorAll(".state")) {
    node.className = node.textContent === "committing" ? "state good" : "state bad";
  }
}

function renderStations(doc) {
  const body = document.querySelector("#stations tbody");
  body.replaceChildren(...doc.stations.map((s) => el("tr", { "data-station": s.name },
    el("td", {}, s.name),
    el("td", { class: stateClass(s.state) }, s.state),
    el("td", { class: "num" }, age(s.last_message_age)),
    el("td", { class: "num" }, s.received.toLocaleString()),
    el("td", { class: "num wide" }, s.decode_errors),
    el("td", { class: "num wide" }, s.duplicates),
    el("td", { class: "wide" }, s.line),
  )));
}

const tagRows = new Map();

function renderTags(doc) {
  const body = document.querySelector("#tags tbody");
  const keep = new Set();
  const rows = [];
  for (const t of doc.tags) {
    keep.add(t.tag);
    let row = tagRows.get(t.tag);
    if (!row) {
      row = el("tr", { "data-tag": t.tag },
        el("td", {}, breakable(t.tag)), el("td", { class: "num value" }, el("span"), el("span", { class: "unit" })),
        el("td"), el("td", { class: "num" }));
      row.addEventListener("click", () => select(t.tag));
      tagRows.set(t.tag, row);
    }
    const [, valueCell, qualityCell, ageCell] = row.children;
    const [valueText, unitText] = valueCell.children;
    const text = show(t.value);
    if (valueText.textContent !== text) {
      valueText.textContent = text;
      valueCell.classList.remove("changed");
      void valueCell.offsetWidth; // restart the flash
      valueCell.classList.add("changed");
    }
    unitText.textContent = t.value == null ? "" : t.unit;
    qualityCell.textContent = t.quality === "valid" ? "valid" : "invalid: " + t.reason;
    qualityCell.className = t.quality === "valid" ? "" : "invalid";
    qualityCell.title = t.detail || "";
    ageCell.textContent = age(t.age);
    row.classList.toggle("selected", t.tag === selected);
    rows.push(row);
  }
  for (const name of [...tagRows.keys()]) if (!keep.has(name)) tagRows.delete(name);
  body.replaceChildren(...rows);
  const count = document.getElementById("tag-count");
  count.textContent = doc.tags.length < doc.tags_matching
    ? "(first " + doc.tags.length + " of " + doc.tags_matching + ")"
    : "(" + doc.tags_matching + (doc.tags_matching < doc.tags_total ? " of " + doc.tags_total : "") + ")";
  if (!selected) {
    const first = doc.tags.find((t) => typeof t.value === "number" && t.quality === "valid");
    if (first) select(first.tag);
  }
}

function select(tag) {
  selected = tag;
  history.replaceState(null, "", "#" + encodeURIComponent(tag));
  for (const [name, row] of tagRows) row.classList.toggle("selected", name === tag);
  pollTrend();
}

function drawTrend(doc) {
  const box = document.getElementById("trend");
  document.getElementById("trend-tag").textContent = doc.tag ? doc.tag + " (last " + Math.round(trendSeconds / 60) + " min)" : "";
  if (!doc.t.length) {
    if (chart) { chart.destroy(); chart = null; }
    box.replaceChildren(el("p", { class: "muted" }, doc.tag ? "No numeric values of " + doc.tag + " yet." : "Pick a tag below to see its recent values."));
    return;
  }
  const width = Math.max(240, box.clientWidth - 8);
  const data = [doc.t, doc.v];
  if (chart && chartTag === doc.tag) {
    if (chart.width !== width) chart.setSize({ width, height: chart.height });
    chart.setData(data);
    return;
  }
  if (chart) chart.destroy();
  box.replaceChildren();
  chartTag = doc.tag;
  chart = new uPlot({
    width, height: width < 500 ? 180 : 240,
    scales: { x: { time: true } },
    legend: { show: false },
    series: [{}, { label: doc.tag, stroke: "#2563eb", width: 2, points: { show: doc.t.length < 60 } }],
    axes: [{}, { size: 60 }],
  }, data, box);
}

let trendSeconds = 600;
let trendBusy = false;

async function pollTrend() {
  if (!selected || trendBusy) return;
  trendBusy = true;
  try {
    const response = await fetch("/api/trend?tag=" + encodeURIComponent(selected), { cache: "no-store" });
    drawTrend(await response.json());
  } catch (e) { /* the next poll tries again */ } finally { trendBusy = false; }
}

async function poll() {
  try {
    const query = "?limit=" + TAG_LIMIT + (filter ? "&match=" + encodeURIComponent(filter) : "");
    const response = await fetch("/api/status" + query, { cache: "no-store" });
    const doc = await response.json();
    trendSeconds = doc.trend_seconds;
    renderHealth(doc);
    renderLines(doc);
    renderTags(doc);
    renderStations(doc);
    renderSinks(doc);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    const badge = document.getElementById("health");
    badge.textContent = "no answer from kom";
    badge.className = "badge bad";
  }
  pollTrend();
}

document.getElementById("filter").addEventListener("input", (event) => {
  filter = event.target.value.trim();
  poll();
});
window.addEventListener("resize", () => { if (chart) chartTag = null; pollTrend(); });
poll();
setInterval(poll, POLL_MS);
