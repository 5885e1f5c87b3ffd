// The hetagent ops dashboard: cluster, plans, runs (live), SLA and cost. Dependency-free:
// drawing is plain SVG, live updates are the API's server-sent events read through fetch (so
// the bearer token travels in a header, never in a URL). The token lives in localStorage; a
// link may carry it once as #token=... (a fragment never reaches the server).
"use strict";

const PALETTE = ["#3555d6", "#d97706", "#0f9d8a", "#b4359c", "#5b6b2e", "#7c4dff", "#6b7280"];
const CRITICAL = "#111827"; // the critical path: dark outline and edges, apart from pool hues
const STATE_COLOURS = {
  succeeded: "#1a7f37", failed: "#c4302b", running: "#d97706", pending: "#c8ccd4",
};
const view = document.getElementById("view");
let token = localStorage.getItem("hetagent-token") || "";
let current = { stop: () => {} };
let routed = 0; // counts navigations, so a view that finishes loading late stops itself // the view on screen; stop() ends its streams and timers

// -- plumbing --------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { showLogin("The token was refused."); throw new Error("401"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

// Server-sent events over fetch: calls onEvent(event) for each, reconnects with Last-Event-ID.
function stream(path, onEvent, onEnd) {
  const controller = new AbortController();
  let last = null;
  let stopped = false;
  const live = document.getElementById("live");
  async function connect() {
    while (!stopped) {
      try {
        const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
        if (last !== null) headers["Last-Event-ID"] = String(last);
        const response = await fetch(path, { headers, signal: controller.signal });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        live.textContent = "live"; live.classList.add("on");
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data:"))
              .map((l) => l.slice(5).trim()).join("\n");
            if (!data) continue;
            const event = JSON.parse(data);
            last = event.id;
            onEvent(event);
          }
        }
        if (onEnd) { onEnd(); return; } // a run's stream ends when the run does
      } catch (error) {
        if (stopped) return;
      }
      live.textContent = "reconnecting"; live.classList.remove("on");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  connect();
  return () => { stopped = true; controller.abort(); };
}

function poll(fn, ms) {
  fn();
  const id = setInterval(fn, ms);
  return () => clearInterval(id);
}

function poolColours(names) {
  const colours = {};
  [...new Set(names)].sort().forEach((name, i) => { colours[name] = PALETTE[i % PALETTE.length]; });
  return colours;
}

function legend(colours) {
  return `<div class="legend">${Object.entries(colours).map(([name, colour]) =>
    `<span><i class="swatch" style="background:${colour}"></i>${esc(name)}</span>`).join("")}</div>`;
}

