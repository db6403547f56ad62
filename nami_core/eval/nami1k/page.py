"""The annotation page: one self-contained HTML file (markup, style and script; data as JSON inside).

`render_page(data)` fills the template with the page data produced by `annotate.page_data`:
{"page": id, "title": str, "dimensions": [...], "items": [{"key", "model", "id", "source",
"topic", "prompt", "src"}]}. The page shows one image at a time with its prompt and four 0-100
scores; everything an annotator enters is kept in the browser's localStorage under
"nami1k:<page id>" and survives reloads. "Export JSON" downloads
`nami1k-<annotator>.json`:
{"format": "nami1k-annotations/1", "page", "annotator", "exported_at", "dimensions",
"items": [{"key", "model", "id", "source", "topic", <dimension>: number or null, ...}]}.

Keys: Right arrow / Left arrow = next / previous image (outside text fields); Enter in a
score field = next image; 1-4 = jump to a score field; Up/Down in a score field = +/-1
(with Shift, +/-10).
"""

from __future__ import annotations

import html

from ...files import json_text

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
  header { display: flex; gap: 1rem; align-items: center; padding: .6rem 1rem; background: #fff; border-bottom: 1px solid #ddd; }
  header h1 { font-size: 1.1rem; margin: 0 1rem 0 0; }
  main { display: grid; grid-template-columns: minmax(0, 1fr) 22rem; gap: 1rem; padding: 1rem; }
  #figure { background: #fff; padding: .5rem; text-align: center; }
  #image { max-width: 100%; max-height: 78vh; }
  #prompt { background: #fff; padding: .6rem; margin-bottom: 1rem; white-space: pre-wrap; }
  .score { background: #fff; padding: .5rem .6rem; margin-bottom: .5rem; }
  .score label { display: flex; justify-content: space-between; font-weight: 600; }
  .score input[type=number] { width: 4.5rem; font-size: 1rem; }
  .score input[type=range] { width: 100%; }
  .score.missing { outline: 2px solid #e0a000; }
  nav button, #export { font-size: 1rem; padding: .3rem .8rem; }
  #status { font-size: .9rem; color: #555; }
  #help { font-size: .85rem; color: #555; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <label>Annotator <input id="annotator" type="text" autocomplete="off" placeholder="your name"></label>
  <span id="progress"></span>
  <button id="export" type="button">Export JSON</button>
  <span id="status" role="status"></span>
</header>
<main>
  <section id="figure"><img id="image" alt="generated image"></section>
  <aside>
    <div id="position"></div>
    <div id="prompt"></div>
    <div id="scores"></div>
    <nav><button id="prev" type="button">&larr; Previous</button> <button id="next" type="button">Next &rarr;</button></nav>
    <p id="help">Score each image from 0 to 100 on every dimension. Keys: &rarr; / &larr; next / previous image,
      Enter in a score field: next image, 1-4: go to a score field, &uarr; / &darr;: +/-1 (Shift: 10).
      Your scores are saved in this browser as you type.</p>
  </aside>
</main>
<script id="nami-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("nami-data").textContent);
const DIMENSIONS = DATA.dimensions;
const STORE = "nami1k:" + DATA.page;
let state = load();

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && typeof saved === "object" && saved.scores) return saved;
  } catch (err) { /* start afresh */ }
  return { annotator: "", index: 0, scores: {} };
}
function save() { localStorage.setItem(STORE, JSON.stringify(state)); }
function item() { return DATA.items[state.index]; }
function complete(key) {
  const s = state.scores[key];
  return !!s && DIMENSIONS.every(d => Number.isFinite(s[d]));
}
function clamp(value) { return Math.max(0, Math.min(100, Math.round(value))); }

