"""The head explorer's HTML: one self-contained page per model (data as inline JSON, small
hand-written JavaScript and CSS, nothing fetched) and the index page linking them.

Hand-written rather than circuitsvis: circuitsvis renders through a React bundle that its
Python package loads from a CDN (unpkg) unless a local build is set up, and it colours tokens
but has no grid, head picker or summary table; the page here needs none of that."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["FIELD_LABELS", "TASK_FIELD_LABELS", "explorer_html", "index_html"]

# What the summary table calls each number (analysis.explorer.SUMMARY_FIELDS).
FIELD_LABELS = {
    "mean_de_clean": "DE (clean direct effect), mean over all tokens",
    "mean_logit_diff": "Δlogit (ablated − clean), mean over all tokens",
    "mean_self_repair": "self-repair, mean over all tokens",
    "mean_sr_heads": "  of which later heads (sr_heads)",
    "mean_sr_mlps": "  of which MLPs (sr_mlps)",
    "mean_sr_ln": "  of which LayerNorm (sr_ln)",
    "top_de_clean": "DE, mean over top tokens",
    "top_logit_diff": "Δlogit, mean over top tokens",
    "top_self_repair": "self-repair, mean over top tokens",
    "top_sr_heads": "  of which later heads (sr_heads)",
    "top_sr_mlps": "  of which MLPs (sr_mlps)",
    "top_sr_ln": "  of which LayerNorm (sr_ln)",
    "top_ln_share": "LayerNorm share of DE (sr_ln / clean DE), top tokens",
    "top_ln_share_clipped": "LayerNorm share of DE, clipped to [0, 1], top tokens",
    "top_n_tokens": "top tokens (by clean DE)",
}
# A task page's summary (analysis.explorer.TASK_FIELDS): every scored token is an answer, so one
# set of means, over the answers; the metric's change as its drop, the task figures' sign.
TASK_FIELD_LABELS = {
    "mean_de_clean": "DE (clean direct effect on the metric), mean over the answers",
    "mean_metric_drop": "metric drop (clean − ablated), mean over the answers",
    "mean_self_repair": "self-repair, mean over the answers",
    "mean_sr_heads": "  of which later heads (sr_heads)",
    "mean_sr_mlps": "  of which MLPs (sr_mlps)",
    "mean_sr_ln": "  of which LayerNorm (sr_ln)",
    "top_ln_share": "LayerNorm share of DE (sr_ln / clean DE)",
    "top_ln_share_clipped": "LayerNorm share of DE, clipped to [0, 1]",
    "top_n_tokens": "answers",
}

CSS = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.2em}
#grid td{width:28px;height:22px;border:1px solid #fff;cursor:pointer;text-align:center;font-size:10px}
#grid td.sel{outline:2px solid #000}#grid th{font-weight:normal;font-size:11px;padding:0 4px}
#summary td,#repairers td{padding:1px 8px;white-space:pre}
#summary td.num,#repairers td.num{text-align:right;font-family:monospace}
.entry{margin:6px 0;padding:4px;border-bottom:1px solid #eee}
.meta{font-size:12px;color:#555}
.ctx{font-family:monospace;white-space:pre-wrap;line-height:1.7}
.tok{padding:1px 0;border-radius:2px}.tok.cur{outline:1px solid #000}
.next{background:#cfc;border:1px solid #393;padding:0 3px 3px;margin-left:6px}
.partner{font-size:12px;color:#555}.controls label{margin-right:1em}
#legend{font-size:12px;margin:6px 0}#legend span.sw{display:inline-block;width:60px;height:10px;
vertical-align:middle;margin:0 4px}#task{background:#f4f4f4;padding:4px 8px;font-size:13px}
"""

