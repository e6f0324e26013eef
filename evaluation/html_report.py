"""`report.html`: one self-contained file (no CDN, no network) per run or comparison.

Layout, in document order (so the charts paint before the bulk of the file is parsed):
1. the paper-style table and three inline SVG charts drawn here in Python: accuracy per
   set (one bar per run), accuracy vs tokens per question (one point per run and set),
   and the outcome of every step per set (valid / parse error / execution error / the
   final-answer call after max steps), as 100% stacked bars;
2. the question index, one small JSON document (`<script type="application/json"
   id="index">`), and the browser's script: filters by run, set, outcome, correct/wrong
   and text; a list (rendered 200 rows at a time); `#q=<run>:<question id>` opens a
   question;
3. one JSON blob per question (`<script type="application/json" id="t<k>">`) holding its
   trajectory (every step's candidates, the kept one, code, observation, tool calls;
   the per-step request transcripts are left out, they repeat the steps), parsed only
   when that question is opened, so thousands of questions stay fast.
JSON inside the page has every `<` written `\\u003c`, so no text can end a script early.
`document.documentElement.dataset.firstChartMs` records when the charts were parsed and
`data-first-chart-painted-ms` the next animation frame after them (the benchmark reads it).
"""

# ruff: noqa: E501 - the page's CSS and JavaScript are kept as written
from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.metrics import outcome_of
from evaluation.results import Run, describe_run, paper_table

__all__ = [
    "PALETTE",
    "bar_chart",
    "md_table_html",
    "render_html", "scatter_chart", "stacked_chart", "write_html"]

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f", "#bab0ac"]
OUTCOME_COLORS = [
    ("valid", "#59a14f"),
    ("parse error", "#edc948"),
    ("execution error", "#e15759"),
    ("max steps", "#b07aa1"),
]


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


try:  # a faster encoder for big reports when it is installed; the standard library otherwise
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj, default=str).decode()
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(obj: Any) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def _json(obj: Any) -> str:
    return _dumps(obj).replace("<", "\\u003c")


# --------------------------------------------------------------------------- charts


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    title: str,
    width: int = 640,
    height: int = 260,
) -> str:
    """Grouped bars of fractions (0-1) per group; one series per run."""
    left, right, top, bottom = 40, 10, 28, 46
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg class="chart" data-chart="accuracy" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" class="ct">{_e(title)}</text>',
    ]
    for i in range(0, 5):
        y = top + ph - ph * i / 4
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" text-anchor="end">{25 * i}%</text>'
        )
    gw = pw / max(1, len(groups))
    bw = min(28.0, (gw - 8) / max(1, len(series)))
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + (gw - bw * len(series)) / 2
        for si, (name, color, values) in enumerate(series):
            v = values[gi]
            if v is None:
                continue
            h = ph * max(0.0, min(1.0, v))
            x, y = x0 + si * bw, top + ph - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{color}"><title>{_e(name)} - {_e(g)}: '
                f"{100 * v:.1f}%</title></rect>"
            )
            if len(series) <= 3:
                parts.append(
                    f'<text x="{x + (bw - 2) / 2:.1f}" y="{y - 3:.1f}" class="val" '
                    f'text-anchor="middle">{100 * v:.0f}</text>'
                )
        parts.append(
            f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 16}" class="ax" '
            f'text-anchor="middle">{_e(g)}</text>'
        )
    parts.append(_legend([(n, c) for n, c, _ in series], left, height - 12))
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for name, color in items:
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}" class="ax">{_e(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return "".join(out)