const fmt = {
  s: (v) => (v == null ? "–" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`),
  usd: (v) => (v == null ? "–" : v === 0 ? "$0" : v < 0.01 ? `$${v.toExponential(2)}` : `$${v.toFixed(4)}`),
  pct: (v) => (v == null ? "–" : `${(v * 100).toFixed(0)}%`),
  time: (t) => new Date(t * 1000).toLocaleTimeString(),
  bytes: (b) => (b == null ? "–" : `${(b / 2 ** 20).toFixed(0)} MiB`),
};

function bar(share, colour) {
  const width = Math.max(0, Math.min(1, share || 0)) * 120;
  return `<span class="bartrack"><span class="bar" style="width:${width}px;background:${colour || ""}"></span></span>`;
}

function status(value) {
  return `<span class="status ${esc(value)}" data-status="${esc(value)}">${esc(value)}</span>`;
}

// -- the operator graph: layered top to bottom, nodes coloured by pool or by state ------

function drawGraph(graph, colourOf, critical = new Set()) {
  const ids = graph.nodes.map((n) => n.id);
  const preds = Object.fromEntries(ids.map((id) => [id, []]));
  graph.edges.forEach(([a, b]) => preds[b] && preds[b].push(a));
  // layers by longest path, ignoring back edges (a loop's result feeding its next turn)
  const order = Object.fromEntries(ids.map((id, i) => [id, i]));
  const layer = {};
  ids.forEach((id) => {
    layer[id] = Math.max(0, ...preds[id].filter((p) => order[p] < order[id]).map((p) => layer[p] + 1));
  });
  const rows = {};
  ids.forEach((id) => { (rows[layer[id]] = rows[layer[id]] || []).push(id); });
  const W = 180, H = 34, GX = 24, GY = 26, M = 60; // M: room on the right for back edges
  const widest = Math.max(1, ...Object.values(rows).map((r) => r.length));
  const pos = {};
  Object.entries(rows).forEach(([y, row]) => row.forEach((id, x) => {
    const indent = ((widest - row.length) * (W + GX)) / 2; // centre each row
    pos[id] = { x: 10 + indent + x * (W + GX), y: 10 + y * (H + GY) };
  }));
  const width = 20 + widest * (W + GX) + M;
  const height = 20 + Object.keys(rows).length * (H + GY);
  const edges = graph.edges.map(([a, b]) => {
    const p = pos[a], q = pos[b];
    if (!p || !q) return "";
    const hot = critical.has(a) && critical.has(b);
    const back = order[a] > order[b];
    const right = 10 + widest * (W + GX) + M / 2;
    const path = back // around the right-hand side, up to the target
      ? `M${p.x + W},${p.y + H / 2} C${right},${p.y + H / 2} ${right},${q.y + H / 2} ${q.x + W},${q.y + H / 2}`
      : `M${p.x + W / 2},${p.y + H} C${p.x + W / 2},${p.y + H + GY / 2} ${q.x + W / 2},${q.y - GY / 2} ${q.x + W / 2},${q.y}`;
    return `<path d="${path}" fill="none" stroke="${hot ? CRITICAL : "#9aa3b2"}" stroke-width="${hot ? 2.5 : 1}"${back ? ' stroke-dasharray="4 3"' : ""} marker-end="url(#arrow)"/>`;
  }).join("");
  const nodes = graph.nodes.map((n) => {
    const p = pos[n.id];
    const hot = critical.has(n.id);
    return `<g data-op="${esc(n.id)}"><title>${esc(n.id)} (${esc(n.kind)}) on ${esc(n.pool)}</title>
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="4" fill="${colourOf(n)}"
        stroke="${hot ? CRITICAL : "none"}" stroke-width="${hot ? 3 : 0}"/>
      <text x="${p.x + 6}" y="${p.y + 14}" fill="#fff">${esc(n.id.length > 28 ? "…" + n.id.slice(-27) : n.id)}</text>
      <text x="${p.x + 6}" y="${p.y + 27}" fill="#eef">${esc(n.kind)} · ${esc(n.pool || "")}</text></g>`;
  }).join("");
  return `<svg width="${width}" height="${height}" role="img" aria-label="operator graph">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">
    <path d="M0,0 L10,5 L0,10 z" fill="#9aa3b2"/></marker></defs>${edges}${nodes}</svg>`;
}

// -- a line chart of points [{x, y}], for the SLA and cost view ------------------------