JS = r"""
const D = JSON.parse(document.getElementById('explorer-data').textContent);
const S = {ablation: D.ablations[0], stat: 'mean_self_repair', colour: 'de', head: null};
const $ = (id) => document.getElementById(id);
const fmt = (x) => x === null || x === undefined ? 'n/a' : Number.isInteger(x) && Math.abs(x) >= 10 ? String(x) : Number(x).toPrecision(4);
const fmt3 = (x) => x === null || x === undefined ? 'n/a' : Number(x).toPrecision(3);
const piece = (id) => D.vocab[String(id)];
function colour(x, scale) {
  if (x === null || !scale) return 'transparent';
  const a = Math.min(1, Math.abs(x) / scale);
  return x >= 0 ? `rgba(220,40,40,${a})` : `rgba(40,80,220,${a})`;
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function grid() {
  const values = D.grid[S.ablation][S.stat];
  const scale = Math.max(1e-12, ...values.flat().filter((x) => x !== null).map(Math.abs));
  const t = $('grid'); t.replaceChildren();
  const head = el('tr'); head.appendChild(el('th', {}, 'layer \\ head'));
  for (let h = 0; h < D.n_heads; h++) head.appendChild(el('th', {}, String(h)));
  t.appendChild(head);
  for (let l = 0; l < D.n_layers; l++) {
    const tr = el('tr'); tr.appendChild(el('th', {}, String(l)));
    for (let h = 0; h < D.n_heads; h++) {
      const x = values[l][h];
      const td = el('td', {id: `cell-${l}-${h}`, title: `L${l}H${h} ${S.stat}: ${fmt(x)}`});
      td.style.background = colour(x, scale);
      if (S.head === `${l}.${h}`) td.className = 'sel';
      td.onclick = () => { S.head = `${l}.${h}`; grid(); show(); };
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
}
function context(e, scale) {
  const div = el('div', {class: 'ctx'});
  e.ids.forEach((id, i) => {
    const w = e.window[S.colour][i];
    const span = el('span', {class: 'tok' + (i === e.ids.length - 1 ? ' cur' : ''),
      title: `pos ${e.start + i}: DE ${fmt3(e.window.de[i])}, self-repair ${fmt3(e.window.sr[i])}`}, piece(id));
    span.style.background = colour(w, scale);
    div.appendChild(span);
  });
  div.appendChild(el('span', {class: 'next', title: `correct next token, id ${e.next}`}, piece(e.next)));
  return div;
}
function entries(list, key, title) {
  const box = el('div', {id: `top-${key}`}); box.appendChild(el('h2', {}, title));
  if (!list.length) box.appendChild(el('p', {}, 'no tokens'));
  const scale = Math.max(1e-12, ...list.flatMap((e) => e.window[S.colour]).filter((x) => x !== null).map(Math.abs));
  list.forEach((e, i) => {
    const d = el('div', {class: 'entry', 'data-row': e.row, 'data-pos': e.pos});
    const change = 'drop' in e ? `metric drop (clean − ablated) ${fmt(e.drop)}` : `Δlogit (ablated − clean) ${fmt(e.dlogit)}`;
    d.appendChild(el('div', {class: 'meta'}, `#${i + 1} ${D.task ? 'prompt' : 'row'} ${e.row}, pos ${e.pos}: DE ${fmt(e.de)}, self-repair ${fmt(e.sr)}, ${change}`));
    d.appendChild(context(e, scale));
    if ('counter' in e) {
      const c = el('div', {class: 'partner counter'}, 'counterfactual answer: ');
      c.appendChild(el('span', {class: 'ctx'}, piece(e.counter)));
      d.appendChild(c);
    }
    if (e.partner) {
      const p = el('div', {class: 'partner'}, `${e.partner.label || 'resample partner row ' + e.partner.row}: `);
      p.appendChild(el('span', {class: 'ctx pctx'}, e.partner.ids.map(piece).join('')));
      p.appendChild(el('span', {class: 'next'}, piece(e.partner.next)));
      d.appendChild(p);
    }
    box.appendChild(d);
  });
  return box;
}
function show() {
  const out = $('head'); out.replaceChildren();
  if (!S.head) { out.appendChild(el('p', {}, 'Click a cell of the grid to see that head.')); return; }
  const [l, h] = S.head.split('.');
  out.appendChild(el('h2', {id: 'head-title'}, `L${l}H${h}, ${S.ablation} ablation`));
  const tokens = (D.heads[S.ablation] || {})[S.head];
  const nums = D.numbers[S.ablation][S.head];
  const t = el('table', {id: 'summary'});
  for (const [field, label] of Object.entries(D.labels)) {
    const n = nums[field]; const tr = el('tr', {'data-field': field});
    tr.appendChild(el('td', {}, label));
    tr.appendChild(el('td', {class: 'num value'}, fmt(n.value)));
    tr.appendChild(el('td', {class: 'num interval'}, 'lo' in n ? `[${fmt(n.lo)}, ${fmt(n.hi)}]` : ''));
    t.appendChild(tr);
  }
  out.appendChild(t);
  const rep = ((D.repairers || {})[S.ablation] || {})[S.head];
  if (rep) {
    out.appendChild(el('h2', {}, `Who repairs it: top repairers on its ${D.task ? 'answers' : 'top tokens'}`));
    const r = el('table', {id: 'repairers'});
    r.appendChild(el('tr', {}, '')).replaceChildren(el('th', {}, 'component'), el('th', {}, 'mean change of DE'), el('th', {}, 'share of its self-repair'));
    for (const x of rep) {
      const tr = el('tr', {'data-component': x.component});
      tr.append(el('td', {}, x.component), el('td', {class: 'num'}, fmt(x.top_dde)), el('td', {class: 'num'}, fmt(x.top_share)));
      r.appendChild(tr);
    }
    out.appendChild(r);
  }
  if (!tokens) { out.appendChild(el('p', {}, 'This head was not measured.')); return; }
  out.appendChild(entries(tokens.de, 'de', 'Top tokens by clean DE'));
  out.appendChild(entries(tokens.sr, 'sr', 'Top tokens by self-repair'));
}
if (D.task) {
  const t = $('task'); t.hidden = false;
  t.textContent = `Metric: ${D.task.metric}. ${D.task.clean}.` + (D.task.counterfactual ? ' Each answer shows its counterfactual.' : '');
  $('stat').options[1].remove();  // on a task the top tokens are all the answers: the same grid
  $('stat').options[0].textContent = 'mean self-repair over the answers';
}
for (const a of D.ablations) $('ablation').appendChild(el('option', {value: a}, a));
$('ablation').onchange = (e) => { S.ablation = e.target.value; grid(); show(); };
$('stat').onchange = (e) => { S.stat = e.target.value; grid(); };
$('colour').onchange = (e) => { S.colour = e.target.value; show(); };
grid(); show();
"""