def scatter_chart(
    points: Sequence[tuple[float, float, str, str]],
    *,
    title: str,
    legend: Sequence[tuple[str, str]] = (),
    width: int = 640,
    height: int = 260,
) -> str:
    """(x = tokens per question, y = accuracy 0-1, label, color) points."""
    left, right, top, bottom = 48, 16, 28, 46
    pw, ph = width - left - right, height - top - bottom
    xmax = max([p[0] for p in points] + [1.0]) * 1.1
    parts = [
        f'<svg class="chart" data-chart="tokens" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" class="ct">{_e(title)}</text>',
    ]
    for i in range(0, 5):
        y = top + ph - ph * i / 4
        x = left + pw * i / 4
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" text-anchor="end">{25 * i}%</text>'
            f'<text x="{x:.1f}" y="{top + ph + 14}" class="ax" text-anchor="middle">'
            f"{xmax * i / 4:,.0f}</text>"
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{top + ph + 28}" class="ax" text-anchor="middle">'
        "tokens per question (prompt + completion)</text>"
    )
    placed: list[tuple[float, float, float]] = []  # label boxes (x0, x1, y) already drawn
    for x, y, label, color in points:
        cx, cy = left + pw * x / xmax, top + ph - ph * max(0.0, min(1.0, y))
        text = label.split(" - ")[-1]
        x0, x1, ty = cx + 7, cx + 7 + 7.5 * len(text), cy + 4
        while any(a < x1 and x0 < b and abs(ty - py) < 12 for a, b, py in placed):
            ty -= 12  # stack labels that would overlap
        placed.append((x0, x1, ty))
        parts.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}">'
            f"<title>{_e(label)}: {100 * y:.1f}% at {x:,.0f} tokens</title></circle>"
            f'<text x="{x0:.1f}" y="{ty:.1f}" class="ax">{_e(text)}</text>'
        )
    if legend:
        parts.append(_legend(legend, left, height - 4))
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(
    groups: Sequence[str],
    counts: Sequence[Sequence[int]],
    *,
    title: str,
    categories: Sequence[tuple[str, str]] = OUTCOME_COLORS,
    width: int = 640,
) -> str:
    """100% stacked horizontal bars: one per group, one segment per category."""
    left = int(min(460, max(120, 12 + 6.6 * max((len(g) for g in groups), default=0))))
    right, top, rowh = 50, 28, 22
    height = top + rowh * len(groups) + 30
    width = max(width, left + right + 420)
    pw = width - left - right
    parts = [
        f'<svg class="chart" data-chart="steps" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f'<text x="10" y="16" class="ct">{_e(title)}</text>',
    ]
    for gi, (g, row) in enumerate(zip(groups, counts, strict=True)):
        y = top + gi * rowh
        total = sum(row)
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" class="ax" text-anchor="end">{_e(g)}</text>'
        )
        x = float(left)
        for (name, color), c in zip(categories, row, strict=True):
            if not total or not c:
                continue
            w = pw * c / total
            parts.append(
                f'<rect class="seg" x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{rowh - 6}" '
                f'fill="{color}"><title>{_e(g)} - {_e(name)}: {c} of {total} steps '
                f"({100 * c / total:.1f}%)</title></rect>"
            )
            x += w
        parts.append(
            f'<text x="{left + pw + 4}" y="{y + 14}" class="ax">{total}</text>'
        )
    parts.append(_legend(categories, 10, height - 8))
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- data


def _short(x: Any, n: int = 160) -> str:
    s = "" if x is None else (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False))
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _blob(rec: Mapping[str, Any]) -> dict[str, Any]:
    """What the browser shows of one record (request transcripts left out)."""
    traj = rec.get("trajectory") or None
    steps = []
    if traj:
        for s in traj.get("steps") or []:
            step = {k: v for k, v in s.items() if k != "request"}
            # a parsed candidate's text is its thought and code again: keep it only when
            # it did not parse (then the text is what the model wrote)
            cands = []
            for c in s.get("candidates") or []:
                c2 = {k: v for k, v in c.items() if k != "text" or c.get("parse_error")
                      or (c.get("thought") is None and c.get("code") is None)}
                if c2.get("execution"):  # copies: _intern replaces strings in place
                    ex = c2["execution"] = dict(c2["execution"])
                    ex["tool_calls"] = [dict(t) for t in ex.get("tool_calls") or []]
                cands.append(c2)
            step["candidates"] = cands
            steps.append(step)
    cot = rec.get("cot") or None
    return {
        "id": rec.get("id"),
        "question": rec.get("question"),
        "gold": rec.get("gold"),
        "prediction": rec.get("prediction"),
        "status": rec.get("status"),
        "error": rec.get("error"),
        "grade": rec.get("grade"),
        "finish_reason": (traj or {}).get("finish_reason"),
        "steps": steps,
        "cot": {"text": cot.get("text"), "prefix": cot.get("prefix")} if cot else None,
        "usage": rec.get("usage"),
        "elapsed_s": rec.get("elapsed_s"),
    }


