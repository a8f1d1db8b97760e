// EdgeFleet dashboard: renders /dashboard/api/overview with plain DOM and SVG (no libraries).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function table(headers, rows, cls) {
    return el("table", {class: cls || ""},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
  }

  function when(iso) {
    if (!iso) return "never";
    const s = (Date.now() - Date.parse(iso)) / 1000;
    if (s < 90) return `${Math.max(0, Math.round(s))} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return new Date(iso).toISOString().slice(0, 16).replace("T", " ");
  }

  function fmt(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits === undefined ? 3 : digits);
  }

  // A line chart of one or more series [{name, points: [[t_ms, y], ...]}].
  function lineChart(series, opts) {
    const W = 640, H = 200, L = 48, R = 12, T = 12, B = 28;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                              "aria-label": opts.label});
    const pts = series.flatMap((s) => s.points);
    if (!pts.length) return el("p", {class: "empty"}, "No data in range.");
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    if (x1 === x0) { x0 -= 60000; x1 += 60000; }
    const y1 = Math.max(opts.yMax || 0, ...pts.map((p) => p[1])) || 1;
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = (y) => H - B - y / y1 * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const y = y1 * i / 4;
      root.append(svg("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid"}));
      const label = svg("text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "axis"});
      label.textContent = fmt(y, 2);
      root.append(label);
    }
    for (const [i, t] of [[0, x0], [1, x1]]) {
      const label = svg("text", {x: i ? W - R : L, y: H - 8, "text-anchor": i ? "end" : "start",
                                 class: "axis"});
      label.textContent = new Date(t).toISOString().slice(11, 16) + " UTC";
      root.append(label);
    }
    if (opts.threshold !== undefined) {
      root.append(svg("line", {x1: L, x2: W - R, y1: sy(opts.threshold), y2: sy(opts.threshold),
                               class: "threshold"}));
    }
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
      root.append(svg("path", {d: d.join(" "), fill: "none", stroke: color, "stroke-width": 2,
                               class: "series", "data-series": s.name}));
      for (const p of s.points) {
        root.append(svg("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color}));
      }
    });
    const legend = el("div", {class: "legend"}, series.map((s, i) => {
      const key = el("span", {class: "key"});
      key.style.background = COLORS[i % COLORS.length];
      return el("span", {}, key, s.name);
    }));
    return el("figure", {class: "figure"}, el("figcaption", {}, opts.label), root, legend);
  }

  // Versions as nodes, an arrow from each parent to its child (the lineage).
  function lineage(versions) {
    const sorted = [...versions].sort((a, b) => a.version - b.version);
    const W = Math.max(240, sorted.length * 90 + 40), H = 90;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "lineage", role: "img",
                              "aria-label": "version lineage"});
    const x = {};
    sorted.forEach((v, i) => { x[v.version] = 40 + i * 90; });
    for (const v of sorted) {
      const parent = v.lineage && v.lineage.parent_version;
      if (parent && x[parent] !== undefined) {
        const mid = (x[parent] + x[v.version]) / 2;
        root.append(svg("path", {d: `M${x[parent]},40 Q${mid},5 ${x[v.version]},40`,
                                 fill: "none", class: "edge"}));
      }
    }
    for (const v of sorted) {
      const g = svg("g", {class: "node" + (v.aliases.length ? " aliased" : "")});
      g.append(svg("circle", {cx: x[v.version], cy: 50, r: 16}));
      const t = svg("text", {x: x[v.version], y: 55, "text-anchor": "middle"});
      t.textContent = `v${v.version}`;
      const a = svg("text", {x: x[v.version], y: 84, "text-anchor": "middle", class: "axis"});
      a.textContent = v.aliases.join(", ");
      g.append(t, a);
      root.append(g);
    }
    return root;
  }

  function renderModels(data) {
    const body = document.getElementById("models-body");
    body.replaceChildren();
    if (!data.models.length) body.append(el("p", {class: "empty"}, "No models registered."));
    for (const m of data.models) {
      const rows = m.versions.map((v) => [
        `v${v.version}`, v.status, v.aliases.join(", ") || "–",
        fmt(v.metrics["holdout.accuracy"] ?? v.metrics.accuracy),
        v.lineage.parent_version ? `v${v.lineage.parent_version}` : "–",
        v.lineage.federated_run ? `${v.lineage.federated_run} r${v.lineage.federated_round}` : "–",
        v.lineage.num_clients ?? "–", v.lineage.strategy || "–", when(v.created_at),
        el("a", {class: "card-link", href: `/dashboard/card/${encodeURIComponent(m.name)}/${v.version}`},
           "card")]);
      const aliasRows = m.aliases.map((a) => [
        a.alias, `v${a.version}`, a.rollout_percent === null ? "–" : `${a.rollout_percent} %`,
        el("ol", {class: "history"}, a.history.map((e) => el("li", {},
          `${e.from_version ? "v" + e.from_version : "∅"} → ${e.to_version ? "v" + e.to_version : "∅"}`,
          ` · ${when(e.at)} · ${e.actor}${e.reason ? " · " + e.reason : ""}`)))]);
      body.append(el("article", {class: "model", "data-model": m.name},
        el("h3", {}, m.name, el("small", {}, ` ${m.task} · ${m.versions.length} versions`)),
        lineage(m.versions),
        table(["version", "status", "aliases", "accuracy", "parent", "federated run", "clients",
               "strategy", "created", "model card"], rows, "versions"),
        el("h4", {}, "Aliases and their history"),
        aliasRows.length ? table(["alias", "points at", "rollout", "history (newest first)"],
                                 aliasRows, "aliases") : el("p", {class: "empty"}, "No aliases.")));
    }
  }

  function guardLines(evidence) {
    const guards = (evidence && evidence.guards) || [];
    return el("ul", {class: "guards"}, guards.map((g) =>
      el("li", {class: `guard ${g.decision}`}, `${g.kind}: ${g.decision} · ${g.reason || ""}`)));
  }

  function renderRollouts(data) {
    const body = document.getElementById("rollouts-body");
    body.replaceChildren();
    const all = data.models.flatMap((m) => (m.rollouts || []).map((r) => [m.name, r]));
    if (!all.length) body.append(el("p", {class: "empty"}, "No rollouts yet."));
    for (const [model, r] of all) {
      const bad = r.state === "rolled_back" || r.state === "aborted";
      const steps = r.steps.map((s, i) => [
        i === r.step && !r.finished_at ? `▶ ${i + 1}` : `${i + 1}`,
        s.percent !== null && s.percent !== undefined ? `${s.percent} %` : JSON.stringify(s.labels || {}),
        `${s.bake_s} s`, `${s.timeout_s} s`, s.approval ? "yes" : "–"]);
      const events = r.timeline.map((e) => [
        when(e.at), `${e.step + 1}`, e.kind, e.to_state, e.actor, e.message, guardLines(e.evidence)]);
      body.append(el("article", {class: "rollout", "data-rollout": String(r.id)},
        el("h3", {}, `${model} · rollout ${r.id}: v${r.candidate ?? "?"} over v${r.baseline ?? "?"}`,
           el("small", {}, ` ${r.strategy}`),
           el("span", {class: bad ? "badge bad" : "badge ok"}, r.state)),
        el("p", {class: "summary"}, `guards: ${r.guards.map((g) => `${g.kind} (margin ${g.margin}, ` +
           `≥ ${g.min_samples})`).join(", ") || "none"}${r.awaiting ? " · awaiting " + r.awaiting : ""}`),
        table(["step", "share / wave", "bake", "timeout", "approval"], steps, "steps"),
        el("h4", {}, "Timeline and evidence"),
        table(["at", "step", "event", "state", "by", "message", "guards"], events, "timeline")));
    }
  }

  function renderDrift(data) {
    const body = document.getElementById("drift-body");
    body.replaceChildren();
    const withDrift = data.models.filter((m) => m.drift);
    if (!withDrift.length) body.append(el("p", {class: "empty"}, "No drift summaries reported yet."));
    for (const m of withDrift) {
      const d = m.drift;
      const t = (w) => Date.parse(w.window_start);
      const fleet = [
        {name: "share of features drifted", points: d.windows.map((w) => [t(w), w.share_drifted])},
      ];
      const psi = d.features.map((f) => ({
        name: f.name, points: f.points.filter((p) => p.psi !== null).map((p) => [Date.parse(p.t), p.psi]),
      }));
      body.append(el("article", {class: "drift", "data-model": m.name},
        el("h3", {}, `${m.name} v${d.version}`,
           el("span", {class: d.drifted ? "badge bad" : "badge ok"}, d.drifted ? "drifted" : "stable")),
        el("div", {class: "charts"},
          lineChart(fleet, {label: `${m.name}: fleet drift per ${d.bucket_seconds / 60} min window`, yMax: 1}),
          lineChart(psi, {label: `${m.name}: PSI of the most drifted features`, threshold: 0.2}))));
    }
  }

  function renderFleet(data) {
    const body = document.getElementById("fleet-body");
    body.replaceChildren();
    const counts = {};
    for (const d of data.devices) {
      const key = d.model ? `${d.model} v${d.running_version ?? "?"}` : "no model";
      counts[key] = (counts[key] || 0) + 1;
    }
    body.append(el("p", {class: "summary"}, `${data.devices_total} devices · `,
      Object.entries(counts).map(([k, n]) => el("span", {class: "badge"}, `${k}: ${n}`))));
    body.append(table(["device", "model", "assigned", "running", "last seen", "enrolled", "state"],
      data.devices.map((d) => [d.id, d.model || "–", d.assigned_version ? `v${d.assigned_version}` : "–",
        d.running_version ? `v${d.running_version}` : "–", when(d.last_seen_at), when(d.enrolled_at),
        d.revoked ? "revoked" : "active"]), "devices"));
  }

  function renderRuns(data) {
    const body = document.getElementById("runs-body");
    body.replaceChildren();
    if (!data.runs.length) body.append(el("p", {class: "empty"}, "No federated runs have published a version."));
    for (const r of data.runs) {
      body.append(el("article", {class: "run", "data-run": r.run},
        el("h3", {}, `${r.run}`, el("small", {}, ` ${r.model} · ${r.rounds.length} rounds`)),
        table(["round", "version", "parent", "clients", "strategy", "holdout accuracy", "published"],
          r.rounds.map((x) => [x.round ?? "–", `v${x.version}`, x.parent ? `v${x.parent}` : "–",
            x.clients ?? "–", x.strategy || "–", fmt(x.metrics["holdout.accuracy"]), when(x.created_at)]),
          "rounds")));
    }
  }

  // The newest audit records; "Verify the chain" walks the whole chain on the server.
  async function loadAudit() {
    const response = await fetch("/dashboard/api/audit?limit=50", {credentials: "same-origin"});
    if (!response.ok) return;
    const data = await response.json();
    const body = document.getElementById("audit-body");
    body.replaceChildren(
      el("p", {class: "summary"}, `${data.head.seq} records · head ${data.head.hash.slice(0, 16)}…`),
      data.records.length ? table(["seq", "when", "actor", "action", "target", "reason"],
        data.records.map((r) => [r.seq, when(r.at), r.actor, r.action, r.target, r.reason || "–"]),
        "audit") : el("p", {class: "empty"}, "No audit records yet."));
  }

  async function verifyAudit() {
    const out = document.getElementById("audit-verify");
    out.textContent = "verifying…";
    const response = await fetch("/dashboard/api/audit/verify", {credentials: "same-origin"});
    const data = await response.json();
    out.replaceChildren(data.ok
      ? el("span", {class: "badge ok"}, `intact: ${data.checked} records`)
      : el("span", {class: "badge bad"}, `${data.problems.length} problem(s): ` +
          data.problems.map((p) => `#${p.seq} ${p.kind}`).join(", ")));
  }

  async function load() {
    const response = await fetch("/dashboard/api/overview", {credentials: "same-origin"});
    if (response.status === 401) { window.location.reload(); return; }
    const data = await response.json();
    document.getElementById("generated").textContent = `as of ${when(data.generated_at)}`;
    renderModels(data);
    renderRollouts(data);
    renderDrift(data);
    renderFleet(data);
    renderRuns(data);
    await loadAudit();
    document.body.dataset.loaded = "true";
  }

  if (document.getElementById("app")) {
    document.getElementById("verify-audit").addEventListener("click", () => verifyAudit().catch((err) => {
      document.getElementById("audit-verify").textContent = `Could not verify: ${err}`;
    }));
    load().catch((err) => {
      document.getElementById("models-body").textContent = `Could not load: ${err}`;
    });
    setInterval(() => load().catch(() => {}), 30000);
  } else if (new URLSearchParams(window.location.search).has("denied")) {
    document.getElementById("denied").hidden = false;
  }
})();
