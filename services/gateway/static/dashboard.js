// moonbus dashboard: REST for the first paint, then the live stream (/api/stream, SSE).
// No libraries. Money stays a decimal string for display; it becomes a Number only to draw.
"use strict";

const MAX_POINTS = 900, MAX_ORDERS = 40, MAX_SIGNALS = 40;
const view = {
  symbols: [], ticks: {}, selected: null, series: {}, orders: new Map(), signals: [],
  account: null, verdicts: {}, feeds: {}, killSwitch: null,
  venues: {},  // venue -> { status: LiveVenueStatus, reconciliation: Reconciliation }
  positions: [],
  // The views (/api/swarm, sentiment, arbs, protections, algos, then the stream): each entry
  // keeps its age when heard (`age0`, seconds) and when (`at`, performance.now() ms).
  swarm: {}, sentiment: {},  // symbol -> entry of Consensus / Sentiment
  arbs: new Map(),  // "symbol buy sell" -> entry of ArbOpportunity
  protections: new Map(),  // parent_order_id -> entry of ProtectionState
  algos: new Map(),  // parent client_order_id -> entry of AlgoOrder
  arbStaleS: 5, arbKeepS: 60, protectionKeepS: 60,
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "-" : String(c)));
  return node;
}
// Long decimals are cut to 6 places for display only; the exact value is in the tooltip.
const short = (text) => (typeof text === "string" ? text.replace(/(\.\d{6})\d+$/, "$1") : text);
const num = (text, cls) => el("td", { class: "num " + (cls || ""), title: text == null ? "" : String(text) }, short(text));
const sign = (text) => (text && text.startsWith("-") ? "neg" : Number(text) > 0 ? "pos" : "");
const clock = (ns) => (ns ? new Date(ns / 1e6).toLocaleTimeString([], { hour12: false }) : "-");
const say = (text) => { $("message").textContent = text || ""; };

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && `${body.error.code}: ${body.error.message}`) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// A gateway with a read token answers 401 until this browser has its session: the token
// goes once to POST /api/session, which sets an HttpOnly cookie (the page never keeps it).
function askForReadToken() {
  $("loginform").hidden = false;
  $("readtoken").focus();
  $("loginform").onsubmit = async (e) => {
    e.preventDefault();
    const token = $("readtoken").value.trim();
    try {
      await api("/api/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
      location.reload();
    } catch (err) { say(`read token: ${err.message}`); }
  };
}

// ---------------------------------------------------------------- prices and chart

function onTick(tick) {
  view.ticks[tick.symbol] = tick;
  const series = (view.series[tick.symbol] ||= []);
  if (series.length && tick.ts <= series[series.length - 1][0]) return schedule();  // seen already
  series.push([tick.ts, Number(tick.price)]);
  if (series.length > MAX_POINTS) series.splice(0, series.length - MAX_POINTS);
  schedule();
}

function renderPrices() {
  const body = $("prices").tBodies[0];
  body.replaceChildren(...view.symbols.map((s) => {
    const t = view.ticks[s] || {};
    const row = el("tr", { "data-symbol": s }, el("td", {}, s), num(t.price), num(t.bid), num(t.ask));
    if (s === view.selected) row.className = "selected";
    row.onclick = () => select(s);
    return row;
  }));
}

async function select(symbol) {
  view.selected = symbol;
  $("chart-symbol").textContent = symbol;
  if (!view.series[symbol] || view.series[symbol].length < 2) {
    try {
      const history = await api(`/api/history/${symbol}?interval=1s&limit=300`);
      const bars = history.bars.map((b) => [b.end_ts, Number(b.close)]);
      view.series[symbol] = bars.concat(view.series[symbol] || []).sort((a, b) => a[0] - b[0]);
    } catch (e) { say(`history of ${symbol}: ${e.message}`); }
  }
  schedule();
}

function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const points = view.series[view.selected] || [];
  ctx.font = "11px system-ui"; ctx.fillStyle = "#7d8b99";
  if (points.length < 2) { ctx.fillText("waiting for prices...", 12, 20); return; }
  const left = 8, right = 70, top = 10, bottom = 22;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  let lo = Infinity, hi = -Infinity;
  for (const [, p] of points) { lo = Math.min(lo, p); hi = Math.max(hi, p); }
  if (hi === lo) { hi += 1e-9; lo -= 1e-9; }
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (w - left - right);
  const y = (p) => top + (1 - (p - lo) / (hi - lo)) * (h - top - bottom);
  ctx.strokeStyle = "#27313c"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const p = lo + ((hi - lo) * i) / 4, yy = y(p);
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(w - right, yy); ctx.stroke();
    ctx.fillText(p.toPrecision(7), w - right + 4, yy + 4);
  }
  ctx.fillText(clock(t0), left, h - 6);
  ctx.fillText(clock(t1), w - right - 50, h - 6);
  ctx.strokeStyle = "#58a6ff"; ctx.lineWidth = 1.5; ctx.beginPath();
  points.forEach(([t, p], i) => (i ? ctx.lineTo(x(t), y(p)) : ctx.moveTo(x(t), y(p))));
  ctx.stroke();
  const last = view.ticks[view.selected];
  $("chart-last").textContent = last ? `${last.price} at ${clock(last.ts)}` : "";
}

