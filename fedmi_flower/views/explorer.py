"""``fedmi view``: one self-contained HTML page to explore a run round by round.

A round slider and client, class and layer selectors drive four Plotly charts: every
IoU view over rounds with its noise floor and chance level, the cross-evaluation
heatmap (sufficiency, with specificity and faithfulness on hover), the circuit of a
client beside the global model's circuit of the same class (channels of each layer as
dots: shared, the client's only, the global model's only), and circuit sizes over
rounds; a table gives the round's numbers and degenerate verdicts. Plotly's JavaScript
is inlined, so the page works offline and can be mailed. The page's data are the
run's round records as ``rounds.jsonl`` spells them (its script reads the record's
keys), and each IoU view's series: :func:`explorer_data` is what it shows.

No Flower imports here.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmi_flower.config import make_model
from fedmi_flower.records.results import json_safe
from fedmi_flower.records.round_record import View
from fedmi_flower.records.series import Run, RunError
from fedmi_flower.science.hook_points import site_sizes

VIEWS = (
    (View.INTER_CLIENT_IOU, "inter-client IoU"),
    (View.LOCAL_GLOBAL_IOU, "local-global IoU"),
    (View.STABILITY, "intra-client stability"),
    (View.CLASS_PAIR_IOU, "class-pair IoU"),
)
"""The IoU views the page draws, with their labels."""


def explorer_data(run: Run) -> dict[str, Any]:
    """Everything the page shows: the round records as ``rounds.jsonl`` spells them, and each IoU view over rounds."""
    records = run.records
    views = {
        str(view): {
            "label": label,
            "value": [json_safe(r.summary.view(view).mean) for r in records],
            "floor": [json_safe(r.summary.view(view).floor) for r in records],
            "chance": [json_safe(r.summary.view(view).chance) for r in records],
        }
        for view, label in VIEWS
    }
    clients = sorted({pid for r in records for pid in r.clients})
    classes = sorted({c for r in records for c in r.classes} | {c for r in records for c in r.global_model.circuits})
    sizes = site_sizes(make_model(run.config))  # the run's own model, rebuilt from its saved config
    return {
        "name": run.name,
        "rounds": [r.round for r in records],
        "clients": [str(p) for p in clients],
        "classes": [str(c) for c in classes],
        "layers": list(sizes),
        "layer_sizes": sizes,
        "views": views,
        "records": [json_safe(r.to_json()) for r in records],
    }


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
.controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; margin: .5em 0 1em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.chart { height: 360px; border: 1px solid #ddd; }
table { border-collapse: collapse; margin-top: .5em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
.note { color: #555; font-size: 90%; }
</style>
<script>__PLOTLY__</script>
</head><body>
<h1>__TITLE__</h1>
<p class="note">__DESCRIPTION__</p>
<div class="controls">
  <label>round <input id="round" type="range" min="0" value="0" step="1"> <b id="round-label"></b></label>
  <label>client <select id="client"></select></label>
  <label>class <select id="class"></select></label>
  <label>layer <select id="layer"></select></label>
</div>
<table id="numbers"><tr>
  <th>global accuracy</th><th>inter-client IoU</th><th>local-global IoU</th><th>stability</th>
  <th>cross-eval suff / spec / faith</th><th>preserved</th><th>degenerate (local, global)</th></tr>
<tr><td id="acc"></td><td id="inter"></td><td id="lg"></td><td id="stab"></td><td id="cross"></td>
  <td id="preserved"></td><td id="degenerate"></td></tr></table>
<table id="robustness"><tr>
  <th>attribution: preserved, collapsed after working</th><th>methods' IoU (chance)</th>
  <th>verdicts another ablation changes</th><th>CKA (baselines)</th><th>stitched: working, no client working</th></tr>
<tr><td id="attribution"></td><td id="method-iou"></td><td id="ablations"></td><td id="cka"></td>
  <td id="stitched"></td></tr></table>
<p id="verdicts" class="note"></p>
<div class="grid">
  <div id="iou" class="chart"></div>
  <div id="heatmap" class="chart"></div>
  <div id="circuit" class="chart"></div>
  <div id="sizes" class="chart"></div>
</div>
<p class="note">Dashed: each view's noise floor (the same model's circuit found twice); dotted: its chance level
(random circuits of the same sizes). Heatmap: each client's circuit of each class run on the global weights of
the round (cross-evaluation); colour is sufficiency, hover shows specificity and faithfulness.</p>
<script>
const DATA = __DATA__;
const $ = (id) => document.getElementById(id);
const chartTitle = (text) => ({ text, x: 0.01, xanchor: "left" });  // clear of the toolbar
const fmt = (v, d = 3) => (v === null || v === undefined) ? "null" : Number(v).toFixed(d);
// A view's mean: schema 4 groups each IoU view's numbers in an object, earlier schemas wrote the mean itself.
const meanOf = (v) => (v !== null && typeof v === "object") ? v.mean : v;
function fill(select, values) {
  select.innerHTML = values.map((v) => `<option value="${v}">${v}</option>`).join("");
}
function state() {
  return { t: Number($("round").value), client: $("client").value, cls: $("class").value, layer: $("layer").value };
}
// A round whose analysis did not run has no summary, global model or clients in its record.
const at = (t) => { const r = DATA.records[t];
  return { ...r, summary: r.summary || {}, global: r.global || { circuits: {}, degenerate: {} },
           clients: r.clients || {}, cross_eval: r.cross_eval || {} }; };
function drawNumbers(s) {
  const r = at(s.t), m = r.summary;
  $("round-label").textContent = `${r.round} of ${DATA.rounds[DATA.rounds.length - 1]}` +
    (r.analysis_error ? " (not analysed)" : "");
  $("acc").textContent = fmt(r.global.accuracy);
  $("inter").textContent = fmt(meanOf(m.inter_client_iou), 2);
  $("lg").textContent = fmt(meanOf(m.local_global_iou), 2);
  $("stab").textContent = fmt(meanOf(m.stability), 2);
  $("cross").textContent = `${fmt(m.cross_sufficiency, 2)} / ${fmt(m.cross_specificity, 2)} / ` +
    fmt(m.cross_faithfulness, 2);
  $("preserved").textContent = r.analysis_error ? "null" : `${m.cross_preserved}/${m.cross_working_locally}`;
  $("degenerate").textContent = r.analysis_error ? "null" : `${m.degenerate_local}, ${m.degenerate_global}`;
  // The robustness sections (issue 27): null where the run did not measure them.
  const method = r.second_method, ablations = r.ablation_verdicts;
  $("attribution").textContent = method ? `${m.attribution_preserved}, ${m.attribution_collapsed_after_working}` +
    ` of ${m.attribution_working_locally}` : "null";
  $("method-iou").textContent = method ?
    `${fmt(m.method_client_iou, 2)} (${fmt(m.method_client_iou_chance, 2)})` : "null";
  $("ablations").textContent = ablations ? `${m.ablation_verdicts_changed} of ${m.ablation_verdicts_compared}` : "null";
  $("cka").textContent = r.cka && Object.keys(r.cka).length ?
    `${fmt(m.cka, 2)} (never-trained ${fmt(m.cka_untrained, 2)}, unpaired ${fmt(m.cka_chance, 2)})` : "null";
  $("stitched").textContent = r.stitched && Object.keys(r.stitched).length ?
    `${m.stitched_working}, ${m.stitched_working_no_client} of ${m.stitched_classes}` : "null";
  const c = r.clients[s.client] || {};
  const local = (c.degenerate || {})[s.cls], glob = (r.global.degenerate || {})[s.cls];
  $("verdicts").textContent = `class ${s.cls}: client ${s.client}'s circuit ` +
    (local ? `degenerate (${local})` : "not degenerate") + "; the global model's " +
    (glob ? `degenerate (${glob})` : "not degenerate") + ".";
}
function drawIoU(s) {
  const x = DATA.rounds, traces = [], colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
  Object.values(DATA.views).forEach((v, i) => {
    traces.push({ x, y: v.value, name: v.label, mode: "lines+markers", line: { color: colours[i] } });
    traces.push({ x, y: v.floor, name: `${v.label}: floor`, mode: "lines", line: { color: colours[i], dash: "dash" },
                  showlegend: false });
    traces.push({ x, y: v.chance, name: `${v.label}: chance`, mode: "lines",
                  line: { color: colours[i], dash: "dot" }, showlegend: false });
  });
  const t = DATA.rounds[s.t];
  Plotly.react("iou", traces, { title: chartTitle("IoU views over rounds"), margin: { t: 40, r: 10 },
    yaxis: { range: [-0.02, 1.05], title: { text: "IoU" } }, xaxis: { title: { text: "round" }, dtick: 1 },
    shapes: [{ type: "line", x0: t, x1: t, y0: 0, y1: 1, yref: "paper", line: { color: "#999", width: 1 } }],
    legend: { orientation: "h", y: -0.25 } }, { displaylogo: false, responsive: true });
}
function drawHeatmap(s) {
  const r = at(s.t);
  const z = [], text = [];
  DATA.clients.forEach((p) => {
    const row = [], hover = [], cross = r.cross_eval[p] || {};
    DATA.classes.forEach((c) => {
      const e = cross[c];
      row.push(e ? e.sufficiency : null);
      const other = ((r.second_method || {}).clients || {})[p] || {};
      const attributed = other[c] ? `<br>attribution circuit: ${other[c].global_verdict}` +
        ` (own model: ${other[c].own_verdict})` : "";
      hover.push(e ? `sufficiency ${fmt(e.sufficiency, 2)}<br>specificity ${fmt(e.specificity, 2)}<br>` +
        `faithfulness ${fmt(e.faithfulness, 2)}<br>${e.verdict} (own model: ${e.local_verdict})` + attributed :
        "not held");
    });
    z.push(row); text.push(hover);
  });
  Plotly.react("heatmap", [{ type: "heatmap", z, x: DATA.classes.map((c) => `class ${c}`),
    y: DATA.clients.map((p) => `client ${p}`), text, hoverinfo: "text", zmin: 0, zmax: 1,
    colorscale: "Viridis", colorbar: { title: { text: "suff." } } }],
    { title: chartTitle(`Cross-evaluation, round ${r.round}`), margin: { t: 40 } },
    { displaylogo: false, responsive: true });
}
function drawCircuit(s) {
  const r = at(s.t);
  const local = ((r.clients[s.client] || { circuits: {} }).circuits[s.cls] || {});
  const glob = r.global.circuits[s.cls] || {};
  const groups = { both: [[], []], client: [[], []], global: [[], []], neither: [[], []] };
  DATA.layers.forEach((layer, i) => {
    const a = new Set(local[layer] || []), b = new Set(glob[layer] || []);
    for (let ch = 0; ch < DATA.layer_sizes[layer]; ch++) {
      const key = a.has(ch) && b.has(ch) ? "both" : a.has(ch) ? "client" : b.has(ch) ? "global" : "neither";
      groups[key][0].push(i); groups[key][1].push(ch);
    }
  });
  const style = { both: ["#7b3294", 6, `in both`], client: ["#2b83ba", 6, `client ${s.client} only`],
    global: ["#fdae61", 6, "global only"], neither: ["#dddddd", 3, "in neither"] };
  const traces = Object.entries(groups).map(([k, [x, y]]) => ({ x, y, mode: "markers", type: "scatter",
    name: style[k][2], marker: { color: style[k][0], size: style[k][1] } }));
  Plotly.react("circuit", traces, { title: chartTitle(`Class ${s.cls}: client ${s.client} vs global, round ${r.round}`),
    xaxis: { tickvals: [0, 1, 2], ticktext: DATA.layers, range: [-0.5, 2.5] },
    yaxis: { title: { text: "channel" } }, margin: { t: 40 }, legend: { orientation: "h", y: -0.15 } },
    { displaylogo: false, responsive: true });
}
function drawSizes(s) {
  const x = DATA.rounds, count = (circuit) => circuit ? DATA.layers.reduce(
    (n, l) => n + (s.layer === "all" || s.layer === l ? (circuit[l] || []).length : 0), 0) : null;
  const traces = DATA.clients.map((p) => ({ x, name: `client ${p}`, mode: "lines+markers",
    y: DATA.rounds.map((_, t) => count(((at(t).clients[p] || { circuits: {} }).circuits)[s.cls])) }));
  traces.push({ x, name: "global", mode: "lines+markers", line: { color: "#000", width: 3 },
    y: DATA.rounds.map((_, t) => count(at(t).global.circuits[s.cls])) });
  Plotly.react("sizes", traces, { title: chartTitle(`Circuit size of class ${s.cls}, ${s.layer === "all" ?
    "all layers" : s.layer} (channels)`), xaxis: { title: { text: "round" }, dtick: 1 }, margin: { t: 40 } },
    { displaylogo: false, responsive: true });
}
function draw() {
  const s = state();
  drawNumbers(s); drawIoU(s); drawHeatmap(s); drawCircuit(s); drawSizes(s);
}
$("round").max = DATA.rounds.length - 1;
$("round").value = DATA.rounds.length - 1;
fill($("client"), DATA.clients);
fill($("class"), DATA.classes);
fill($("layer"), ["all", ...DATA.layers]);
["round", "client", "class", "layer"].forEach((id) => $(id).addEventListener("input", draw));
["client", "class", "layer"].forEach((id) => $(id).addEventListener("change", draw));
draw();
</script>
</body></html>
"""


