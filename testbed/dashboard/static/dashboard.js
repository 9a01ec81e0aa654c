// The live view's page: loads everything so far from /series (column form), then appends each
// row that /rows streams (server-sent events). It draws; what a row holds is decided in Python
// (testbed/dashboard/series.py). No network beyond this page's own server.
"use strict";

const MAX_ROWS = 1200;  // as series.HISTORY_ROWS
const TIER_COLORS = { low: "#d62728", mid: "#1f77b4", high: "#2ca02c" };
const MARK_COLORS = { fault: "#c00", server: "#000", model: "#7a2bb5", join: "#aaa", leave: "#aaa" };
const state = { t: [], charts: {}, layout: [], plots: {}, markers: [], tierOf: {}, last: null };

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

function tierColor(tier, shade) {
  const base = TIER_COLORS[tier];
  if (base && shade === undefined) return base;
  const h = { low: 0, mid: 210, high: 125 }[tier] ?? hue(tier);
  const light = shade === undefined ? 45 : 30 + (shade * 17) % 40;
  return `hsl(${h}, 70%, ${light}%)`;
}

function color(chart, label, i) {
  if (chart.by === "tier") return tierColor(label);
  if (chart.by === "device") return tierColor(state.tierOf[label] || "?", i);
  return ["#333", "#e08000", "#7a2bb5", "#1f77b4", "#2ca02c"][i % 5];
}

function axisValues(chart, labels) {
  if (chart.unit === "%") return (u, vals) => vals.map(v => v == null ? "" : `${Math.round(v * 100)}%`);
  if (chart.name === "server.model") return (u, vals) => vals.map(v => labels[v - 1] || "");
  return undefined;
}

function drawMarkers(u) {
  const ctx = u.ctx, [lo, hi] = [u.scales.x.min, u.scales.x.max];
  ctx.save();
  ctx.lineWidth = 1.5 * devicePixelRatio;
  for (const m of state.markers) {
    if (m.t < lo || m.t > hi) continue;
    const x = Math.round(u.valToPos(m.t, "x", true));
    ctx.strokeStyle = MARK_COLORS[m.kind] || "#c00";
    ctx.setLineDash(m.kind === "fault" || m.kind === "server" ? [] : [3, 3]);
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
  }
  ctx.restore();
}

function makePlot(chart) {
  const data = state.charts[chart.name];
  const old = state.plots[chart.name];
  if (old) old.destroy();
  const many = data.labels.length > 12;
  const opts = {
    title: chart.title + (chart.unit && chart.unit !== "%" ? ` (${chart.unit})` : ""),
    width: 440, height: 210,
    legend: { show: !many },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true },
              y: chart.unit === "%" || chart.name.endsWith("threshold")
                ? { range: [0, 1] } : chart.name === "server.model"
                ? { range: [0, Math.max(1, data.labels.length) + 1] } : { auto: true } },
    axes: [{}, { values: axisValues(chart, data.labels), size: chart.name === "server.model" ? 110 : 50,
                 ...(chart.name === "server.model" ? { splits: () => data.labels.map((_, i) => i + 1) } : {}) }],
    series: [{}, ...data.labels.map((label, i) => ({
      label, stroke: color(chart, label, i), width: chart.name === "server.model" ? 6 : 1.5,
      spanGaps: false, points: { show: false } }))],
    hooks: { draw: [drawMarkers] },
  };
  const el = document.getElementById(`c-${chart.name}`);
  el.textContent = "";
  state.plots[chart.name] = new uPlot(opts, [state.t, ...data.data], el);
}

function layoutCharts(layout) {
  state.layout = layout;
  for (const chart of layout) {
    if (!document.getElementById(`c-${chart.name}`)) {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `c-${chart.name}`;
      document.getElementById(chart.by).appendChild(div);
    }
  }
}

function load(series) {
  state.t = series.t;
  state.markers = series.markers;
  state.tierOf = series.tier_of;
  state.charts = {};
  for (const chart of series.layout) {
    const c = series.charts[chart.name] || { labels: [], data: [] };
    state.charts[chart.name] = { labels: c.labels, data: c.data,
                                 index: Object.fromEntries(c.labels.map((l, i) => [l, i])) };
  }
  layoutCharts(series.layout);
  for (const chart of series.layout) makePlot(chart);
  document.getElementById("title").textContent = `testbed live view: ${series.title}`;
  if (series.last) showNow(series.last);
  showMarkers();
}