// ---------------------------------------------------------------- account, positions, verdicts

function renderAccount() {
  const a = view.account;
  const state = a ? a.state : "?";
  $("trading").textContent = `state: ${state}`;
  $("trading").className = `pill ${state}`;
  if (!a) return;
  const rows = [["equity", a.equity], ["cash", a.cash], ["day PnL", a.day_pnl, sign(a.day_pnl)],
    ["realized PnL", a.realized_pnl, sign(a.realized_pnl)], ["unrealized PnL", a.unrealized_pnl, sign(a.unrealized_pnl)],
    ["fees", a.fees], ["drawdown", `${a.drawdown_pct.toFixed(2)}%`], ["gross exposure", a.gross_exposure],
    ["open positions", a.open_positions], ["reasons", (a.reasons || []).join("; ") || "-"]];
  $("account").replaceChildren(...rows.flatMap(([k, v, cls]) => [el("dt", {}, k),
    el("dd", { class: cls || "", title: String(v) }, short(v))]));
  renderKillSwitch();
}

function renderKillSwitch() {
  const engaged = view.killSwitch ? view.killSwitch.engaged : view.account && view.account.kill_switch;
  const ks = $("killswitch"), button = $("killbutton");
  ks.textContent = engaged == null ? "kill switch: ?" : engaged
    ? `kill switch ENGAGED${view.killSwitch ? ` by ${view.killSwitch.actor}: ${view.killSwitch.reason}` : ""}` : "kill switch: off";
  ks.className = "pill" + (engaged ? " engaged" : " on");
  button.textContent = engaged ? "Release kill switch" : "Engage kill switch";
  button.className = engaged ? "release" : "";
  button.dataset.action = engaged ? "release" : "engage";
}

async function refreshPositions() {
  try {
    view.positions = (await api("/api/positions")).positions;
    schedule();
  } catch (e) { say(`positions: ${e.message}`); }
}

// Each position, and under it the protections execution keeps on it (exec.protection.*);
// a protection of a symbol without a position (closed already) gets a row of its own.
function renderPositions() {
  const bySymbol = new Map();
  for (const [id, entry] of view.protections) {
    const p = entry.data;
    if (["CLOSED", "CANCELLED"].includes(p.state) && aged(entry) > view.protectionKeepS) { view.protections.delete(id); continue; }
    if (!bySymbol.has(p.symbol)) bySymbol.set(p.symbol, []);
    bySymbol.get(p.symbol).push(entry);
  }
  const rows = [];
  const protectionRows = (symbol) => (bySymbol.get(symbol) || []).sort((a, b) => a.data.ts - b.data.ts)
    .map((entry) => protectionRow(entry));
  for (const p of view.positions) {
    rows.push(el("tr", { "data-symbol": p.symbol }, el("td", {}, p.symbol), num(p.quantity), num(p.avg_price),
      num(p.mark_price), num(p.unrealized_pnl, sign(p.unrealized_pnl)), num(p.realized_pnl, sign(p.realized_pnl))));
    rows.push(...protectionRows(p.symbol));
    bySymbol.delete(p.symbol);
  }
  for (const symbol of [...bySymbol.keys()].sort()) {
    rows.push(el("tr", { "data-symbol": symbol }, el("td", {}, symbol), el("td", { colspan: "5", class: "dim" }, "no position")));
    rows.push(...protectionRows(symbol));
  }
  $("positions").tBodies[0].replaceChildren(...rows);
}