BODY = """
<h1>Head explorer: {model}</h1>
<p class="meta">Grid: layers × heads coloured by self-repair (red positive, blue negative).
Click a head for its summary ({interval_note}) and its top {k} tokens by clean direct effect
(DE) and by self-repair, each after {context} tokens of context (the current token outlined,
the correct next token in green); tokens are coloured by the head's value at their position
(the prediction of the token after them); hover for the numbers. Tokens decoded with {tokenizer};
· is a space, ↵ a newline. Where the run measures who repairs whom (engine.attribution), a
head's top repairers follow its summary: the components whose direct effect grows the most on
its top tokens when it is ablated, and their share of its self-repair.</p>
<div class="controls">
<label>ablation <select id="ablation"></select></label>
<label>grid <select id="stat"><option value="mean_self_repair">mean self-repair</option>
<option value="top_self_repair">self-repair on top tokens</option></select></label>
<label>colour tokens by <select id="colour"><option value="de">DE</option>
<option value="sr">self-repair</option></select></label></div>
<p id="task" hidden></p>
<div id="legend">Colours (grid and tokens): <span class="sw"
style="background:linear-gradient(to right,rgba(40,80,220,1),rgba(40,80,220,0))"></span>negative
· 0 ·<span class="sw" style="background:linear-gradient(to right,rgba(220,40,40,0),rgba(220,40,40,1))">
</span>positive; the strongest colour is the largest |value| shown (grid: of the grid; tokens:
of the head's listed windows).</div>
<table id="grid"></table><div id="head"></div>
"""


# Inside <script> the HTML parser still looks for "</script" and "<!--" (which puts it in a state
# where "<script>" hides the real end tag), so no '<', '>' or '&' is written as such: JSON's own
# escapes, which JSON.parse turns back into the characters (a vocabulary piece may be anything).
SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' appears in it (SCRIPT_ESCAPES)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(SCRIPT_ESCAPES)


def explorer_html(data: dict[str, Any], labels: dict[str, str] = FIELD_LABELS) -> str:
    """One model's page from stages.explorer.explorer_data (with vocab and tokenizer), its
    summary rows `labels` (field -> label; a task page's: TASK_FIELD_LABELS)."""
    body = BODY.format(
        model=html.escape(data["model"]),
        interval_note="intervals: percentile bootstrap over tokens, where measured",
        k=data["tokens_per_head"],
        context=data["context"],
        tokenizer=html.escape(str(data.get("tokenizer", "the model's tokenizer"))),
    )
    payload = _script_json(dict(data, labels=labels))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Head explorer: {html.escape(data['model'])}</title><style>{CSS}</style>"
        f"</head><body>{body}"
        f'<script type="application/json" id="explorer-data">{payload}</script>'
        f"<script>{JS}</script></body></html>\n"
    )


def index_html(pages: Sequence[tuple[str, str, int]]) -> str:
    """The index page: (label, the page's path relative to the index, its size in bytes) per page."""
    items = "".join(
        f'<li><a href="{html.escape(name)}">{html.escape(model)}</a> ({size / 1e6:.2f} MB)</li>'
        for model, name, size in pages
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Head explorer</title><style>{CSS}</style></head><body>"
        "<h1>Head explorer</h1><p>One self-contained page per model (no network needed):</p>"
        f"<ul>{items}</ul></body></html>\n"
    )