_LONG = 200


def _intern(blob: dict[str, Any]) -> dict[str, Any]:
    """Long stdout, tool results and observations that occur more than once (SAG candidates
    repeat them) go once into a table `$s`; each place holds `{"$s": k}` instead."""
    first: dict[str, tuple[Any, Any]] = {}
    index: dict[str, int] = {}
    table: list[str] = []

    def visit(container: Any, key: Any) -> None:
        x = container[key]
        if not isinstance(x, str) or len(x) < _LONG:
            return
        k = index.get(x)
        if k is None:
            where = first.get(x)
            if where is None:
                first[x] = (container, key)
                return
            k = index[x] = len(table)
            table.append(x)
            where[0][where[1]] = {"$s": k}
        container[key] = {"$s": k}

    for step in blob["steps"]:
        visit(step, "observation")
        for c in step.get("candidates") or []:
            ex = c.get("execution")
            if not ex:
                continue
            visit(ex, "stdout")
            for call in ex.get("tool_calls") or []:
                visit(call, "result")
    if table:
        blob["$s"] = table
    return blob


def _step_counts(rows_recs: Sequence[Mapping[str, Any]]) -> list[int]:
    counts = [0, 0, 0, 0]
    for rec in rows_recs:
        traj = rec.get("trajectory") or {}
        for s in traj.get("steps") or []:
            if s.get("kind", "action") != "action":
                if traj.get("finish_reason") == "max_steps":
                    counts[3] += 1
                continue
            counts[("valid", "parse_error", "execution_error").index(outcome_of(s))] += 1
    return counts