function protectionRow(entry) {
  const p = entry.data;
  const parts = [`${p.side} ${short(p.quantity)} on ${p.venue}`];
  if (p.stop_loss) parts.push(`stop ${short(p.stop_loss)}`);
  if (p.take_profit) parts.push(`take ${short(p.take_profit)}`);
  if (p.trailing_stop_bps != null) parts.push(`trail ${p.trailing_stop_bps} bps${p.trailing_trigger ? ` at ${short(p.trailing_trigger)}` : ""}`);
  if (p.exit_order_id) parts.push(`exit ${p.exit_order_id}`);
  if (p.reason) parts.push(p.reason);
  return el("tr", { class: "protection", "data-parent": p.parent_order_id, title: `parent order ${p.parent_order_id} (${p.agent})` },
    el("td", {}, "\u21b3 protection"),
    el("td", { colspan: "5" }, el("span", { class: p.state }, p.state), ` ${parts.join(" \u00b7 ")} `,
      el("span", { class: "dim" }, `${aged(entry).toFixed(0)} s ago`)));
}

// ---------------------------------------------------------------- swarm, sentiment, arbitrage, algorithms

// An entry of a view: the message, its age when heard, and when that was.
const heard = (data, ageS) => ({ data, age0: Number(ageS) || 0, at: performance.now() });
const aged = (entry) => entry.age0 + (performance.now() - entry.at) / 1000;
const pct = (x) => `${(Number(x) * 100).toFixed(0)}%`;
const signed = (x) => (Number(x) >= 0 ? "+" : "") + Number(x).toFixed(2);