def explorer_html(run: Run) -> str:
    """The page for ``run``, Plotly's JavaScript inlined."""
    from plotly.offline import get_plotlyjs  # the page's only dependency, loaded only here

    # Inside <script>, "<", ">" and "&" in the data (a client's error text, say) must not read as markup.
    data = json.dumps(explorer_data(run), allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fields = {
        "__PLOTLY__": get_plotlyjs(),
        "__TITLE__": html.escape(f"fedmi view: {run.name}"),
        "__DESCRIPTION__": html.escape(run.config.description or ""),
        "__DATA__": data,
    }
    # One pass: a value that happens to contain another placeholder is not substituted again.
    return re.sub("|".join(fields), lambda m: fields[m.group(0)], PAGE)


def write_explorer(runs: Sequence[Run], out: Path) -> list[Path]:
    """One page per run: ``out`` itself for one run given a ``.html`` path, else ``out/<run name>.html``."""
    if out.suffix.lower() == ".html" and len(runs) > 1:
        raise RunError(f"--out {out} names one page, but there are {len(runs)} runs; give a folder for their pages")
    targets = [out] if out.suffix.lower() == ".html" else [out / f"{run.name}.html" for run in runs]
    for run, target in zip(runs, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(explorer_html(run), encoding="utf-8")
    return targets