function buildScores() {
  const box = document.getElementById("scores");
  DIMENSIONS.forEach((dim, i) => {
    const div = document.createElement("div");
    div.className = "score";
    div.id = "row-" + dim;
    div.innerHTML = '<label for="score-' + dim + '"><span>' + (i + 1) + ". " + dim + '</span>' +
      '<input type="number" min="0" max="100" step="1" id="score-' + dim + '" data-dim="' + dim + '"></label>' +
      '<input type="range" min="0" max="100" step="1" id="slider-' + dim + '" data-dim="' + dim + '" tabindex="-1">';
    box.appendChild(div);
  });
  box.addEventListener("input", event => {
    const dim = event.target.dataset.dim;
    if (!dim) return;
    const text = event.target.value;
    setScore(dim, text === "" ? null : clamp(Number(text)), event.target);
  });
}
function setScore(dim, value, source) {
  const key = item().key;
  const s = state.scores[key] || (state.scores[key] = {});
  if (value === null || !Number.isFinite(value)) delete s[dim]; else s[dim] = value;
  const number = document.getElementById("score-" + dim);
  const slider = document.getElementById("slider-" + dim);
  if (source !== number) number.value = value === null ? "" : value;
  if (source !== slider) slider.value = value === null ? 50 : value;
  document.getElementById("row-" + dim).classList.toggle("missing", value === null);
  save();
  showProgress();
}
function showProgress() {
  const done = DATA.items.filter(it => complete(it.key)).length;
  document.getElementById("progress").textContent = done + " / " + DATA.items.length + " scored";
}
function show(index) {
  state.index = Math.max(0, Math.min(DATA.items.length - 1, index));
  const it = item();
  document.getElementById("image").src = it.src;
  document.getElementById("prompt").textContent = it.prompt;
  document.getElementById("position").textContent = "Image " + (state.index + 1) + " of " + DATA.items.length;
  const s = state.scores[it.key] || {};
  DIMENSIONS.forEach(dim => {
    const value = Number.isFinite(s[dim]) ? s[dim] : null;
    document.getElementById("score-" + dim).value = value === null ? "" : value;
    document.getElementById("slider-" + dim).value = value === null ? 50 : value;
    document.getElementById("row-" + dim).classList.toggle("missing", value === null);
  });
  save();
  showProgress();
}
function move(step) {
  show(state.index + step);
  document.getElementById("score-" + DIMENSIONS[0]).focus();
}
function exportJson() {
  const status = document.getElementById("status");
  const name = state.annotator.trim();
  if (!name) { status.textContent = "Enter your name before exporting."; document.getElementById("annotator").focus(); return; }
  const items = DATA.items.map(it => {
    const s = state.scores[it.key] || {};
    const row = { key: it.key, model: it.model, id: it.id, source: it.source, topic: it.topic };
    DIMENSIONS.forEach(d => { row[d] = Number.isFinite(s[d]) ? s[d] : null; });
    return row;
  });
  const out = { format: "nami1k-annotations/1", page: DATA.page, annotator: name,
                exported_at: new Date().toISOString(), dimensions: DIMENSIONS, items: items };
  const blob = new Blob([JSON.stringify(out, null, 1)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "nami1k-" + name.replace(/[^A-Za-z0-9_.-]+/g, "_") + ".json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  status.textContent = "Exported " + items.filter(r => DIMENSIONS.every(d => r[d] !== null)).length + " scored images.";
}

document.addEventListener("keydown", event => {
  const target = event.target;
  const inScore = target.dataset && target.dataset.dim && target.type === "number";
  const inText = target.id === "annotator";
  if (inScore && event.key === "Enter") { event.preventDefault(); move(event.shiftKey ? -1 : 1); return; }
  if (inScore && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    event.preventDefault();
    const dim = target.dataset.dim;
    const current = Number.isFinite((state.scores[item().key] || {})[dim]) ? state.scores[item().key][dim] : 50;
    const delta = (event.key === "ArrowUp" ? 1 : -1) * (event.shiftKey ? 10 : 1);
    setScore(dim, clamp(current + delta), null);
    return;
  }
  if (inText || inScore) return;
  if (event.key === "ArrowRight") { event.preventDefault(); move(1); }
  else if (event.key === "ArrowLeft") { event.preventDefault(); move(-1); }
  else if (/^[1-9]$/.test(event.key) && Number(event.key) <= DIMENSIONS.length) {
    event.preventDefault();
    document.getElementById("score-" + DIMENSIONS[Number(event.key) - 1]).focus();
  }
});
document.getElementById("annotator").addEventListener("input", event => { state.annotator = event.target.value; save(); });
document.getElementById("prev").addEventListener("click", () => move(-1));
document.getElementById("next").addEventListener("click", () => move(1));
document.getElementById("export").addEventListener("click", exportJson);

buildScores();
document.getElementById("annotator").value = state.annotator;
show(state.index || 0);
</script>
</body>
</html>
"""


def render_page(data: dict) -> str:
    """The page's HTML for `data` (see the module docstring); the JSON is escaped for a <script> block."""
    payload = json_text(data).replace("</", "<\\/")
    return TEMPLATE.replace("__TITLE__", html.escape(str(data.get("title", "NAMI-1K annotation")))).replace(
        "__DATA__", payload)
