// The dashboard: polls /v1/status once a second and redraws. No build step, no dependency.
"use strict";
const COLORS = ["#3867d6", "#e67e22", "#20a39e", "#8e44ad", "#c0392b", "#7f8c8d", "#27ae60", "#d35400"];
const STATE_COLOR = { closed: "#2f9e5b", half_open: "#d99a00", open: "#d23f3f" };
const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function secs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 1 : 0) + " ms";
  if (v < 120) return v.toFixed(1) + " s";
  if (v < 7200) return (v / 60).toFixed(0) + " min";
  return (v / 3600).toFixed(1) + " h";
}
function num(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return String(Math.round(v));
}
function usd(v) { return v ? "$" + (v < 0.01 ? v.toFixed(5) : v.toFixed(2)) : "$0"; }
function pct(v) { return (100 * v).toFixed(v > 0 && v < 0.1 ? 1 : 0) + "%"; }
function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }
function row(cells) { return "<tr>" + cells.map((c) => (typeof c === "object" ? `<td class="${c.cls}">${c.html}</td>` : `<td>${c}</td>`)).join("") + "</tr>"; }
const n = (html) => ({ cls: "num", html });

function renderNodes(doc, now) {
  $("nodes").tBodies[0].innerHTML = doc.nodes.map((node) => row([
    esc(node.node_id), esc(node.address), node.leader ? "leader" : esc(node.membership || "member"),
    n(secs(node.up_s)), n(node.heartbeat_age_s === null ? "–" : secs(node.heartbeat_age_s) + " ago"),
  ])).join("") + doc.unreachable.map((u) => row([esc(u), "", '<span class="badge open">unreachable</span>', "", ""])).join("");
}

function renderDeployments(doc, now) {
  $("deployments").tBodies[0].innerHTML = doc.deployments.map((d) => {
    let state = `<span class="badge ${d.state}">${esc(d.state.replace("_", "-"))}</span>`;
    if (d.failing_since_unix) state += ` <span class="muted">since ${clock(d.failing_since_unix)}</span>`;
    if ((d.budget_spent || []).length) state += ` <span class="badge open" title="${esc(d.budget_spent.join(", "))}">budget spent</span>`;
    return row([
      `<b>${esc(d.deployment)}</b>`, `${esc(d.model)} · ${esc(d.provider)}`, state, n(d.queued),
      n(`${d.busy_workers}/${d.workers}`), n(num(d.requests)), n(pct(d.error_rate)), n(`${d.retries} / ${d.fallbacks}`),
      n(`${secs(d.latency_p50_s)} / ${secs(d.latency_p99_s)}`), n(`${secs(d.ttft_p50_s)} / ${secs(d.ttft_p99_s)}`),
      n(`${num(d.tokens.input || 0)} / ${num(d.tokens.output || 0)}`), n(usd(d.cost_usd)),
    ]);
  }).join("") || row(['<span class="muted">no deployments</span>', "", "", "", "", "", "", "", "", "", "", ""]);
}

function timeline(b, now) {
  // Segments of state over the last hour, from the transitions; before the first: its "from" state.
  const start = now - 3600, w = 260, h = 14, x = (t) => Math.max(0, Math.min(w, ((t - start) / 3600) * w));
  const ts = b.transitions.filter((t) => t.at_unix >= start);
  let state = ts.length ? ts[0].from : b.state, at = start, out = "";
  for (const t of ts) {
    out += `<rect x="${x(at)}" width="${Math.max(0.5, x(t.at_unix) - x(at))}" height="${h}" fill="${STATE_COLOR[state] || "#999"}"/>`;
    state = t.to; at = t.at_unix;
  }
  const from = Math.min(x(at), w - 3); // the current state is always visible, however recent
  out += `<rect x="${from}" width="${w - from}" height="${h}" fill="${STATE_COLOR[state] || "#999"}"/>`;
  return `<svg class="timeline" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><title>${ts.length} transition(s) in the last hour</title>${out}</svg>`;
}

function renderBreakers(doc, now) {
  $("breakers").tBodies[0].innerHTML = doc.breakers.map((b) => {
    let state = `<span class="badge ${b.state}">${esc(b.state.replace("_", "-"))}</span>`;
    if (b.state === "open") state += ` <span class="muted">half-open in ${secs(b.half_open_in_s)}</span>`;
    return row([`${esc(b.provider)} <span class="muted">${esc(b.endpoint)}</span>`, esc(b.node), state,
                n(b.opens), timeline(b, now)]);
  }).join("") || row(['<span class="muted">no breakers</span>', "", "", "", ""]);
}

function bar(label, used, limit, fmt = num) {
  if (!limit) return `<div class="bar"><span>${label}: ${fmt(used)} (no limit)</span></div>`;
  const f = used / limit, cls = f >= 1 ? "full" : f >= 0.8 ? "high" : "";
  return `<div class="bar ${cls}" title="${used} of ${limit}"><div style="width:${Math.min(100, 100 * f)}%"></div>` +
         `<span>${label}: ${fmt(used)} / ${fmt(limit)} (${pct(f)})</span></div>`;
}

function renderBudgets(doc, now) {
  $("budgets").innerHTML = doc.budgets.map((b) =>
    `<div class="budget"><b>${esc(b.key)}</b> <span class="muted">${b.scope === "key" ? "API key, " : ""}` +
    `${esc(b.mode)}, ${b.window_s}s window, resets in ${secs(Math.max(0, b.window_end_unix - now))}</span>` +
    bar("requests", b.requests, b.rpm) + bar("tokens", b.tokens, b.tpm) + "</div>").join("") ||
    '<p class="muted">no rate limits</p>';
}

