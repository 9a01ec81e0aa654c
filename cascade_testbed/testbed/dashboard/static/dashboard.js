// The live view's page: loads everything so far from /series (column form), then appends each
// row that /rows streams (server-sent events). It draws; what a row holds is decided in Python
// (cascade_testbed/testbed/dashboard/series.py), and so are the tiers' colours and dashes (cascade_testbed/testbed/palette.py,
// which the report's figures use too). No network beyond this page's own server.
"use strict";

const MAX_ROWS = 1200;  // as series.HISTORY_ROWS
const CHART_HEIGHT = 220;
const MARK_COLORS = { fault: "#c00", server: "#000", model: "#7a2bb5", join: "#aaa", leave: "#aaa" };
const state = { t: [], charts: {}, layout: [], plots: {}, markers: [], tierOf: {}, last: null,
                tierStyles: {}, tierNow: {}, lastUp: null, ended: null };

function tierStyle(tier) {
  return state.tierStyles[tier] || { color: "#777", dash: [], width: 1.5 };
}

// A device's line: its tier's hue, a lightness of its own (hex "#rrggbb" to HSL).
function shade(hex, i) {
  const [r, g, b] = [1, 3, 5].map(k => parseInt(hex.slice(k, k + 2), 16) / 255);
  const max = Math.max(r, g, b), min = Math.min(r, g, b), d = max - min;
  let h = 0;
  if (d) h = max === r ? ((g - b) / d) % 6 : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
  const s = d ? d / (1 - Math.abs(max + min - 1)) : 0;
  return `hsl(${Math.round(h * 60 + 360) % 360}, ${Math.round(s * 100)}%, ${30 + (i * 17) % 40}%)`;
}

function seriesStyle(chart, label, i) {
  if (chart.by === "tier") {
    const st = tierStyle(label);
    return { stroke: st.color, width: st.width, dash: st.dash };
  }
  if (chart.by === "device") return { stroke: shade(tierStyle(state.tierOf[label]).color, i), width: 1.5 };
  return { stroke: ["#333", "#b8860b", "#7a2bb5", "#008b8b", "#556b2f"][i % 5],
           width: chart.name === "server.model" ? 6 : 1.5 };
}

function chartWidth(el) {
  return Math.max(200, el.clientWidth - 10);
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
  const el = document.getElementById(`c-${chart.name}`);
  const many = data.labels.length > 12;
  const opts = {
    title: chart.title + (chart.unit && chart.unit !== "%" ? ` (${chart.unit})` : ""),
    width: chartWidth(el), height: CHART_HEIGHT,
    legend: { show: !many },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true },
              y: chart.unit === "%" || chart.name.endsWith("threshold")
                ? { range: [0, 1] } : chart.name === "server.model"
                ? { range: [0, Math.max(1, data.labels.length) + 1] } : { auto: true } },
    axes: [{}, { values: axisValues(chart, data.labels), size: chart.name === "server.model" ? 110 : 50,
                 ...(chart.name === "server.model" ? { splits: () => data.labels.map((_, i) => i + 1) } : {}) }],
    series: [{}, ...data.labels.map((label, i) => ({
      label, ...seriesStyle(chart, label, i), spanGaps: false, points: { show: false } }))],
    hooks: { draw: [drawMarkers] },
  };
  el.textContent = "";
  state.plots[chart.name] = new uPlot(opts, [state.t, ...data.data], el);
}

// The charts take the window's width: the grid gives each a share of it (index.html), and
// each plot follows its cell's width as the window changes.
const resized = new ResizeObserver(entries => {
  for (const entry of entries) {
    const plot = state.plots[entry.target.id.slice(2)];
    const width = chartWidth(entry.target);
    if (plot && Math.abs(plot.width - width) > 1) plot.setSize({ width, height: CHART_HEIGHT });
  }
});

