"""The report as one self-contained HTML page: no external URL, no JavaScript, figures embedded
as base64 PNG, every number printed by :func:`number` from ``report.json`` and tagged with the key
it comes from (``data-key``), so a reader (or a test) can check the page against the JSON.

The page is built from the report's JSON document alone (:func:`render`), whose shape is::

    {"title", "model": {...}, "command", "seconds", "reused", "versions": {package: version},
     "data_sources": [{"name", "repo", "commit"}], "concepts": [...],
     "measures": [{"id", "title", "paper", "columns": [{"key", "label", "help"}],
                   "rows": {concept: {key: number | {"value", "lo", "hi"} | None}}}],
     "correlations": [{"x", "y", "n", "rho", "lo", "hi"}],
     "figures": [{"file", "caption"}], "deviations": {study: [{"element", "reference", "here"}]},
     "runs": {study: relative path}, "notes": [...]}
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping
from typing import Any

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
.help { color: #555; font-size: 0.9em; } figure { margin: 1em 0; } img { max-width: 100%; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def number(value: Any, digits: int = 3) -> str:
    """How the page prints a number: ``digits`` decimals; ``n/a`` for None and NaN; ints as ints."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def cell_text(cell: Any) -> str:
    """A table cell: a number, or ``value [lo, hi]`` for a number with its interval."""
    if isinstance(cell, Mapping):
        text = number(cell.get("value"))
        if cell.get("lo") is not None or cell.get("hi") is not None:
            text += f" [{number(cell.get('lo'))}, {number(cell.get('hi'))}]"
        return text
    if isinstance(cell, (list, tuple)):
        return ", ".join(number(v) for v in cell)
    if isinstance(cell, str):
        return cell
    return number(cell)


def render(report: Mapping[str, Any], figures_dir: str | None = None) -> str:
    """The HTML page of ``report`` (the JSON document); ``figures_dir`` holds the PNG files that
    ``report["figures"]`` names (embedded as base64; a missing file raises ``FileNotFoundError``)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(str(report.get('title', 'steerjax report')))}</title>", f"<style>{_CSS}</style></head><body>"]
    out.append(f"<h1>{e(str(report.get('title', 'steerjax report')))}</h1>")
    model = report.get("model", {})
    out.append("<table><caption>Run</caption>")
    wall = "wall time of this run (s)"
    rows = [("model", model.get("source")), ("family", model.get("family")), ("layers", model.get("num_layers")),
            ("command", report.get("command")), (wall, report.get("seconds")),
            ("concepts", ", ".join(report.get("concepts", [])))]
    if "reused" in report:
        rows.append(("studies reused from earlier runs", report["reused"]))
    for label, value in rows:
        key = {wall: ' data-key="seconds"'}.get(label, "")
        text = number(value, 1) if label == wall else e(str(value))
        out.append(f'<tr><th class="name">{e(label)}</th><td class="name"{key}>{text}</td></tr>')
    out.append("</table>")

    for measure in report.get("measures", []):
        out.append(f"<h2>{e(measure['title'])}</h2>")
        if measure.get("paper"):
            out.append(f'<p class="help">{e(measure["paper"])}</p>')
        cols = measure["columns"]
        out.append(f"<table><caption>{e(measure['title'])}: one row per concept, in the order asked</caption><tr>"
                   '<th class="name">concept</th>' + "".join(f"<th>{e(c['label'])}</th>" for c in cols) + "</tr>")
        for concept, values in measure["rows"].items():
            cells = []
            for c in cols:
                key = f"{measure['id']}/{concept}/{c['key']}"
                cells.append(f'<td data-key="{e(key)}">{e(cell_text(values.get(c["key"])))}</td>')
            out.append(f'<tr><td class="name">{e(concept)}</td>{"".join(cells)}</tr>')
        out.append("</table>")
        helps = [f"<li><b>{e(c['label'])}</b>: {e(c.get('help', ''))}</li>" for c in cols if c.get("help")]
        if helps:
            out.append(f'<ul class="help">{"".join(helps)}</ul>')

    corr = report.get("correlations", [])
    if corr:
        out.append("<h2>Across concepts</h2><table><caption>Spearman correlations between the measures, with 95% "
                   "bootstrap intervals over concepts</caption><tr><th class=\"name\">x</th><th class=\"name\">y</th>"
                   "<th>concepts</th><th>rho [95% interval]</th></tr>")
        for i, c in enumerate(corr):
            rho = cell_text({"value": c.get("rho"), "lo": c.get("lo"), "hi": c.get("hi")})
            out.append(f'<tr><td class="name">{e(c["x"])}</td><td class="name">{e(c["y"])}</td>'
                       f'<td data-key="correlations/{i}/n">{number(c.get("n"))}</td>'
                       f'<td data-key="correlations/{i}/rho">{e(rho)}</td></tr>')
        out.append("</table>")

    for fig in report.get("figures", []):
        path = fig["file"] if figures_dir is None else os.path.join(figures_dir, fig["file"])
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        out.append(f'<figure><img alt="{e(fig.get("caption", fig["file"]))}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{e(fig.get('caption', ''))}</figcaption></figure>")

    devs = report.get("deviations", {})
    if devs:
        out.append("<h2>Deviations from each paper's protocol</h2>")
        for study, rows in devs.items():
            out.append(f"<table><caption>{e(study)}</caption><tr><th class=\"name\">element</th>"
                       "<th class=\"name\">reference</th><th class=\"name\">here</th></tr>")
            for r in rows:
                out.append(f'<tr><td class="name">{e(r["element"])}</td><td class="name">{e(r["reference"])}</td>'
                           f'<td class="name">{e(r["here"])}</td></tr>')
            out.append("</table>")

    out.append("<h2>Provenance</h2><table><caption>Data sources</caption><tr><th class=\"name\">source</th>"
               "<th class=\"name\">repository</th><th class=\"name\">commit</th></tr>")
    for src in report.get("data_sources", []):
        out.append(f'<tr><td class="name">{e(src["name"])}</td><td class="name">{e(src["repo"])}</td>'
                   f'<td class="name"><code>{e(src["commit"])}</code></td></tr>')
    out.append("</table><table><caption>Package versions</caption>")
    for pkg, version in sorted(report.get("versions", {}).items()):
        out.append(f'<tr><td class="name">{e(pkg)}</td><td class="name">{e(str(version))}</td></tr>')
    out.append("</table>")
    runs = report.get("runs", {})
    if runs:
        # relative links: the run directories sit beside report.html
        out.append("<p>Run directories: " + ", ".join(
            f'<a href="{e(path)}/">{e(study)}</a>' for study, path in runs.items()) + "</p>")
    for note in report.get("notes", []):
        out.append(f'<p class="help">{e(note)}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
