// Palisade live view: the graph and edge list from /ui/graph (refreshed), the violations
// table from /ui/violations then live from /tap?denied=true (Server-Sent Events), and the
// policies of a chosen edge from /ui/edge. Read-only; nothing leaves this origin.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_ROWS = 200;
let selected = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function edgeId(e) { return e.source + "->" + e.destination; }

function rate(x) { return (Math.round(x * 10) / 10).toString(); }

let lastGraph = "";

function drawGraph(graph) {
  // Redrawn only when something changed, and the keyboard focus survives a redraw.
  const text = JSON.stringify(graph);
  if (text === lastGraph) return;
  lastGraph = text;
  const focusedEdge = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.edge : undefined;
  const root = document.getElementById("graph");
  root.replaceChildren();
  const defs = svg("defs");
  for (const kind of ["allowed", "denied"]) {
    const marker = svg("marker", { id: "arrow-" + kind, viewBox: "0 0 10 10", refX: "32", refY: "5", markerWidth: "10", markerHeight: "10", markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: kind === "denied" ? "#cf222e" : "#1a7f37" }));
    defs.append(marker);
  }
  root.append(defs);
  // Workloads on a circle; callers that are not workloads (plaintext, other meshes) too.
  const ids = graph.nodes.map(n => n.id);
  for (const e of graph.edges) for (const id of [e.source, e.destination]) if (!ids.includes(id)) ids.push(id);
  const pos = {};
  const cx = 400, cy = 260, r = Math.min(210, 60 + ids.length * 25);
  ids.forEach((id, i) => {
    const a = (2 * Math.PI * i) / Math.max(ids.length, 1) - Math.PI / 2;
    pos[id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  for (const e of graph.edges) {
    const [x1, y1] = pos[e.source], [x2, y2] = pos[e.destination];
    const kind = e.denied ? "denied" : "allowed";
    const line = svg("line", { x1, y1, x2, y2, class: "edge " + kind + (selected === edgeId(e) ? " selected" : ""), "data-edge": edgeId(e), "marker-end": "url(#arrow-" + kind + ")" });
    line.append(svg("title", {}, edgeId(e) + ": " + rate(e.requests_per_second) + " req/s, " + rate(e.denied_per_second) + " denied/s"));
    line.addEventListener("click", () => choose(e));
    root.append(line);
    root.append(svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, class: "edge-label" }, rate(e.requests_per_second) + "/s" + (e.denied ? " (" + rate(e.denied_per_second) + " denied)" : "")));
  }
  for (const id of ids) {
    const [x, y] = pos[id];
    const g = svg("g", { class: "node", "data-node": id });
    g.append(svg("circle", { cx: x, cy: y, r: 22 }));
    g.append(svg("text", { x, y: y + 40 }, id));
    root.append(g);
  }
  const list = document.getElementById("edges");
  list.replaceChildren();
  for (const e of graph.edges) {
    const b = el("button", { type: "button", class: "edge-button " + (e.denied ? "denied" : "allowed"), "data-edge": edgeId(e), "aria-pressed": String(selected === edgeId(e)) },
      edgeId(e) + (e.denied ? " (denied)" : "") + " " + rate(e.requests_per_second) + "/s");
    b.addEventListener("click", () => choose(e));
    const li = el("li");
    li.append(b);
    list.append(li);
  }
  if (!graph.edges.length) list.append(el("li", {}, "No traffic observed yet."));
  fillWorkloads(graph.nodes.map(n => n.id));
  if (focusedEdge) {
    const again = list.querySelector('button[data-edge="' + CSS.escape(focusedEdge) + '"]');
    if (again) again.focus();
  }
}

async function refreshGraph() {
  try {
    const resp = await fetch("/ui/graph", { cache: "no-store" });
    if (resp.ok) drawGraph(await resp.json());
  } catch (_) { /* the next refresh retries */ }
}

async function choose(e) {
  selected = edgeId(e);
  lastGraph = "";
  const q = "source=" + encodeURIComponent(e.source) + "&destination=" + encodeURIComponent(e.destination);
  const resp = await fetch("/ui/edge?" + q, { cache: "no-store" });
  const section = document.getElementById("detail");
  const body = document.getElementById("detail-body");
  body.replaceChildren();
  if (!resp.ok) {
    body.append(el("p", {}, "No details: " + (await resp.text())));
  } else {
    const d = await resp.json();
    body.append(el("p", {}, d.source + " → " + d.destination));
    const ul = el("ul", { id: "detail-policies" });
    for (const p of d.policies) ul.append(el("li", { "data-policy": p.name }, p.kind + " " + p.name + " (" + p.action + (p.dry_run ? ", dry run" : "") + ")"));
    if (!d.policies.length) ul.append(el("li", {}, "No policy selects the destination: the mesh default applies."));
    body.append(el("h3", {}, "Policies that apply"), ul);
    body.append(el("h3", {}, "Last decision recorded, as the sidecar explained it"));
    body.append(el("p", { id: "detail-explain" }, d.last_decision ? d.last_decision.method + " " + d.last_decision.path + ": " + d.last_decision.explain : "None recorded."));
    body.append(el("h3", {}, "authz check, on the configuration served now"));
    body.append(checkResult(d.check, "detail-check"));
    body.append(el("h3", {}, "Check another request on this edge"), checkForm(d));
    const command = el("p");
    command.append(el("code", { id: "detail-command" }, d.check_command));
    body.append(el("h3", {}, "Or from a shell"), command);
  }
  section.hidden = false;
  document.getElementById("detail-title").focus?.();
  refreshGraph();
}

