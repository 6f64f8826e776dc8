"use strict";
const DATA = JSON.parse(document.getElementById("net-data").textContent);
const svg = document.querySelector("#graph svg");
const byName = new Map();  // layer index -> layer
DATA.layers.forEach((l, i) => byName.set(i, l));
const nodes = new Map();   // node id -> <g>
svg.querySelectorAll("g.node").forEach(g => nodes.set(g.id, g));

// --- pan / zoom / fit on the SVG's viewBox -------------------------------------------------
const full = svg.viewBox.baseVal;
const home = {x: full.x, y: full.y, w: full.width, h: full.height};
let view = {...home};
function apply() { svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`); }
function fit() { view = {...home}; apply(); }
// A big net starts at its first layers at 1:1 (readable), a small one fits the pane.
function start() {
  const r = svg.getBoundingClientRect();
  if (!r.width || !r.height || Math.max(home.w / r.width, home.h / r.height) <= 1.5) {
    fit();
    return;
  }
  const x = home.w < r.width ? home.x + home.w / 2 - r.width / 2 : home.x;
  const y = home.h < r.height ? home.y + home.h / 2 - r.height / 2 : home.y;
  view = {x, y, w: r.width, h: r.height};
  apply();
}
// Screen (client) coordinates -> viewBox coordinates, for the current view (xMidYMid meet).
function toUser(clientX, clientY) {
  const r = svg.getBoundingClientRect();
  const scale = Math.max(view.w / r.width, view.h / r.height);
  const x0 = view.x + view.w / 2 - (r.width / 2) * scale;
  const y0 = view.y + view.h / 2 - (r.height / 2) * scale;
  return {x: x0 + (clientX - r.left) * scale, y: y0 + (clientY - r.top) * scale, scale};
}
function svgPoint(ev) { return toUser(ev.clientX, ev.clientY); }
svg.addEventListener("wheel", ev => {
  ev.preventDefault();
  const p = svgPoint(ev), f = ev.deltaY < 0 ? 1 / 1.2 : 1.2;
  view = {x: p.x - (p.x - view.x) * f, y: p.y - (p.y - view.y) * f, w: view.w * f, h: view.h * f};
  apply();
}, {passive: false});
let drag = null;
const pane = document.getElementById("graph");
svg.addEventListener("mousedown", ev => { drag = {ev, view: {...view}, moved: false}; });
window.addEventListener("mousemove", ev => {
  if (!drag) return;
  const dx = ev.clientX - drag.ev.clientX, dy = ev.clientY - drag.ev.clientY;
  if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; pane.classList.add("dragging"); }
  const s = svgPoint(ev).scale;
  view = {...drag.view, x: drag.view.x - dx * s, y: drag.view.y - dy * s};
  apply();
});
window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0);
  pane.classList.remove("dragging"); });
function centreOn(g) {
  const b = g.getBoundingClientRect(), r = svg.getBoundingClientRect();
  const a = toUser(b.left, b.top), z = toUser(b.right, b.bottom);
  const w = Math.max(r.width, (z.x - a.x) * 1.5), h = w * (r.height / r.width);
  view = {x: (a.x + z.x) / 2 - w / 2, y: (a.y + z.y) / 2 - h / 2, w, h};
  apply();
}

// --- selection and the side panel ---------------------------------------------------------
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;"}[c]));
const side = document.getElementById("side");
function layerHtml(l) {
  const rows = [["type", `<span class="swatch" style="background:${l.colour}"></span>${esc(l.type)}`]];
  if (l.key) rows.push(["key", esc(l.key)]);
  rows.push(["bottoms", esc(l.bottoms.join(", ") || "-")]);
  rows.push(["tops", l.tops.map((t, j) => `${esc(t)} <b>${esc(l.top_shapes[j] || "?")}</b>`).join("<br>") || "-"]);
  rows.push(["params", l.params_text], ["MACs", l.macs_text], ["memory", l.memory_text]);
  let h = `<h2>${esc(l.name)}</h2><table>` + rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  if (l.param_text) h += `<h3>parameters</h3><pre class="explain">${esc(l.param_text)}</pre>`;
  if (l.source.length) {
    h += `<h3>source <span class="file">${esc(DATA.file)}</span></h3><pre class="source">` +
      l.source.map(([n, t]) => `<span class="ln">${n}</span>${esc(t)}`).join("\n") + "</pre>";
  }
  if (l.explain.length) h += `<h3>explain</h3><pre class="explain">${esc(l.explain.join("\n"))}</pre>`;
  if (l.weights.length) {
    h += "<h3>weights</h3><table><tr><td>blob</td><td>shape</td><td>mean</td><td>std</td><td>min</td><td>max</td></tr>" +
      l.weights.map(w => `<tr><td>${esc(w.name)}</td><td>${esc(w.shape)}</td><td>${w.mean}</td><td>${w.std}</td><td>${w.min}</td><td>${w.max}</td></tr>`).join("") + "</table>";
  }
  if (l.diagnostics.length) {
    h += "<h3>diagnostics</h3>" + l.diagnostics.map(d => `<div class="${d.severity}">${esc(d.severity)}: ${esc(d.message)}</div>`).join("");
  }
  return h;
}
let selected = null;
function select(index, centre) {
  const l = byName.get(index);
  if (!l) return;
  const node = l.node;
  if (selected) { const g = nodes.get(selected); if (g) g.classList.remove("selected"); }
  selected = node;
  const g = nodes.get(node);
  if (g) { g.classList.add("selected"); if (centre) centreOn(g); }
  const group = DATA.layers.map((x, i) => [x, i]).filter(([x]) => x.node === node);
  side.innerHTML = group.map(([x]) => layerHtml(x)).join("<hr>");
  side.dataset.layer = l.name;
  document.querySelectorAll("#layers tbody tr").forEach(tr =>
    tr.classList.toggle("selected", group.some(([, i]) => String(i) === tr.dataset.index)));
}
nodes.forEach((g, id) => g.addEventListener("click", () => {
  if (drag && drag.moved) return;
  const i = DATA.layers.findIndex(l => l.node === id);
  if (i >= 0) select(i, false);
}));

// --- the per-layer table, sortable ----------------------------------------------------------
const tbody = document.querySelector("#layers tbody");
DATA.layers.forEach((l, i) => {
  const tr = document.createElement("tr");
  tr.dataset.index = i;
  tr.innerHTML = `<td>${i + 1}</td><td>${esc(l.name)}</td><td><span class="swatch" style="background:${l.colour}"></span>${esc(l.type)}</td>` +
    `<td>${esc(l.top_shapes.join(", "))}</td><td class="num">${l.params_text}</td><td class="num">${l.macs_text}</td><td class="num">${l.memory_text}</td>`;
  tr.addEventListener("click", () => select(i, true));
  tbody.appendChild(tr);
});
const keys = [(l, i) => i, l => l.name.toLowerCase(), l => l.type, l => l.top_count, l => l.params, l => l.macs, l => l.memory];
document.querySelectorAll("#layers th").forEach((th, col) => th.addEventListener("click", () => {
  const desc = th.classList.contains("sorted-asc");
  document.querySelectorAll("#layers th").forEach(x => x.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(desc ? "sorted-desc" : "sorted-asc");
  const rows = [...tbody.rows];
  const key = r => keys[col](DATA.layers[+r.dataset.index], +r.dataset.index);
  rows.sort((a, b) => { const x = key(a), y = key(b); const c = x < y ? -1 : x > y ? 1 : 0; return desc ? -c : c; });
  rows.forEach(r => tbody.appendChild(r));
}));

// --- search ---------------------------------------------------------------------------------
const search = document.getElementById("search");
function runSearch() {
  const q = search.value.trim().toLowerCase();
  const hits = new Set();
  DATA.layers.forEach((l, i) => {
    const hit = q && (l.name.toLowerCase().includes(q) || l.type.toLowerCase().includes(q) ||
      l.tops.some(t => t.toLowerCase().includes(q)));
    if (hit) hits.add(l.node);
    const tr = tbody.querySelector(`tr[data-index="${i}"]`);
    if (tr) tr.style.display = !q || hit ? "" : "none";
  });
  nodes.forEach((g, id) => { g.classList.toggle("match", hits.has(id)); g.classList.toggle("dim", !!q && !hits.has(id)); });
  document.getElementById("hits").textContent = q ? `${hits.size} match${hits.size === 1 ? "" : "es"}` : "";
  return hits;
}
search.addEventListener("input", runSearch);
search.addEventListener("keydown", ev => {
  if (ev.key !== "Enter") return;
  runSearch();
  const q = search.value.trim().toLowerCase();
  const i = DATA.layers.findIndex(l => l.name.toLowerCase().includes(q) || l.type.toLowerCase().includes(q));
  if (i >= 0) select(i, true);
});
document.getElementById("fit").addEventListener("click", fit);
start();

// --- diagnostics ----------------------------------------------------------------------------
document.querySelectorAll("#diagnostics li[data-index]").forEach(li =>
  li.addEventListener("click", () => select(+li.dataset.index, true)));