// One new row: a value per label of every chart; a label seen for the first time gets a new
// series (nulls before), a label missing from the row gets a null (a gap in its line).
function append(row) {
  if (state.t.length && row.t <= state.t[state.t.length - 1]) return;
  state.t.push(row.t);
  const n = state.t.length;
  const grown = new Set();
  for (const chart of state.layout) {
    const c = state.charts[chart.name];
    const values = (row.charts || {})[chart.name] || {};
    for (const label of Object.keys(values)) {
      if (!(label in c.index)) {
        c.index[label] = c.labels.length;
        c.labels.push(label);
        c.data.push(new Array(n - 1).fill(null));
        grown.add(chart.name);
      }
    }
    c.labels.forEach((label, i) => c.data[i].push(label in values ? values[label] : null));
  }
  Object.assign(state.tierOf, row.tier_of || {});
  state.markers.push(...(row.markers || []));
  if (n > MAX_ROWS) {
    const drop = n - MAX_ROWS;
    state.t.splice(0, drop);
    for (const c of Object.values(state.charts)) for (const col of c.data) col.splice(0, drop);
    state.markers = state.markers.filter(m => m.t >= state.t[0]);
  }
  for (const chart of state.layout) {
    if (grown.has(chart.name)) makePlot(chart);
    else state.plots[chart.name].setData([state.t, ...state.charts[chart.name].data]);
  }
  state.last = row;
  showNow(row);
  if ((row.markers || []).length) showMarkers();
}

function fmt(v, digits = 1) { return v == null ? "–" : Number(v).toFixed(digits); }
function pct(v) { return v == null ? "–" : `${(100 * v).toFixed(1)}%`; }

function showNow(row) {
  const now = document.getElementById("now");
  if (!row.server_up) {
    now.innerHTML = `<span class="down">server not answering</span>`;
    return;
  }
  const ch = row.charts;
  const rate = ch["server.rate"] || {};
  now.innerHTML = [
    ["devices", Object.keys(row.tier_of || {}).length],
    ["policy", row.policy || "–"],
    ["heavy model", row.heavy_model || "–"],
    ["queue", fmt((ch["server.queue"] || {}).queue, 0)],
    ["mean batch", fmt((ch["server.batch"] || {}).batch)],
    ["throughput", `${fmt(rate.throughput)} /s`],
    ["arrivals", `${fmt(rate.arrivals)} /s`],
    ["at", new Date(row.t * 1000).toLocaleTimeString()],
  ].map(([k, v]) => `<span>${k} <b>${String(v).replace(/</g, "&lt;")}</b></span>`).join("");
  const tiers = Object.keys(ch["tier.threshold"] || {});
  document.getElementById("tiers").innerHTML = tiers.map(tier =>
    `<span style="color:${tierColor(tier)}">${tier.replace(/</g, "&lt;")}: thr ` +
    `${fmt(ch["tier.threshold"][tier], 3)}, fwd ${pct((ch["tier.forward_rate"] || {})[tier])}, ` +
    `SLO ${pct((ch["tier.slo"] || {})[tier])}, p95 ${fmt((ch["tier.p95_ms"] || {})[tier])} ms</span>`
  ).join("");
}

function showMarkers() {
  const box = document.getElementById("markers");
  box.textContent = "";
  for (const m of state.markers.slice(-200).reverse()) {
    const line = document.createElement("div");
    line.className = `m-${m.kind}`;
    line.textContent = `${new Date(m.t * 1000).toLocaleTimeString()}  ${m.text}`;
    box.appendChild(line);
  }
}

async function start() {
  const series = await (await fetch("/series")).json();
  load(series);
  const source = new EventSource("/rows");
  let broken = false;
  source.onmessage = ev => append(JSON.parse(ev.data));
  source.onerror = () => {
    broken = true;
    document.getElementById("now").innerHTML = `<span class="down">live view not answering (the run may have ended)</span>`;
  };
  source.onopen = async () => {
    if (broken) { broken = false; load(await (await fetch("/series")).json()); }
  };
}

// For tests and for the curious: what the charts hold now.
window.dashboard = {
  rows: () => state.t.length,
  points: name => (state.plots[name] ? state.plots[name].data[0].length : 0),
  labels: name => (state.plots[name] ? state.plots[name].series.slice(1).map(s => s.label) : []),
  values: name => (state.plots[name]
    ? state.plots[name].data.slice(1).reduce((k, col) => k + col.filter(v => v != null).length, 0) : 0),
  markers: () => state.markers.length,
};

start();