function layoutCharts(layout) {
  state.layout = layout;
  for (const chart of layout) {
    if (!document.getElementById(`c-${chart.name}`)) {
      const div = document.createElement("div");
      div.className = "chart";
      div.id = `c-${chart.name}`;
      document.getElementById(chart.by).appendChild(div);
      resized.observe(div);
    }
  }
}

function load(series) {
  state.t = series.t;
  state.markers = series.markers;
  state.tierOf = series.tier_of;
  state.tierStyles = series.tier_styles || {};
  state.tierNow = series.tier_now || {};
  state.lastUp = series.last_up;
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
  if (series.ended) showEnd(series.ended);
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
  Object.assign(state.tierStyles, row.tier_styles || {});
  keepTierNow(row);
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

// As series.tier_now: every tier seen keeps the values of the last row that had it (at the end
// of a run the devices leave one by one, and the last rows lack the tiers that left first).
const TIER_METRICS = ["threshold", "forward_rate", "slo", "p50_ms", "p95_ms"];
function keepTierNow(row) {
  const ch = row.charts || {};
  for (const tier of Object.keys(ch["tier.threshold"] || {})) {
    state.tierNow[tier] = { t: row.t, ...Object.fromEntries(
      TIER_METRICS.map(m => [m, (ch[`tier.${m}`] || {})[tier] ?? null])) };
  }
}

function esc(text) { return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;"); }

function banner(text, kind) {
  const el = document.getElementById("state");
  el.textContent = text;
  el.className = kind;  // "down" (red: something is wrong), "ended", "" (live)
}

function showNow(row) {
  if (state.ended) return;  // the end of the run stays on screen
  if (row.server_up) state.lastUp = row;
  banner(row.server_up ? "live" : "server not answering", row.server_up ? "" : "down");
  showValues();
}

function showValues() {
  const row = state.lastUp;
  const now = document.getElementById("now");
  if (!row) { now.textContent = ""; return; }
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
  ].map(([k, v]) => `<span>${k} <b>${esc(v)}</b></span>`).join("");
  // Every tier seen, in the server's order (tier_now comes sorted; later ones append).
  document.getElementById("tiers").innerHTML = Object.entries(state.tierNow).map(([tier, v]) =>
    `<span data-tier="${esc(tier)}" style="color:${tierStyle(tier).color}">${esc(tier)}: thr ` +
    `${fmt(v.threshold, 3)}, fwd ${pct(v.forward_rate)}, SLO ${pct(v.slo)}, p95 ${fmt(v.p95_ms)} ms` +
    (v.t < row.t ? ` <i>(as of ${new Date(v.t * 1000).toLocaleTimeString()}: its devices left)</i>` : "") +
    `</span>`).join("");
}

function showEnd(end) {
  state.ended = end;
  banner(`${end.text} at ${new Date(end.t * 1000).toLocaleTimeString()}: the last values stay ` +
         "below, the run folder has everything", "ended");
  showValues();
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
  source.addEventListener("end", ev => {  // the run ended: no reconnecting, keep what is shown
    source.close();
    showEnd(JSON.parse(ev.data));
  });
  source.onerror = () => {
    if (state.ended) return;
    broken = true;  // the view's process went away without saying the run ended
    banner("live view not answering (the run may have ended); the last values stay below", "down");
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
  banner: () => ({ text: document.getElementById("state").textContent,
                   kind: document.getElementById("state").className, ended: !!state.ended }),
  tiersShown: () => [...document.querySelectorAll("#tiers [data-tier]")].map(e => e.dataset.tier),
  tierColors: () => Object.fromEntries(Object.entries(state.tierStyles).map(([t, s]) => [t, s.color])),
  widths: () => ({ window: window.innerWidth, right: Math.max(0, ...[...document.querySelectorAll(".chart")]
    .map(e => e.getBoundingClientRect().right)), plot: Math.max(0, ...Object.values(state.plots).map(p => p.width)) }),
};

start();