// authz check's answer: the decision line, then every layer as the CLI prints it.
function checkResult(c, id) {
  const box = el("div", { id, class: "check", role: "status", "aria-live": "polite" });
  if (c.error) {
    box.append(el("p", { class: "check-error" }, "Cannot check: " + c.error));
    return box;
  }
  box.append(el("p", { class: "check-decision " + c.decision.toLowerCase() }, c.decision + " " + c.request + " (" + c.policy + (c.rule === null ? "" : " rule " + c.rule) + ")"));
  box.append(el("pre", {}, c.lines.join("\n")));
  return box;
}

// Method, path and port for /ui/check; Enter in any field or the button runs it.
function checkForm(d) {
  const last = d.last_decision;
  const form = el("div", { class: "check-form", role: "group", "aria-label": "Check a request on this edge" });
  const field = (label, id, value, size) => {
    const input = el("input", { id, name: id, value: value || "", size: String(size), autocomplete: "off", spellcheck: "false" });
    const l = el("label", { for: id }, label + " ");
    l.append(input);
    form.append(l);
    return input;
  };
  const method = field("Method", "check-method", last && last.method, 8);
  const path = field("Path", "check-path", last && last.path, 32);
  const port = field("Port", "check-port", last ? last.destination.split(":").pop() : "", 6);
  const button = el("button", { type: "button", id: "check-run" }, "Check");
  form.append(button);
  const out = el("div", { id: "check-out" });
  form.append(out);
  const run = async () => {
    const q = new URLSearchParams({ source: d.source, destination: d.destination, method: method.value.trim(), path: path.value.trim(), port: port.value.trim() });
    const resp = await fetch("/ui/check?" + q, { cache: "no-store" });
    out.replaceChildren(resp.ok ? checkResult(await resp.json(), "check-answer") : el("p", { id: "check-answer", class: "check-error", role: "status" }, await resp.text()));
  };
  button.addEventListener("click", run);
  for (const input of [method, path, port]) input.addEventListener("keydown", ev => { if (ev.key === "Enter") run(); });
  return form;
}

// The workload picker of the suggestion view: refilled when the workloads change, keeping
// the choice.
function fillWorkloads(ids) {
  const select = document.getElementById("suggest-workload");
  const now = Array.from(select.options).map(o => o.value);
  if (JSON.stringify(now) === JSON.stringify(ids)) return;
  const chosen = select.value;
  select.replaceChildren(...ids.map(id => el("option", { value: id }, id)));
  if (ids.includes(chosen)) select.value = chosen;
}

// The suggestion for the chosen workload (YAML, as `palisade authz suggest --workload`
// prints it) and the observed traffic whose decision the served configuration changes.
async function suggest() {
  const workload = document.getElementById("suggest-workload").value;
  const out = document.getElementById("suggest-out");
  if (!workload) return;
  const q = new URLSearchParams({ workload });
  const [yaml, diff] = await Promise.all([
    fetch("/suggest?" + q, { cache: "no-store" }),
    fetch("/ui/diff?" + q, { cache: "no-store" }),
  ]);
  const parts = [el("h3", {}, "Suggested policies for " + workload)];
  parts.push(el("pre", { id: "suggestion", tabindex: "0" }, await yaml.text()));
  parts.push(el("h3", {}, "Observed traffic the served configuration decides differently now"));
  if (!diff.ok) {
    parts.push(el("p", { class: "check-error" }, await diff.text()));
  } else {
    const d = await diff.json();
    parts.push(el("p", { id: "diff-summary" }, d.replayed + " observed rows replayed, " + d.changes.length + " decided differently"));
    const table = el("table", { id: "diff" });
    const head = el("tr");
    for (const h of ["Source", "Request", "Requests", "Before", "Now"]) head.append(el("th", { scope: "col" }, h));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const c of d.changes) {
      const tr = el("tr", { class: c.allowed_after ? "" : "fresh" });
      for (const text of [c.source, c.request + " (port " + c.port + ")", String(c.requests),
        (c.allowed_before ? "ALLOW" : "DENY") + " by " + c.policy_before,
        (c.allowed_after ? "ALLOW" : "DENY") + " by " + c.policy_after]) tr.append(el("td", {}, text));
      table.tBodies[0].append(tr);
    }
    parts.push(table);
  }
  out.replaceChildren(...parts);
}

function addViolation(v, fresh) {
  const tbody = document.getElementById("violations");
  const tr = el("tr", { "data-path": v.path, class: fresh ? "fresh" : "" });
  const request = v.method ? v.method + " " + v.path : "connection " + v.destination;
  for (const text of [v.time, v.source_workload || v.source || "(plaintext)", v.reporter, request, v.decision.toUpperCase(), v.policy, v.rule < 0 ? "-" : String(v.rule)]) {
    tr.append(el("td", {}, text));
  }
  tbody.prepend(tr);
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
}

async function start() {
  document.getElementById("suggest-run").addEventListener("click", suggest);
  try {
    const resp = await fetch("/ui/violations", { cache: "no-store" });
    if (resp.ok) for (const v of await resp.json()) addViolation(v, false);
  } catch (_) { /* the live feed still fills the table */ }
  const status = document.getElementById("status");
  const feed = new EventSource("/tap?denied=true");
  feed.onopen = () => { status.textContent = "live"; };
  feed.onerror = () => { status.textContent = "reconnecting…"; };
  feed.onmessage = (m) => {
    try { addViolation(JSON.parse(m.data), true); } catch (_) { return; }
    refreshGraph();
  };
  refreshGraph();
  setInterval(refreshGraph, 2000);
}

document.addEventListener("DOMContentLoaded", start);