function lineChart(points, { label, format, max }) {
  if (!points.length) return `<p class="muted">No finished runs yet.</p>`;
  const W = 640, H = 180, P = 36;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1;
  const top = max ?? Math.max(...ys, 1e-12);
  const X = (x) => P + (x1 === x0 ? (W - 2 * P) / 2 : ((x - x0) / (x1 - x0)) * (W - 2 * P));
  const Y = (y) => H - P + (-(y / top) * (H - 2 * P));
  const line = points.map((p, i) => `${i ? "L" : "M"}${X(p.x)},${Y(p.y)}`).join(" ");
  const dots = points.map((p) => `<circle cx="${X(p.x)}" cy="${Y(p.y)}" r="3" fill="#3555d6"><title>${fmt.time(p.x)}: ${format(p.y)}</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" role="img" aria-label="${esc(label)}">
    <line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="#ccc"/>
    <line x1="${P}" y1="${P}" x2="${P}" y2="${H - P}" stroke="#ccc"/>
    <text x="4" y="${P}">${esc(format(top))}</text><text x="4" y="${H - P}">0</text>
    <text x="${P}" y="${H - 8}">${fmt.time(x0)}</text><text x="${W - P - 60}" y="${H - 8}">${fmt.time(x1)}</text>
    <path d="${line}" fill="none" stroke="#3555d6" stroke-width="2"/>${dots}</svg>`;
}

// -- views ---------------------------------------------------------------------------------

const views = {
  async cluster() {
    view.innerHTML = `<h1>Cluster</h1><div id="kpis" class="kpis"></div>
      <div class="card"><h2>Pools</h2><table id="pools"></table></div>
      <div class="card"><h2>Engines</h2><table id="engines"></table></div>`;
    const render = async () => {
      const c = await api("/v1/cluster");
      document.getElementById("kpis").innerHTML = `
        <div class="kpi"><b>${esc(c.cluster)}</b><span>cluster</span></div>
        <div class="kpi"><b data-kpi="queue">${c.queue_depth}</b><span>queue depth (pending + running runs)</span></div>
        <div class="kpi"><b>${c.runs.succeeded}</b><span>runs succeeded</span></div>
        <div class="kpi"><b>${c.runs.failed}</b><span>runs failed</span></div>`;
      const colours = poolColours(c.pools.map((p) => p.name));
      document.getElementById("pools").innerHTML = `<tr><th>pool</th><th>device</th>
        <th class="num">devices</th><th>utilization (last ${c.window_seconds} s)</th>
        <th class="num">running steps</th><th class="num">$/hour</th></tr>` +
        c.pools.map((p) => `<tr><td><i class="swatch" style="background:${colours[p.name]}"></i>${esc(p.name)}</td>
          <td>${esc(p.device)}</td><td class="num">${p.count}</td>
          <td>${bar(p.utilization, colours[p.name])}${fmt.pct(p.utilization)}</td>
          <td class="num">${p.running_steps}</td><td class="num">${fmt.usd(p.usd_per_hour)}</td></tr>`).join("");
      const engines = c.pools.flatMap((p) => p.engines);
      document.getElementById("engines").innerHTML = engines.length
        ? `<tr><th>pool</th><th>model</th><th class="num">running</th><th class="num">waiting</th>
          <th>KV cache usage</th><th class="num">leased blocks</th><th class="num">prefix hit rate</th></tr>` +
          engines.map((e) => `<tr><td>${esc(e.pool)}</td><td>${esc(e.model)}</td>
            <td class="num">${e.running}</td><td class="num">${e.waiting}</td>
            <td>${bar(e.kv_cache_usage)}${fmt.pct(e.kv_cache_usage)}</td>
            <td class="num">${e.kv_leased_blocks} / ${e.kv_blocks}</td>
            <td class="num">${fmt.pct(e.prefix_hit_rate)}</td></tr>`).join("")
        : `<tr><td class="muted">No engine loaded yet (they load on a run's first LLM call).</td></tr>`;
    };
    return poll(() => render().catch(showError), 3000);
  },

  async plans(agentArg) {
    const [{ agents }, { clusters }] = await Promise.all([api("/v1/agents"), api("/v1/clusters")]);
    view.innerHTML = `<h1>Plans</h1><div class="controls">
      <label>agent <select id="agent">${agents.map((a) => `<option>${esc(a)}</option>`).join("")}</select></label>
      <label>cluster <select id="cluster">${clusters.map((c) => `<option>${esc(c.name)}</option>`).join("")}</select></label>
      </div><div id="plan">${agents.length ? "" : '<p class="muted">No agents yet: POST one to /v1/agents or submit a run.</p>'}</div>`;
    const pick = document.getElementById("agent"), where = document.getElementById("cluster");
    if (agentArg) pick.value = decodeURIComponent(agentArg);
    const render = async () => {
      if (!pick.value) return;
      const out = document.getElementById("plan");
      out.innerHTML = `<p class="muted">Planning…</p>`;
      const p = await api(`/v1/plans/${encodeURIComponent(pick.value)}?cluster=${encodeURIComponent(where.value)}`);
      const colours = poolColours(p.cluster_pools.map((x) => x.name));
      const byOp = Object.fromEntries(p.assignments.map((a) => [a.op, a]));
      const cost = {};
      p.assignments.forEach((a) => { cost[a.pool] = (cost[a.pool] || 0) + a.cost_usd; });
      const total = Object.values(cost).reduce((s, v) => s + v, 0) || 1;
      out.innerHTML = `<div class="kpis">
        <div class="kpi"><b>${fmt.s(p.latency_seconds)}</b><span>end-to-end latency (SLA ${fmt.s(p.sla_seconds)}: ${p.sla_met ? "met" : "missed"})</span></div>
        <div class="kpi"><b>${fmt.usd(p.tco_per_request_usd)}</b><span>TCO per request</span></div>
        <div class="kpi"><b>${fmt.usd(p.tco_per_request_at_fleet_usd)}</b><span>per request at fleet size</span></div></div>
        <div class="card"><h2>Operator graph (colour: pool; dark outline: critical path; dashed: into the next loop turn)</h2>
        ${legend(colours)}${drawGraph(p.graph, (n) => colours[(byOp[n.id] || n).pool] || "#8a8f98", new Set(p.critical_path))}</div>
        <div class="card"><h2>Cost per request by pool</h2><table><tr><th>pool</th><th>share</th><th class="num">$/request</th><th class="num">$/hour</th></tr>
        ${Object.entries(cost).map(([pool, usd]) => `<tr><td>${esc(pool)}</td><td>${bar(usd / total, colours[pool])}${fmt.pct(usd / total)}</td>
          <td class="num">${fmt.usd(usd)}</td><td class="num">${fmt.usd((p.pools[pool] || {}).usd_per_hour)}</td></tr>`).join("")}</table></div>
        <div class="card"><h2>Baselines (ratio = baseline cost / this plan's)</h2><table>
        <tr><th>baseline</th><th class="num">$/request</th><th class="num">latency</th><th>SLA</th><th class="num">ratio</th></tr>
        ${p.baselines.map((b) => `<tr><td>${esc(b.name)}</td><td class="num">${fmt.usd(b.tco_per_request_usd)}</td>
          <td class="num">${fmt.s(b.latency_s)}</td><td>${b.tco_per_request_usd == null ? esc(b.reason) : b.sla_met ? "met" : "missed"}</td>
          <td class="num">${b.ratio ? b.ratio.toFixed(2) + "×" : "–"}</td></tr>`).join("")}</table></div>
        <div class="card"><h2>Operators</h2><table><tr><th>operator</th><th>kind</th><th>pool</th><th>device</th><th class="num">latency</th><th class="num">$/request</th></tr>
        ${p.assignments.map((a) => `<tr><td>${esc(a.op)}${p.critical_path.includes(a.op) ? " ★" : ""}</td><td>${esc(a.kind)}</td>
          <td>${esc(a.pool)}</td><td>${esc(a.device)}</td><td class="num">${fmt.s(a.latency_s)}</td><td class="num">${fmt.usd(a.cost_usd)}</td></tr>`).join("")}</table></div>`;
    };
    pick.onchange = where.onchange = () => render().catch(showError);
    await render().catch(showError);
    return () => {};
  },

  async runs() {
    view.innerHTML = `<h1>Runs</h1><div class="card"><table id="runs"></table></div>`;
    const render = async () => {
      const { runs } = await api("/v1/runs?limit=100");
      document.getElementById("runs").innerHTML = `<tr><th>run</th><th>agent</th><th>status</th>
        <th>started</th><th class="num">duration</th><th>SLO</th></tr>` + (runs.length ? runs.map((r) =>
        `<tr class="link" data-run="${esc(r.id)}"><td><a href="#/runs/${esc(r.id)}">${esc(r.id.slice(0, 12))}</a></td>
          <td>${esc(r.agent)}</td><td>${status(r.status)}</td><td>${fmt.time(r.created_at)}</td>
          <td class="num">${fmt.s(r.duration_s)}</td>
          <td>${r.slo_met == null ? "–" : r.slo_met ? "met" : "missed"}</td></tr>`).join("")
        : `<tr><td class="muted" colspan="6">No runs yet.</td></tr>`);
      document.querySelectorAll("tr[data-run]").forEach((row) => {
        row.onclick = () => { location.hash = `#/runs/${row.dataset.run}`; };
      });
    };
    let pending = null; // coalesce a burst of events into one refresh
    const refresh = () => { if (!pending) pending = setTimeout(() => { pending = null; render().catch(showError); }, 150); };
    await render();
    const stopStream = stream("/v1/events", refresh);
    return () => { stopStream(); clearTimeout(pending); };
  },

  async run(id) {
    view.innerHTML = `<h1>Run <code>${esc(id)}</code></h1><div id="summary" class="kpis"></div>
      <div class="card"><h2>Operators (colour: state)</h2><div id="graph"></div></div>
      <div class="card"><h2>Steps by pool</h2><div id="gantt"></div></div>
      <div class="card"><h2>Steps</h2><table id="steps"></table></div>
      <div class="card"><h2>Outputs</h2><pre id="outputs"></pre></div>`;
    const graph = await api(`/v1/runs/${encodeURIComponent(id)}/graph`);
    const render = async () => {
      const r = await api(`/v1/runs/${encodeURIComponent(id)}`);
      const now = Date.now() / 1000;
      document.getElementById("summary").innerHTML = `
        <div class="kpi"><b id="run-status">${status(r.status)}</b><span>${esc(r.agent)}</span></div>
        <div class="kpi"><b>${fmt.s(r.duration_s ?? now - r.created_at)}</b><span>duration (SLO ${fmt.s(r.slo_seconds)})</span></div>
        <div class="kpi"><b>${r.tokens.input} / ${r.tokens.output}</b><span>tokens in / out (${r.tokens.cached} cached)</span></div>
        <div class="kpi"><b>${fmt.usd(r.cost_usd)}</b><span>device time cost</span></div>`;
      // an operator's state: that of the latest step whose key names it (`solve.turn@2`)
      const state = {};
      r.steps.forEach((s) => {
        const base = s.key.split("@")[0];
        graph.nodes.forEach((n) => {
          if (n.id === base || n.id.startsWith(base + ".")) state[n.id] = s.status;
        });
      });
      document.getElementById("graph").innerHTML = legend(STATE_COLOURS) +
        drawGraph(graph, (n) => STATE_COLOURS[state[n.id] || (r.status === "succeeded" ? "succeeded" : "pending")]);
      document.getElementById("gantt").innerHTML = gantt(r.steps, now);
      document.getElementById("steps").innerHTML = `<tr><th>step</th><th>pool</th><th>status</th>
        <th class="num">duration</th><th class="num">tokens in/out</th><th class="num">cached</th><th>tool use</th><th>error</th></tr>` +
        r.steps.map((s) => {
          const d = s.details || {};
          const tool = d.tool ? `${esc(d.tool)}: ${fmt.s(d.seconds)}, peak ${fmt.bytes(d.peak_memory_bytes)}` : "";
          return `<tr><td>${esc(s.key)}</td><td>${esc(s.pool)}</td><td>${status(s.status)}</td>
            <td class="num">${fmt.s((s.finished_at || now) - s.started_at)}</td>
            <td class="num">${d.prompt_tokens ?? ""}${d.prompt_tokens != null ? " / " + d.output_tokens : ""}</td>
            <td class="num">${d.cached_tokens ?? ""}</td><td>${tool}</td><td class="error">${esc(s.error || "")}</td></tr>`;
        }).join("");
      document.getElementById("outputs").textContent = r.error ? `error: ${r.error}` : JSON.stringify(r.outputs, null, 2) ?? "";
    };
    await render();
    let pending = null;
    const refresh = () => { if (!pending) pending = setTimeout(() => { pending = null; render().catch(showError); }, 100); };
    return stream(`/v1/runs/${encodeURIComponent(id)}/events`, refresh, () => render().catch(showError));
  },

  async sla() {
    view.innerHTML = `<h1>SLA attainment and cost</h1><div id="kpis" class="kpis"></div>
      <div class="card"><h2>SLA attainment per minute</h2><div id="attainment"></div></div>
      <div class="card"><h2>Cost per minute</h2><div id="cost"></div></div>
      <div class="card"><h2>Run latency against SLO</h2><div id="latency"></div></div>`;
    const render = async () => {
      const s = await api("/v1/stats");
      document.getElementById("kpis").innerHTML = `
        <div class="kpi"><b>${fmt.pct(s.attainment)}</b><span>SLA attainment (${s.runs.length} finished runs)</span></div>
        <div class="kpi"><b>${fmt.usd(s.cost_usd)}</b><span>device-time cost</span></div>`;
      const minutes = s.per_minute;
      document.getElementById("attainment").innerHTML = lineChart(
        minutes.map((m) => ({ x: m.time, y: m.attainment })), { label: "attainment", format: fmt.pct, max: 1 });
      document.getElementById("cost").innerHTML = lineChart(
        minutes.map((m) => ({ x: m.time, y: m.cost_usd })), { label: "cost", format: fmt.usd });
      document.getElementById("latency").innerHTML = lineChart(
        s.runs.filter((r) => r.duration_s != null).map((r) => ({ x: r.time, y: r.duration_s })),
        { label: "latency", format: fmt.s });
    };
    return poll(() => render().catch(showError), 5000);
  },
};

// A Gantt chart of a run's steps: one row per pool, one bar per step, coloured by state.
function gantt(steps, now) {
  if (!steps.length) return `<p class="muted">No steps yet.</p>`;
  const pools = [...new Set(steps.map((s) => s.pool || "–"))];
  const t0 = Math.min(...steps.map((s) => s.started_at));
  const t1 = Math.max(...steps.map((s) => s.finished_at || now), t0 + 1e-3);
  const W = 900, L = 90, RH = 26;
  const X = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 10);
  const rows = pools.map((pool, i) => `<text x="4" y="${i * RH + 18}">${esc(pool)}</text>
    <line x1="${L}" y1="${i * RH + RH}" x2="${W}" y2="${i * RH + RH}" stroke="#eee"/>`).join("");
  const bars = steps.map((s) => {
    const row = pools.indexOf(s.pool || "–");
    const x = X(s.started_at), w = Math.max(2, X(s.finished_at || now) - x);
    return `<rect x="${x}" y="${row * RH + 5}" width="${w}" height="${RH - 10}" rx="2"
      fill="${STATE_COLOURS[s.status] || "#888"}"><title>${esc(s.key)}: ${fmt.s((s.finished_at || now) - s.started_at)}</title></rect>`;
  }).join("");
  return `<svg width="${W}" height="${pools.length * RH + 24}" role="img" aria-label="steps by pool">${rows}${bars}
    <text x="${L}" y="${pools.length * RH + 18}">0</text><text x="${W - 60}" y="${pools.length * RH + 18}">${fmt.s(t1 - t0)}</text></svg>`;
}