function usd6(v) { return "$" + (v >= 1 ? v.toFixed(2) : v >= 0.01 ? v.toFixed(4) : v.toPrecision(3)); }

function renderSpend(doc, now) {
  const spend = doc.spend || { budgets: [], ledgers: [] };
  $("spend").innerHTML = spend.budgets.map((b) => {
    const resets = b.period_end_unix ? `, resets in ${secs(Math.max(0, b.period_end_unix - now))}` : "";
    return `<div class="budget spend" data-budget="${esc(b.budget)}"><b>${esc(b.budget)}</b> <span class="muted">` +
      `${esc(b.scope)} ${esc(b.name)}, ${esc(b.period)} period, ${esc(b.mode)}${resets}</span>` +
      bar("USD", b.spent_usd, b.usd, usd6) + "</div>";
  }).join("") || '<p class="muted">no spend budgets</p>';
  $("ledgers").innerHTML = spend.ledgers.filter((l) => l.state !== "none").map((l) =>
    `<div class="ledger ${l.state}">ledger of ${esc(l.node)}: <span class="badge ${l.state === "ok" ? "ok" : "open"}">` +
    `${esc(l.state)}</span> <span class="muted">${num(l.written)} written, ${num(l.dropped)} dropped, ` +
    `${num(l.queued)} queued${l.error ? " · " + esc(l.error) : ""}</span></div>`).join("");
}

function renderKeys(doc) {
  $("keys").tBodies[0].innerHTML = doc.keys.map((k) => row([
    esc(k.key), n(num(k.requests)), n(num(k.failed)), n(`${num(k.input_tokens)} / ${num(k.output_tokens)}`), n(usd(k.cost_usd)),
  ])).join("") || row(['<span class="muted">no calls yet</span>', "", "", "", ""]);
}

function renderRefusals(doc) {
  $("refusals").tBodies[0].innerHTML = (doc.refusals || []).map((r) => row([
    esc(r.model), esc(r.reason), esc(r.where), n(num(r.count)),
  ])).join("") || row(['<span class="muted">none</span>', "", "", ""]);
}

function chart(svg, lines, now, fmt) {
  // lines: [{color, dash, points: [[t, v], ...]}] over the last 15 minutes, or over the span
  // the data covers when it is shorter (at least a minute), so a young node's charts are legible.
  let first = now;
  for (const l of lines) for (const p of l.points) if (p[1] !== null && p[0] < first) first = p[0];
  const span = Math.max(60, Math.min(900, now - first + 10));
  const W = 300, H = 90, L = 40, B = 12, start = now - span;
  let max = 0;
  for (const l of lines) for (const p of l.points) if (p[1] !== null && p[1] > max) max = p[1];
  max = max > 0 ? max * 1.1 : 1;
  const x = (t) => L + ((t - start) / span) * (W - L), y = (v) => H - B - (v / max) * (H - B - 4);
  let out = `<line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#ccc"/>` +
            `<text x="${L - 3}" y="10" text-anchor="end">${fmt(max)}</text><text x="${L - 3}" y="${H - B}" text-anchor="end">0</text>` +
            `<text x="${L}" y="${H - 1}">-${span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s"}</text><text x="${W}" y="${H - 1}" text-anchor="end">now</text>`;
  for (const l of lines) {
    const pts = l.points.filter((p) => p[1] !== null && p[0] >= start).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    if (pts.length === 1) out += `<circle cx="${pts[0].split(",")[0]}" cy="${pts[0].split(",")[1]}" r="1.8" fill="${l.color}"/>`;
    if (pts.length > 1) out += `<polyline fill="none" stroke="${l.color}" stroke-width="1.4" ${l.dash ? 'stroke-dasharray="3,2"' : ""} points="${pts.join(" ")}"/>`;
  }
  svg.innerHTML = out;
}

function renderCharts(doc, now) {
  const deps = doc.deployments;
  const mid = (p) => Math.min(p.t + 5, now); // the middle of a 10 s bucket (the current one: now)
  const lines = (field, dash) => deps.map((d, i) => ({ color: COLORS[i % COLORS.length], dash,
                                                        points: d.series.map((p) => [mid(p), p[field]]) }));
  chart($("chart-rps"), lines("requests_per_s"), now, (v) => v.toFixed(1));
  chart($("chart-latency"), lines("latency_p50_s").concat(lines("latency_p99_s", true)), now, secs);
  chart($("chart-ttft"), lines("ttft_p50_s"), now, secs);
  chart($("chart-spend"), lines("cost_usd"), now, usd);
  $("legend").innerHTML = deps.map((d, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(d.deployment)}</span>`).join("");
}

let last = null, busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const reply = await fetch("/v1/status", { credentials: "same-origin", cache: "no-store" });
    if (!reply.ok) throw new Error(`/v1/status answered ${reply.status}`);
    const doc = await reply.json();
    const now = doc.generated_unix;
    last = Date.now();
    $("error").hidden = true;
    const leader = doc.leader ? `led by ${esc(doc.leader)}` : "single node";
    $("cluster").innerHTML = `${doc.nodes.length} node(s), ${leader}, ${doc.deployments.length} deployment(s)`;
    renderCharts(doc, now); renderDeployments(doc, now); renderBreakers(doc, now);
    renderBudgets(doc, now); renderSpend(doc, now); renderNodes(doc, now); renderKeys(doc); renderRefusals(doc);
    document.body.dataset.loaded = "1";
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = `status unavailable: ${err.message}`;
  } finally {
    busy = false;
    $("updated").textContent = last ? `updated ${new Date(last).toLocaleTimeString()}` : "";
  }
}
refresh();
setInterval(refresh, 1000);