// One card per symbol: the latest sentiment, and the swarm's latest consensus with each model's vote.
function renderSymbols() {
  const names = [...new Set([...view.symbols, ...Object.keys(view.swarm), ...Object.keys(view.sentiment)])].sort();
  $("symbols").replaceChildren(...names.map((symbol) => {
    const s = view.sentiment[symbol], c = view.swarm[symbol];
    const card = el("div", { class: "card", "data-symbol": symbol }, el("h3", {}, symbol));
    card.append(s ? el("p", { class: "sentiment" }, "sentiment ",
      el("span", { class: sign(String(s.data.score)) }, signed(s.data.score)),
      el("span", { class: "meta" }, ` confidence ${pct(s.data.confidence)}, ${s.data.items} items, ${s.data.model}, ${aged(s).toFixed(1)} s ago`))
      : el("p", { class: "sentiment dim" }, "sentiment: none heard"));
    if (!c) { card.append(el("p", { class: "consensus dim" }, "swarm: no consensus heard")); return card; }
    const k = c.data;
    card.append(el("p", { class: "consensus", title: k.summary || "" }, "swarm ", el("span", { class: k.action }, k.action),
      ` agreement ${pct(k.agreement)} `, el("span", { class: "meta" }, `${k.method}, ${aged(c).toFixed(1)} s ago`)));
    card.append(el("table", { class: "votes" }, el("thead", {}, el("tr", {}, ...["model", "vote", "conf", "ms", "why"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...(k.votes || []).map((v) => el("tr", { title: v.reasoning || "" },
        el("td", {}, v.model), el("td", { class: v.action }, v.action), num(pct(v.confidence)),
        num(Number(v.latency_ms).toFixed(0)), el("td", { class: v.error ? "neg" : "dim" }, v.error || (v.reasoning || "").slice(0, 60)))))));
    return card;
  }));
}

// Arbitrage opportunities, best net spread first; stale ones (older than arb_stale_s) last,
// struck through; older than arb_keep_s they go.
function renderArbs() {
  const rows = [];
  for (const [key, entry] of view.arbs) {
    const age = aged(entry);
    if (age > view.arbKeepS) { view.arbs.delete(key); continue; }
    rows.push([entry.data, age, age > view.arbStaleS]);
  }
  rows.sort((a, b) => (a[2] - b[2]) || (Number(b[0].net_bps) - Number(a[0].net_bps)));
  $("arbs").tBodies[0].replaceChildren(...rows.map(([a, age, stale]) => el("tr", {
    class: stale ? "stale" : "", "data-symbol": a.symbol, title: `buy up to ${a.buy_limit}, sell down to ${a.sell_limit}; fees ${a.buy_fee_bps} + ${a.sell_fee_bps} bps` },
  el("td", {}, a.symbol), el("td", { class: "BUY" }, a.buy_venue), num(a.buy_price), el("td", { class: "SELL" }, a.sell_venue),
  num(a.sell_price), num(a.net_bps, sign(a.net_bps)), num(a.gross_bps), num(a.quantity), num(a.profit),
  el("td", { class: "num age" }, stale ? `${age.toFixed(1)} stale` : age.toFixed(1)))));
  $("arbs-note").textContent = rows.length ? `${rows.filter((r) => !r[2]).length} fresh` : "none";
}

// Running TWAP / ICEBERG parents: progress of the quantity and of the slices; gone once final.
function renderAlgos() {
  $("algos").tBodies[0].replaceChildren(...[...view.algos.values()].map((entry) => {
    const a = entry.data, g = a.algo, child = a.last_child;
    const qty = Number(a.quantity), filled = Number(a.filled_quantity || 0);
    const next = g.next_slice_ts ? Math.max(0, (g.next_slice_ts / 1e6 - Date.now()) / 1000) : null;
    return el("tr", { "data-order": a.client_order_id, title: child ? `last slice ${child.client_order_id}: ${child.status} ${child.filled_quantity || ""}` : "" },
      el("td", {}, a.client_order_id), el("td", {}, g.kind), el("td", {}, a.symbol), el("td", { class: a.side || "" }, a.side),
      el("td", {}, el("progress", { max: String(qty > 0 ? qty : 1), value: String(Math.min(filled, qty > 0 ? qty : 1)) })),
      num(`${short(a.filled_quantity || "0")} / ${short(a.quantity)}`),
      num(`${g.slices_filled} / ${g.slices_sent} / ${g.slices_total == null ? "?" : g.slices_total}`),
      el("td", {}, g.working_child_id || "-"), num(next == null ? "-" : `in ${next.toFixed(1)} s`),
      el("td", { class: a.status }, a.status), num(aged(entry).toFixed(1)));
  }));
}

function onAlgo(a) {
  if (a.running) view.algos.set(a.client_order_id, heard(a, 0));
  else view.algos.delete(a.client_order_id);  // final: off the table
}

async function refreshViews() {
  const [swarm, sentiment, arbs, protections, algos] = await Promise.allSettled(
    ["/api/swarm", "/api/sentiment", "/api/arbs", "/api/protections", "/api/algos"].map((p) => api(p)));
  for (const [symbol, c] of Object.entries(swarm.value ? swarm.value.swarm : {})) view.swarm[symbol] = heard(c, c.age_s);
  for (const [symbol, s] of Object.entries(sentiment.value ? sentiment.value.sentiment : {})) view.sentiment[symbol] = heard(s, s.age_s);
  if (arbs.value) {
    view.arbStaleS = arbs.value.stale_after_s; view.arbKeepS = arbs.value.keep_s;
    for (const a of arbs.value.arbs) view.arbs.set(`${a.symbol} ${a.buy_venue} ${a.sell_venue}`, heard(a, a.age_s));
  }
  if (protections.value) {
    view.protectionKeepS = protections.value.keep_s;
    for (const p of protections.value.protections) view.protections.set(p.parent_order_id, heard(p, p.age_s));
  }
  for (const a of algos.value ? algos.value.algos : []) view.algos.set(a.client_order_id, heard(a, a.age_s));
  const failed = [swarm, sentiment, arbs, protections, algos].filter((r) => r.status === "rejected");
  if (failed.length) say(failed.map((r) => r.reason.message).join("; "));
  schedule();
}

function renderVerdicts() {
  $("verdicts").tBodies[0].replaceChildren(...Object.values(view.verdicts).map((v) => el("tr", {},
    el("td", {}, v.symbol), el("td", { class: v.state }, v.state), el("td", {}, (v.reasons || []).join("; ") || ""))));
}

function renderFeeds() {
  const feeds = Object.values(view.feeds);
  const ok = feeds.length && feeds.every((f) => f.status === "connected");
  $("feeds").textContent = feeds.length ? "feeds: " + feeds.map((f) => `${f.venue} ${f.status}`).join(", ") : "feeds: ?";
  $("feeds").className = "pill " + (feeds.length ? (ok ? "on" : "off") : "");
}

// Live venues: execution's status of each (mode, connection, orders) and risk's
// reconciliation of its account (MATCHED / MISMATCH / UNAVAILABLE, and the gate it set).
const venueEntry = (name) => (view.venues[name] ||= { status: null, reconciliation: null });

function renderVenues() {
  const names = Object.keys(view.venues).sort();
  const pill = $("venuepill");
  pill.hidden = !names.length;
  if (!names.length) { $("venues").tBodies[0].replaceChildren(); return; }
  $("venues").tBodies[0].replaceChildren(...names.map((name) => {
    const s = view.venues[name].status, r = view.venues[name].reconciliation;
    const why = [r && r.detail, s && (s.account_error || s.detail)].filter(Boolean).join(" | ");
    return el("tr", { title: why },
      el("td", {}, name), el("td", { class: s && s.mode === "live" ? "live" : "" }, s ? s.mode : "-"),
      el("td", { class: s ? (s.connected ? "on" : "off") : "" }, s ? (s.connected ? "yes" : "NO") : "-"),
      num(s ? String(s.working_orders) : "-"), num(s ? String(s.unconfirmed_orders) : "-"),
      num(s ? String((s.unknown_orders || []).length) : "-", s && (s.unknown_orders || []).length ? "neg" : ""),
      el("td", { class: r ? r.state : "" }, r ? r.state : "-"),
      el("td", { class: r && r.action !== "NONE" ? r.action : "" }, r ? r.action : "-"));
  }));
  const bad = names.filter((n) => {
    const { status: s, reconciliation: r } = view.venues[n];
    return (s && !s.connected) || (r && r.action !== "NONE");
  });
  pill.textContent = bad.length ? `venues: ${bad.map((n) => `${n} ${(view.venues[n].reconciliation || {}).state || "DOWN"}`).join(", ")}`
    : `venues: ${names.length} matched`;
  pill.className = "pill " + (bad.length ? "off" : "on");
}

async function refreshVenues() {
  try {
    const reply = await api("/api/venues");
    for (const [name, v] of Object.entries(reply.venues)) {
      const entry = venueEntry(name);
      entry.status = v.status || entry.status;
      entry.reconciliation = v.reconciliation || entry.reconciliation;
    }
    schedule();
  } catch (e) { say(`venues: ${e.message}`); }
}

// make run's supervisor (KV supervisor.<service>): restarts and crash loops. Empty under
// compose, whose restart policies supervise.
async function refreshSupervision() {
  try {
    const reply = await api("/api/supervision");
    const records = Object.values(reply.services);
    const label = (r) => (r.stale ? `${r.state} (stale)` : r.state === "crash_loop" ? "CRASH LOOP" : r.state);
    $("supervision").tBodies[0].replaceChildren(...records.map((r) => el("tr", { title: r.detail || "" },
      el("td", {}, r.service), el("td", { class: r.stale ? "stale" : r.state }, label(r)),
      num(String(r.restarts)), el("td", {}, r.last_exit || "-"))));
    const live = records.filter((r) => !r.stale);
    const looping = live.filter((r) => r.state === "crash_loop").map((r) => r.service);
    const restarting = live.filter((r) => r.state === "restarting").map((r) => r.service);
    const pill = $("supervisor");
    pill.textContent = !live.length ? "supervisor: -" : looping.length ? `CRASH LOOP: ${looping.join(", ")}`
      : restarting.length ? `restarting: ${restarting.join(", ")}` : "supervisor: all running";
    pill.className = "pill " + (!live.length ? "" : looping.length || restarting.length ? "off" : "on");
  } catch (e) { say(`supervisor: ${e.message}`); }
}

// ---------------------------------------------------------------- orders and decisions

function orderRow(id) {
  let entry = view.orders.get(id);
  if (!entry) {
    entry = { id, order: null, report: null, stored: null, latency: null };
    view.orders.set(id, entry);
    while (view.orders.size > MAX_ORDERS) view.orders.delete(view.orders.keys().next().value);
  }
  return entry;
}

function onReport(report) {
  if (!report.client_order_id) return;
  const entry = orderRow(report.client_order_id);
  entry.report = report;
  const t = report.timings || {};
  const end = t.filled_ts || report.ts, start = t.origin_ts || (entry.order && entry.order.origin_ts);
  if (start && end) entry.latency = (end - start) / 1e6;
}

function renderOrders() {
  const rows = [...view.orders.values()].reverse().map((o) => {
    const order = o.order || {}, report = o.report || {};
    const status = report.status || "PENDING";
    return el("tr", { title: report.reason || "" }, el("td", {}, clock(order.ts || report.ts)), el("td", {}, o.id),
      el("td", {}, order.agent || report.agent), el("td", {}, order.symbol || report.symbol),
      el("td", { class: order.side || report.side || "" }, order.side || report.side), num(order.quantity || report.quantity),
      el("td", { class: status }, status), num(report.filled_quantity), num(report.avg_fill_price),
      num(o.latency == null ? "-" : o.latency.toFixed(2)));
  });
  $("orders").tBodies[0].replaceChildren(...rows);
}

function renderSignals() {
  $("signals").replaceChildren(...view.signals.slice().reverse().map((s) => el("li", {},
    el("span", { class: "meta" }, `${clock(s.ts)} ${s.agent} ${s.symbol}`),
    el("span", { class: s.action }, s.action), ` ${(s.confidence * 100).toFixed(0)}% `,
    el("span", { class: "meta" }, `[${s.model}${s.fallback ? " fallback" : ""}]`),
    el("span", { class: "why" }, s.reasoning),
    ...(s.inputs && s.inputs.length ? [el("span", { class: "meta" }, " inputs: " + s.inputs.map(inputText).join(" · "))] : []))));
}

// One input the decision pipeline weighed (Signal.inputs): source, reading, age, what it did.
function inputText(i) {
  const reading = i.source === "sentiment" ? (i.value >= 0 ? "+" : "") + Number(i.value).toFixed(2)
    : `${i.action} ${Number(i.value).toFixed(2)}`;
  return `${i.source} ${reading} (${Number(i.age_s).toFixed(1)} s) ${i.effect}`;
}

// ---------------------------------------------------------------- kill switch

async function toggleKillSwitch() {
  const token = $("token").value.trim();
  if (!token) { say("enter the gateway token (MOONBUS_GATEWAY_TOKEN) first"); return; }
  sessionStorage.setItem("moonbus-token", token);
  const action = $("killbutton").dataset.action || "engage";
  try {
    view.killSwitch = await api("/api/killswitch", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ action, actor: "dashboard", reason: $("reason").value || `${action} from the dashboard` }),
    });
    say(`kill switch ${view.killSwitch.engaged ? "engaged" : "released"}`);
    renderKillSwitch();
  } catch (e) { say(`kill switch: ${e.message}`); }
}