// -- routing ---------------------------------------------------------------------------------

function showError(error) {
  if (String(error.message) === "401") return;
  const note = document.createElement("p");
  note.className = "error";
  note.textContent = error.message;
  view.prepend(note);
}

function showLogin(message) {
  current.stop();
  view.innerHTML = "";
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function route() {
  const fragment = location.hash.slice(1);
  if (fragment.startsWith("token=")) { // a link carrying the token: keep it, drop it from the URL
    token = decodeURIComponent(fragment.slice(6));
    localStorage.setItem("hetagent-token", token);
    history.replaceState(null, "", "#/runs");
  }
  current.stop();
  if (!token) return showLogin();
  document.getElementById("login").hidden = true;
  const [, name = "runs", arg] = location.hash.split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  const show = name === "runs" && arg ? () => views.run(arg) : views[name] ? () => views[name](arg) : views.runs;
  const generation = ++routed;
  try {
    const stop = (await show()) || (() => {});
    if (generation !== routed) return stop(); // the user moved on while this view loaded
    current = { stop };
  } catch (error) {
    current = { stop: () => {} };
    showError(error);
  }
}

document.getElementById("login").onsubmit = (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("hetagent-token", token);
  route();
};
document.getElementById("logout").onclick = () => {
  localStorage.removeItem("hetagent-token");
  token = "";
  showLogin();
};
window.addEventListener("hashchange", route);
route();