# --------------------------------------------------------------------------- page


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1e0;font-size:13px}
main{padding:16px 24px;max-width:1400px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #e8ebf0;
text-align:right;white-space:nowrap}th:first-child,td:first-child{text-align:left}
th{background:#f0f2f6}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff}.chart .ct{font-weight:600;font-size:13px}.chart .ax{font-size:11px;fill:#4a5365}
.chart .val{font-size:10px;fill:#1d2330}.chart .grid{stroke:#e8ebf0}
#filters{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:8px;align-items:center}
#filters select,#filters input{font:inherit;padding:3px 6px}
#browser{display:grid;grid-template-columns:minmax(320px,40%) 1fr;gap:12px;align-items:start}
#list{max-height:80vh;overflow:auto;border:1px solid #e8ebf0}
#list table{width:100%}#list td{text-align:left;white-space:normal;cursor:pointer}
#list tr:hover td{background:#eef3fb}#list tr.sel td{background:#dbe7fb}
.ok{color:#2f7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
#detail{min-height:200px}#detail pre{background:#f6f8fa;border:1px solid #e8ebf0;padding:6px 8px;
white-space:pre-wrap;word-break:break-word;max-height:420px;overflow:auto;margin:4px 0}
.step{border:1px solid #dde2ea;border-radius:6px;margin:8px 0;padding:6px 10px}
.step h4{margin:2px 0 6px;font-size:14px}
.tag{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;color:#fff;margin-left:6px}
.t-valid{background:#59a14f}.t-parse_error{background:#b39200}.t-execution_error{background:#e15759}
.t-max_steps{background:#b07aa1}.t-kept{background:#4e79a7}
details.cand{border-left:3px solid #dde2ea;padding-left:8px;margin:6px 0}
details.cand.kept{border-left-color:#4e79a7}
summary{cursor:pointer}.muted{color:#6b7385}.lbl{font-weight:600;font-size:12px;color:#4a5365}
"""

JS = r"""
(function(){
var idx=JSON.parse(document.getElementById('index').textContent);
var runs=idx.runs, rows=idx.rows, shown=200;
var $=function(id){return document.getElementById(id)};
function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,function(c){
 return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]})}
function opt(sel,vals){vals.forEach(function(v){var o=document.createElement('option');
 o.value=v[0];o.textContent=v[1];sel.appendChild(o)})}
opt($('f-run'),[['','all runs']].concat(runs.map(function(r,i){return [String(i),r]})));
opt($('f-set'),[['','all sets']].concat(idx.sets.map(function(s){return [s,s]})));
var outs={};rows.forEach(function(r){outs[r.o]=1});
opt($('f-out'),[['','any outcome']].concat(Object.keys(outs).sort().map(function(o){return [o,o.replace('_',' ')]})));
function filtered(){var fr=$('f-run').value,fs=$('f-set').value,fo=$('f-out').value,
 fc=$('f-cor').value,ft=$('f-txt').value.toLowerCase();
 return rows.filter(function(r){return (!fr||String(r.r)===fr)&&(!fs||r.s===fs)&&
 (!fo||r.o===fo)&&(!fc||(fc==='1')===r.c)&&
 (!ft||(r.q+' '+r.i+' '+r.p).toLowerCase().indexOf(ft)>=0)})}
function renderList(){var f=filtered();$('count').textContent=f.length+' of '+rows.length+' questions';
 var h=['<table><tbody>'];f.slice(0,shown).forEach(function(r){
 h.push('<tr data-k="'+r.k+'" id="row-'+r.k+'"><td><span class="'+(r.c?'ok':'bad')+'">'+
 (r.c?'\u2713':'\u2717')+'</span> <span class="muted">'+esc((runs.length>1?runs[r.r]+' \u00b7 ':'')+r.i)+
 '</span> <span class="tag t-'+(r.o==='answer'?'valid':r.o==='max_steps'?'max_steps':'execution_error')+
 '">'+esc(r.o)+'</span><br>'+esc(r.q)+'</td></tr>')});
 h.push('</tbody></table>');if(f.length>shown)h.push('<p><button id="more">show more</button></p>');
 $('list').innerHTML=h.join('');var m=$('more');if(m)m.onclick=function(){shown+=200;renderList()};}
['f-run','f-set','f-out','f-cor','f-txt'].forEach(function(id){$(id).addEventListener('input',
 function(){shown=200;renderList()})});
$('list').addEventListener('click',function(ev){var tr=ev.target.closest('tr');if(!tr)return;
 var r=rows[+tr.dataset.k];location.hash='q='+encodeURIComponent(r.r+':'+r.i)});
function pre(label,text){if(text==null||text==='')return '';return '<div class="lbl">'+label+
 '</div><pre>'+esc(typeof text==='string'?text:JSON.stringify(text,null,1))+'</pre>'}
function cand(c,kept,shown){var ex=c.execution||{};var out=c.parse_error?'parse_error':(c.valid?'valid':'execution_error');
 var h=['<details class="cand'+(kept||shown?' kept':'')+'"'+(kept||shown?' open':'')+'><summary>candidate '+c.index+
 '<span class="tag t-'+out+'">'+out.replace('_',' ')+'</span>'+(kept?'<span class="tag t-kept">kept</span>':'')+
 (shown?'<span class="tag t-kept">none valid: its error is the observation</span>':'')+'</summary>'];
 h.push(pre('thought',c.thought));h.push(pre('code',c.code));
 if(c.parse_error)h.push(pre('parse error',c.parse_error));
 if(!c.thought&&!c.code)h.push(pre('reply',c.text));
 h.push(pre('stdout',ex.stdout));if(ex.error)h.push(pre('error ('+esc(ex.error_kind)+')',ex.error));
 if(ex.is_final)h.push(pre('final_answer',ex.final_answer));
 (ex.tool_calls||[]).forEach(function(t){h.push(pre('tool call '+esc(t.name)+'('+
 esc(JSON.stringify(t.args).slice(1,-1))+')'+(t.cached?' [cached]':''),t.result!=null?t.result:t.error))});
 h.push('</details>');return h.join('')}
function show(key){var p=key.indexOf(':');var run=+key.slice(0,p),id=key.slice(p+1);
 var r=null;for(var i=0;i<rows.length;i++){if(rows[i].r===run&&rows[i].i===id){r=rows[i];break}}
 if(!r){$('detail').innerHTML='<p class="bad">no question '+esc(key)+' in this report</p>';return}
 var el=document.getElementById('t'+r.k);var d=unintern(JSON.parse(el.textContent));
 var prev=document.querySelector('#list tr.sel');if(prev)prev.classList.remove('sel');
 var tr=$('row-'+r.k);if(tr)tr.classList.add('sel');
 var h=['<h3 id="q-title">'+esc((runs.length>1?runs[r.r]+' \u00b7 ':'')+d.id)+' <span class="'+(r.c?'ok':'bad')+'">'+
 (r.c?'correct':'wrong')+'</span></h3>'];
 h.push(pre('question',d.question));h.push('<div><span class="lbl">gold</span> '+esc(JSON.stringify(d.gold))+
 ' &nbsp; <span class="lbl">prediction</span> '+esc(JSON.stringify(d.prediction))+' &nbsp; <span class="lbl">finish</span> '+
 esc(d.finish_reason||d.status)+' &nbsp; <span class="lbl">tokens</span> '+esc(d.usage?d.usage.prompt_tokens+' + '+
 d.usage.completion_tokens:'')+' &nbsp; <span class="lbl">time</span> '+esc(d.elapsed_s)+' s</div>');
 if(d.error)h.push(pre('error',d.error));
 if(d.grade)h.push('<div class="muted">grade: '+esc(JSON.stringify(d.grade))+'</div>');
 if(d.cot)h.push(pre('chain of thought',d.cot.text));
 d.steps.forEach(function(s){var o=s.chosen!=null?'valid':'';var cands=s.candidates||[];
 if(!o){var c0=cands[0]||{};o=c0.parse_error?'parse_error':'execution_error'}
 if(s.kind!=='action')o=d.finish_reason==='max_steps'?'max_steps':'valid';
 h.push('<div class="step" data-step="'+s.number+'"><h4>Step '+s.number+(s.kind!=='action'?' (final-answer call)':'')+
 '<span class="tag t-'+o+'">'+o.replace('_',' ')+'</span> <span class="muted">'+cands.length+' candidate(s), model '+
 (+s.model_s).toFixed(2)+' s, exec '+(+s.exec_s).toFixed(2)+' s</span></h4>');
 cands.forEach(function(c,ci){var fin=s.kind!=='action';h.push(cand(c,s.chosen===c.index||(fin&&ci===0),
 s.chosen==null&&!fin&&ci===0))});
 h.push(pre('observation',s.observation));h.push('</div>')});
 $('detail').innerHTML=h.join('');
 document.documentElement.setAttribute('data-question-opened-ms',performance.now().toFixed(1));}
function unintern(d){var t=d['$s'];if(!t)return d;function sub(x){if(x&&typeof x==='object'){
 if(!Array.isArray(x)&&typeof x['$s']==='number'&&Object.keys(x).length===1)return t[x['$s']];
 for(var k in x)if(k!=='$s')x[k]=sub(x[k]);}return x}delete d['$s'];return sub(d)}
function route(){var m=/^#q=(.*)$/.exec(location.hash);if(m)show(decodeURIComponent(m[1]))}
window.addEventListener('hashchange',route);
renderList();
if(document.readyState==='loading')document.addEventListener('DOMContentLoaded',route);else route();
})();
"""


def _set_labels(reports: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    set_names: list[str] = []
    labels: dict[str, str] = {}
    for rep in reports:
        for name, m in rep["sets"].items():
            if name not in set_names:
                set_names.append(name)
                labels[name] = str(m.get("label") or name)
    return set_names, labels


def _charts(
    runs: Sequence[Run], reports: Sequence[dict[str, Any]], set_names: list[str],
    labels: dict[str, str],
) -> str:
    run_names = [rep["run"]["name"] for rep in reports]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(reports))]
    series = [
        (rn, col, [rep["sets"].get(n, {}).get("accuracy") for n in set_names]
         + [rep["average_accuracy"]])
        for rn, col, rep in zip(run_names, colors, reports, strict=True)
    ]
    acc = bar_chart([labels[n] for n in set_names] + ["Avg."], series, title="Accuracy per set",
                    width=max(640, 70 * (len(set_names) + 1) + 60))
    points = []
    for rn, col, rep in zip(run_names, colors, reports, strict=True):
        for n in set_names:
            m = rep["sets"].get(n)
            if m and m["accuracy"] is not None and m["tokens_mean"] is not None:
                points.append((float(m["tokens_mean"]), float(m["accuracy"]), f"{rn} - {labels[n]}", col))
    legend = list(zip(run_names, colors, strict=True)) if len(reports) > 1 else []
    scatter = scatter_chart(points, title="Accuracy vs tokens per question", legend=legend)
    groups, counts = [], []
    for run, rn in zip(runs, run_names, strict=True):
        for n in set_names:
            if n in run.rows:
                groups.append(f"{rn} - {labels[n]}" if len(runs) > 1 else labels[n])
                counts.append(_step_counts([run.records[r.id] for r in run.rows[n]]))
    steps = stacked_chart(groups, counts, title="Outcome of every step")
    return acc + scatter + steps


def _index_and_blobs(
    runs: Sequence[Run], set_names: list[str], labels: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    index_rows: list[dict[str, Any]] = []
    blobs: list[str] = []
    for ri, run in enumerate(runs):
        for n in set_names:
            for row in run.rows.get(n, []):
                k = len(index_rows)
                rec = run.records[row.id]
                index_rows.append({
                    "k": k, "r": ri, "i": row.id, "s": labels.get(n, n), "c": row.correct,
                    "o": row.finish_reason, "q": _short(rec.get("question"), 180),
                    "p": _short(row.prediction, 80),
                })
                blobs.append(
                    f'<script type="application/json" id="t{k}">{_json(_intern(_blob(rec)))}</script>'
                )
    return index_rows, blobs


FILTERS = (
    '<section><h2>Questions</h2><div id="filters">'
    '<select id="f-run"></select><select id="f-set"></select><select id="f-out"></select>'
    '<select id="f-cor"><option value="">correct and wrong</option><option value="1">correct'
    '</option><option value="0">wrong</option></select>'
    '<input id="f-txt" type="search" placeholder="search question / id / answer">'
    '<span id="count" class="muted"></span></div>'
    '<div id="browser"><div id="list"></div><div id="detail"><p class="muted">Pick a '
    "question to see its steps.</p></div></div></section></main>"
)
FIRST_CHART_MARK = (
    "<script>document.documentElement.dataset.firstChartMs=performance.now().toFixed(1);"
    "requestAnimationFrame(function(){document.documentElement.setAttribute("
    "'data-first-chart-painted-ms',performance.now().toFixed(1))});</script>"
)


def render_html(
    runs: Sequence[Run],
    reports: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    set_names, labels = _set_labels(reports)
    run_names = [rep["run"]["name"] for rep in reports]
    charts = _charts(runs, reports, set_names, labels)
    index_rows, blobs = _index_and_blobs(runs, set_names, labels)
    index = {"runs": run_names, "sets": [labels[n] for n in set_names], "rows": index_rows}
    heading = title or (
        f"Evaluation: {run_names[0]}" if len(runs) == 1 else "Comparison: " + " vs ".join(run_names)
    )
    desc = "".join(
        f"<p>{_e(rn)}: {_e(describe_run(rep).replace('**', '').replace('`', ''))}</p>"
        for rn, rep in zip(run_names, reports, strict=True)
    )
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
        f"<title>{_e(heading)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(heading)}</h1>{desc}</header><main>",
        f'<section id="summary"><h2>Accuracy (%)</h2>{md_table_html(paper_table(reports))}</section>',
        f'<section><h2>Charts</h2><div class="charts" id="charts">{charts}</div></section>',
        FIRST_CHART_MARK,
        *extra_sections,
        FILTERS,
        f'<script type="application/json" id="index">{_json(index)}</script>',
        f"<script>{JS}</script>",
        "\n".join(blobs),
        "</body></html>",
    ]
    return "\n".join(parts)


def _cell(text: str) -> str:
    """A markdown table cell as HTML: escaped, `**bold**` kept as bold."""
    parts = _e(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def md_table_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = ["<table><thead><tr>", *(f"<th>{_e(c)}</th>" for c in head), "</tr></thead><tbody>"]
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def write_html(
    path: Path,
    runs: Sequence[Run],
    reports: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
    extra_sections: Sequence[str] = (),
) -> None:
    text = render_html(runs, reports, title=title, extra_sections=extra_sections)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