// ---------------------------------------------------------------- live stream

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    renderPrices(); drawChart(); renderAccount(); renderVerdicts(); renderFeeds(); renderOrders(); renderSignals();
    renderVenues(); renderPositions(); renderSymbols(); renderArbs(); renderAlgos();
  });
}

function openStream() {
  const source = new EventSource(`/api/stream?symbols=${encodeURIComponent(view.symbols.join(","))}`);
  const on = (type, handle) => source.addEventListener(type, (e) => { handle(JSON.parse(e.data).message); schedule(); });
  on("Tick", onTick);
  on("AccountState", (a) => { view.account = a; });
  on("Verdict", (v) => { view.verdicts[v.symbol] = v; });
  on("KillSwitchState", (k) => { view.killSwitch = k; });
  on("FeedStatus", (f) => { view.feeds[f.venue] = f; });
  on("LiveVenueStatus", (s) => { venueEntry(s.venue).status = s; });
  on("Reconciliation", (r) => { venueEntry(r.venue).reconciliation = r; });
  on("Signal", (s) => { view.signals.push(s); if (view.signals.length > MAX_SIGNALS) view.signals.shift(); });
  on("OrderRequest", (o) => { orderRow(o.client_order_id).order = o; });
  on("ExecutionReport", (r) => { onReport(r); refreshPositions(); });
  on("Consensus", (c) => { view.swarm[c.symbol] = heard(c, 0); });
  on("Sentiment", (s) => { view.sentiment[s.symbol] = heard(s, 0); });
  on("ArbOpportunity", (a) => { view.arbs.set(`${a.symbol} ${a.buy_venue} ${a.sell_venue}`, heard(a, 0)); });
  on("ProtectionState", (p) => { view.protections.set(p.parent_order_id, heard(p, 0)); });
  on("AlgoOrder", onAlgo);
  source.onopen = () => { $("stream").textContent = "stream: live"; $("stream").className = "pill on"; };
  source.onerror = () => { $("stream").textContent = "stream: reconnecting"; $("stream").className = "pill off"; };
}

