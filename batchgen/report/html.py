"""Render ``ReportData`` as one self-contained HTML page.

Rules that keep prompts from breaking or injecting into the page:
- every piece of data goes through ``html.escape(..., quote=True)``, in text and in
  attributes alike (``_e``);
- data the script needs travels as JSON inside ``<script type="application/json">``,
  with ``<``, ``>`` and ``&`` written as ``\\u003c``-style escapes, so no prompt can
  close that element;
- the only executable script is the static one below, and the page's Content
  Security Policy allows that script alone (by its hash) and no network at all.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
from typing import Any

from batchgen.report import charts
from batchgen.report.data import Clip, ReportData

PROMPT_SHORT = 160
VALUE_MAX = 300
_PENDING_TEXT = {
    "queued": "queued: not submitted yet",
    "submitting": "submitting",
    "in_doubt": "in doubt: the submission's answer was lost",
    "running": "generating",
    "downloading": "downloading",
    "canceled": "canceled",
}

_STYLE = """
:root { color-scheme: light dark; --line: #8884; --muted: #777; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1rem 2rem; }
header { display: flex; flex-wrap: wrap; gap: 1rem 2rem; align-items: flex-start; }
h1 { font-size: 1.3rem; margin: .8rem 0 .2rem; overflow-wrap: anywhere; }
.meta, .muted { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.totals { display: flex; flex-wrap: wrap; gap: .4rem; margin: .4rem 0; }
.chip { border: 1px solid var(--line); border-radius: 1rem; padding: 0 .5rem; white-space: nowrap; }
.s-succeeded { border-color: #3c9a6a; } .s-failed { border-color: #d04a4a; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
.chart text { fill: currentColor; }
.controls { position: sticky; top: 0; z-index: 2; padding: .5rem 0; background: Canvas;
  /* the bar's background reaches across a grid wider than the view */
  box-shadow: 0 0 0 100vmax Canvas; clip-path: inset(0 -100vmax); }
#filter { width: min(40rem, 90%); padding: .3rem .5rem; font-size: 14px; }
table.grid { border-collapse: collapse; }
.grid th, .grid td { border: 1px solid var(--line); vertical-align: top; padding: .3rem; }
.grid thead th { position: sticky; top: 2.8rem; background: Canvas; z-index: 1;
  max-width: 240px; }
.grid thead th div { max-height: 4.2em; overflow: auto; overflow-wrap: anywhere;
  white-space: pre-wrap; }
.rowhead { text-align: left; font-weight: normal; min-width: 12rem; max-width: 22rem; }
.rowhead div { max-height: 14em; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere; }
h2.gridtitle { font-size: 1rem; margin: 1.2rem 0 .4rem; overflow-wrap: anywhere; }
.axis { font-size: 11px; color: var(--muted); text-transform: uppercase; }
.clip { margin: 0 0 .5rem; width: 240px; }
.clip .vid, .clip video, .clip img, .clip .ph { width: 240px; height: 135px;
  background: #111; display: block; object-fit: contain; }
.clip .ph { display: flex; align-items: center; justify-content: center; color: #ddd;
  text-align: center; padding: .3rem; box-sizing: border-box; }
.clip.s-failed .ph { background: #5a1f1f; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
.error { color: #d04a4a; white-space: pre-wrap; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .4rem; margin: .2rem 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.prompt { white-space: pre-wrap; overflow-wrap: anywhere; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  // A <video> element costs the browser about a millisecond to create even with
  // preload="none" (5,000 of them: 6 s before the page shows). So the page holds a
  // lazy poster <img> per job, and a box gets its <video> when it comes near the view.
  var boxes = Array.prototype.slice.call(document.querySelectorAll(".vid[data-src]"));
  function load(box) {
    var v = box.querySelector("video");
    if (v) { return v; }
    v = document.createElement("video");
    var poster = box.getAttribute("data-poster");
    v.preload = poster ? "none" : "metadata";
    v.muted = true;
    v.loop = true;
    ["muted", "loop", "playsinline"].forEach(function (a) { v.setAttribute(a, ""); });
    if (poster) { v.poster = poster; }
    v.title = "hover to play";
    v.src = box.getAttribute("data-src");
    box.replaceChildren(v);
    return v;
  }
  if ("IntersectionObserver" in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { load(e.target); io.unobserve(e.target); }
      });
    }, { rootMargin: "300px" });
    boxes.forEach(function (b) { io.observe(b); });
  } else {
    boxes.forEach(load);
  }
  boxes.forEach(function (b) {
    b.addEventListener("mouseenter", function () {
      var p = load(b).play();
      if (p && p.catch) { p.catch(function () {}); }
    });
    b.addEventListener("mouseleave", function () { load(b).pause(); });
  });
  var input = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var clips = Array.prototype.slice.call(document.querySelectorAll(".clip"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("table.grid tbody tr"));
  var timer = null;
  function apply() {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var n = 0;
    clips.forEach(function (c) {
      var q = c.getAttribute("data-q");
      var ok = terms.every(function (t) { return q.indexOf(t) >= 0; });
      c.hidden = !ok;
      if (ok) { n += 1; }
    });
    rows.forEach(function (r) { r.hidden = !r.querySelector(".clip:not([hidden])"); });
    shown.textContent = n + " of " + data.jobs + " jobs shown";
  }
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(apply, 120);
  });
  window.batchgenReport = { load: load, filter: apply, data: data };
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` left to parse."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    for raw, esc in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    # No connect/frame/object sources at all; media and images only from this folder.
    return (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "img-src 'self' data: file:; media-src 'self' file:; base-uri 'none'; form-action 'none'"
    )


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def render(data: ReportData) -> str:
    batch = data.batch
    generated = dt.datetime.fromtimestamp(data.generated_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    payload = {
        "batch": batch.name,
        "jobs": data.jobs,
        "rows": data.rows_axis,
        "cols": data.cols_axis,
        "counts": data.counts,
    }
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp())}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(batch.name)}: batchgen report</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(data, generated),
        '<div class="controls"><input id="filter" type="search" '
        'placeholder="Filter: words from prompts, axis values, states, errors" '
        f'aria-label="Filter"> <span id="shown" class="muted">{data.jobs} jobs</span></div>',
        _grid(data),
        f'<script type="application/json" id="report-data">{script_json(payload)}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>\n",
    ]
    return "".join(parts)


def _header(data: ReportData, generated: str) -> str:
    batch = data.batch
    chips = "".join(
        f'<span class="chip s-{_e(state)}">{_e(state)} {n}</span>'
        for state, n in sorted(data.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    layout = (
        " · ".join(
            f"{what}: {axis}"
            for what, axis in (("rows", data.rows_axis), ("columns", data.cols_axis))
            if axis
        )
        or "one cell"
    )
    if data.grid_axes:
        layout += " · one grid per " + " × ".join(data.grid_axes)
    spend_chart = charts.spend_bars(
        data.spend_by, title=f"Spend by {data.spend_axis or 'axis'} value"
    )
    gen_chart = charts.histogram(
        data.gen_times, title="Generation time (API createdAt → completedAt)"
    )
    return (
        "<header><div>"
        f"<h1>{_e(data.batch.name)}</h1>"
        f'<div class="meta">{_e(batch.model)} · output folder {_e(batch.out_dir)} · '
        f"report written {_e(generated)} UTC</div>"
        f'<div class="totals"><span class="chip">{data.jobs} jobs</span>{chips}</div>'
        f'<div class="totals"><span class="chip">spent {_e(_usd(data.spend_micro_usd))}</span>'
        f'<span class="chip">wall time {_e(_duration(data.wall_s))}</span></div>'
        f"{_maybe_paid_twice(data)}{_by_key(data)}"
        f'<div class="meta">{_e(layout)} · axes: {_e(", ".join(data.axes) or "none")}</div>'
        f'</div><div class="charts">{gen_chart}{spend_chart}</div></header>'
    )


def _by_key(data: ReportData) -> str:
    """Several keys: each key's runs and spend, by its fingerprint (never the key)."""
    chips = "".join(
        f'<span class="chip">key {_e(fp)}: {runs} runs, {_e(_usd(spent))}</span>'
        for fp, runs, spent in data.by_key
    )
    return f'<div class="totals by-key">{chips}</div>' if chips else ""


def _maybe_paid_twice(data: ReportData) -> str:
    """The jobs a lost POST answer may have charged twice, and what that may cost."""
    if not data.maybe_paid_twice:
        return ""
    names = ", ".join(
        f"#{j.idx} {j.key[:12]} ({_usd(j.possible_micro_usd)})" for j in data.maybe_paid_twice
    )
    return (
        '<div class="totals maybe-paid-twice"><span class="chip">may have been paid twice: '
        f"up to {_e(_usd(data.possible_micro_usd))} more</span> "
        f'<span class="meta">POST answers lost: {_e(names)}</span></div>'
    )


def _grid(data: ReportData) -> str:
    if not data.jobs:
        return '<p class="muted">This batch has no jobs.</p>'
    out = []
    for grid in data.grid_values:
        if data.grid_axes:
            title = " · ".join(f"{a} = {v}" for a, v in zip(data.grid_axes, grid, strict=True))
            out.append(f'<h2 class="gridtitle">{_e(title)}</h2>')
        out.append(_table(data, grid))
    return "".join(out)


def _table(data: ReportData, grid: tuple[str, ...]) -> str:
    out = ['<table class="grid"><thead><tr>']
    if data.rows_axis:
        corner = data.rows_axis + (f" \\ {data.cols_axis}" if data.cols_axis else "")
        out.append(f'<th class="axis">{_e(corner)}</th>')
    for col in data.col_values:
        label = _e(col) if data.cols_axis else "jobs"
        out.append(f'<th scope="col"><div title="{label}">{label}</div></th>')
    out.append("</tr></thead><tbody>")
    for row in data.row_values:
        cells = [data.cells.get((grid, row, col), []) for col in data.col_values]
        if not any(cells):
            continue  # this value of the rows does not occur in this grid
        out.append("<tr>")
        if data.rows_axis:
            out.append(f'<th class="rowhead" scope="row"><div>{_e(row)}</div></th>')
        for col, clips in zip(data.col_values, cells, strict=True):
            out.append("<td>" + "".join(_clip(c, data, row, col) for c in clips) + "</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _clip(clip: Clip, data: ReportData, row: str, col: str) -> str:
    job = clip.job
    searchable = [row, col, job.state, job.error_code or "", job.last_error or ""]
    searchable += [str(v) for v in job.input.values() if isinstance(v, str | int | float)]
    searchable += list(clip.other_axes.values())
    q = " ".join(searchable).lower()
    parts = [f'<figure class="clip s-{_e(job.state)}" data-q="{_e(q)}" data-idx="{job.idx}">']
    parts.append(_media(clip))
    parts.append("<figcaption>")
    facts = [f"#{job.idx}", job.state]
    if job.cost_micro_usd:
        facts.append(_usd(job.cost_micro_usd))
    if clip.gen_s is not None:
        facts.append(f"generated in {_duration(clip.gen_s)}")
    if clip.total_s is not None:
        facts.append(f"done in {_duration(clip.total_s)}")
    if job.attempts > 1:
        facts.append(f"{job.attempts} attempts")
    if not job.listed:
        facts.append("no longer in the manifest")
    parts.append(f"<div>{_e(' · '.join(facts))}</div>")
    if job.state == "failed" or (job.last_error and job.state != "succeeded"):
        error = _error(job.error_code, job.last_error)
        parts.append(f'<div class="error">{_e(error)}</div>')
    if job.media_note:
        parts.append(f'<div class="error">{_e(job.media_note)}</div>')
    for rel in clip.missing:
        parts.append(f'<div class="error">file missing: {_e(rel)}</div>')
    parts.append(_inputs(clip, data))
    links = []
    for i, (video, side) in enumerate(zip(clip.videos, clip.sidecars, strict=True)):
        n = f" {i + 1}" if len(clip.videos) > 1 else ""
        links.append(f'<a href="{_e(video)}">video{n}</a> <a href="{_e(side)}">sidecar{n}</a>')
    if job.run_id:
        links.append(f'<span class="muted">{_e(job.run_id)}</span>')
    if links:
        parts.append("<div>" + " · ".join(links) + "</div>")
    parts.append("</figcaption></figure>")
    return "".join(parts)


def _error(code: str | None, message: str | None) -> str:
    """``code: message``, without the code twice when the message already names it."""
    if code and message and code in message:
        return message
    return ": ".join(x for x in (code, message) if x) or "failed"


def _media(clip: Clip) -> str:
    job = clip.job
    if clip.videos:
        poster = clip.poster or ""
        img = f'<img loading="lazy" src="{_e(poster)}" alt="">' if poster else ""
        return (
            f'<div class="vid" data-src="{_e(clip.videos[0])}" data-poster="{_e(poster)}">'
            f"{img}</div>"
        )
    if job.state == "succeeded":
        text = "succeeded, but its file is missing"
    elif job.state == "failed":
        text = "failed"
    else:
        text = _PENDING_TEXT.get(job.state, job.state)
    return f'<div class="ph">{_e(text)}</div>'


def _inputs(clip: Clip, data: ReportData) -> str:
    job = clip.job
    shown_axes = {data.rows_axis, data.cols_axis}
    rows = []
    prompt = job.input.get("prompt")
    if isinstance(prompt, str) and not (
        data.rows_axis == "prompt" and job.axes.get("prompt", prompt) == prompt
    ):
        if len(prompt) > PROMPT_SHORT:
            rows.append(
                f'<details class="prompt"><summary>{_e(prompt[:PROMPT_SHORT])}…</summary>'
                f"{_e(prompt)}</details>"
            )
        else:
            rows.append(f'<div class="prompt">{_e(prompt)}</div>')
    items = [(k, v) for k, v in job.input.items() if k != "prompt" and k not in shown_axes]
    items += [(k, v) for k, v in clip.other_axes.items() if k not in job.input]
    if items:
        cells = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_value(v))}</dd>" for k, v in items)
        rows.append(f"<dl>{cells}</dl>")
    return "".join(rows)


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= VALUE_MAX else text[: VALUE_MAX - 1] + "…"


__all__ = ["render", "script_json"]
