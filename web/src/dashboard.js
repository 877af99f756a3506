// The /dashboard page: asks for the API key once per tab (sessionStorage), then draws what
// /dashboard/api/summary returns and searches /dashboard/api/notifications/{id}. Bundled with uPlot by
// `npm run build` (make assets) into gateway/static/dist; nothing is loaded from elsewhere.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./dashboard.css";

const KEY = "herald.apiKey";
const REFRESH_MS = 15000;
const FUNNEL_STEPS = ["routed", "sent", "delivered", "opened", "clicked"];
const COLORS = { accepted: "#6b7280", sent: "#2563eb", delivered: "#16a34a", failed: "#dc2626",
  p50: "#16a34a", p95: "#d97706", p99: "#dc2626" };

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat("en");
const charts = {};
let timer = null;

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { "X-API-Key": sessionStorage.getItem(KEY) || "" } });
  const body = await response.json();
  if (response.status === 401) throw new Unauthorized(body.detail);
  if (!response.ok) throw new Error(`${body.error}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`);
  return body;
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

function drawFunnel(funnel) {
  const box = $("funnel");
  box.replaceChildren();
  const channels = Object.keys(funnel);
  if (!channels.length) {
    box.textContent = "No deliveries in this period.";
    return;
  }
  for (const channel of channels) {
    const steps = funnel[channel];
    const top = Math.max(1, ...FUNNEL_STEPS.map((s) => steps[s]));
    const group = document.createElement("div");
    group.className = "funnel-channel";
    group.dataset.channel = channel;
    const title = document.createElement("h3");
    title.textContent = channel;
    group.append(title);
    for (const step of FUNNEL_STEPS) {
      const row = document.createElement("div");
      row.className = "funnel-step";
      row.dataset.step = step;
      const label = document.createElement("span");
      label.className = "step";
      label.textContent = step;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * steps[step]) / top}%`;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = number.format(steps[step]);
      row.append(label, bar, count);
      group.append(row);
    }
    box.append(group);
  }
}

function drawFailures(failures) {
  const body = $("failures").tBodies[0];
  body.replaceChildren();
  for (const f of failures) {
    const row = body.insertRow();
    [f.channel || "(none)", f.status, f.reason || "(no code)", number.format(f.count)].forEach((t) => cell(row, t));
  }
  if (!failures.length) cell(body.insertRow(), "No failures in this period.").colSpan = 4;
}

// One uPlot line chart per element, re-created when the series change and updated otherwise. With
// `dots`, every value is a dot too: a minute between two empty ones (a short run) is not an invisible line.
function drawLines(id, x, named, dots = false) {
  const names = Object.keys(named);
  const data = [x, ...names.map((n) => named[n])];
  const element = $(id);
  const existing = charts[id];
  if (existing && existing.series.length === names.length + 1) {
    existing.setData(data);
    return;
  }
  if (existing) existing.destroy();
  charts[id] = new uPlot({
    width: Math.max(320, element.clientWidth),
    height: 240,
    series: [{}, ...names.map((n) => ({ label: n, stroke: COLORS[n], width: 2, spanGaps: false,
      points: dots ? { show: true, size: 5, fill: COLORS[n] } : {} }))],
    axes: [{}, { size: 60 }],
  }, data, element);
}

function drawTotals(data) {
  const sum = (values) => values.reduce((a, b) => a + b, 0);
  $("total-accepted").textContent = number.format(data.accepted);
  for (const status of ["sent", "delivered", "failed"]) {
    $(`total-${status}`).textContent = number.format(sum(data.throughput[status]));
  }
}

async function refresh() {
  try {
    const data = await api(`/dashboard/api/summary?minutes=${$("minutes").value}`);
    $("error").textContent = "";
    $("tenant").textContent = `tenant ${data.tenant}`;
    drawTotals(data);
    drawFunnel(data.funnel);
    drawFailures(data.failures);
    drawLines("throughput", data.minutes, data.throughput);
    drawLines("latency", data.minutes, data.latency, true);
    document.body.dataset.since = String(data.since);
    document.body.dataset.loaded = String(data.until);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    $("error").textContent = `Could not load the figures: ${error.message}`;
  }
}

async function search(event) {
  event.preventDefault();
  const id = $("notification-id").value.trim();
  const table = $("timeline");
  const body = table.tBodies[0];
  body.replaceChildren();
  table.hidden = true;
  $("search-error").textContent = "";
  try {
    const found = await api(`/dashboard/api/notifications/${encodeURIComponent(id)}`);
    for (const e of found.timeline) {
      const row = body.insertRow();
      row.dataset.status = e.status;
      [new Date(e.at_ms).toISOString(), e.stage, e.status, e.channel, e.provider, e.attempt, e.error_code,
        e.detail, e.latency_ms].forEach((t) => cell(row, t));
    }
    table.hidden = false;
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    $("search-error").textContent = error.message;
  }
}

function showLogin(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key").focus();
}

function showBoard() {
  $("login").hidden = true;
  $("board").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value);
  $("key").value = "";
  showBoard();
});
$("forget").addEventListener("click", () => showLogin(""));
$("refresh").addEventListener("click", refresh);
$("minutes").addEventListener("change", refresh);
$("search").addEventListener("submit", search);

if (sessionStorage.getItem(KEY)) showBoard();
else showLogin("");