async function start() {
  $("token").value = sessionStorage.getItem("moonbus-token") || "";
  $("killform").onsubmit = (e) => { e.preventDefault(); toggleKillSwitch(); };
  // Everything from before is read first, so the stream's newer events land after it.
  const [state, prices, orders, signals] = await Promise.allSettled(
    ["/api/state", "/api/prices", "/api/orders?limit=30", `/api/signals?limit=${MAX_SIGNALS}`].map((p) => api(p)));
  if (state.value) Object.assign(view, { account: state.value.account, verdicts: state.value.verdicts, feeds: state.value.feeds });
  if (prices.value) {
    view.symbols = [...Object.keys(prices.value.prices), ...prices.value.missing];
    for (const tick of Object.values(prices.value.prices)) onTick(tick);
  }
  for (const t of orders.value ? orders.value.orders : []) {
    orderRow(t.client_order_id).order = t.order;
    for (const rep of t.reports) onReport(rep.report);
  }
  if (signals.value) view.signals = signals.value.signals;
  const failed = [state, prices, orders, signals].filter((r) => r.status === "rejected");
  if (failed.some((r) => r.reason.status === 401)) return askForReadToken();
  if (failed.length) say(failed.map((r) => r.reason.message).join("; "));
  await refreshViews();
  openStream();
  select(view.symbols[0]);
  api("/api/killswitch").then((k) => { view.killSwitch = k; schedule(); }).catch((e) => say(`kill switch: ${e.message}`));
  refreshPositions();
  refreshSupervision();
  refreshVenues();
  setInterval(refreshPositions, 5000);
  setInterval(schedule, 1000);  // the ages, stale marks and drop-offs move on without events
  setInterval(refreshSupervision, 5000);
  window.addEventListener("resize", schedule);
}

start();
