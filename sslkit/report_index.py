"""reports/index.html: the page a person opens after the book, built from files on disk alone.

It leads with the results (the ablation table from the run records), then links every notebook's
page with its time, then every sweep's points with their status. It reads run records
(:func:`sslkit.runs.load_runs`) and the sweeps' status files; it runs nothing, so the book runner
and the sweep both call it.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .runs import atomic_write_text, load_runs, read_json, reports_dir

__all__ = ["BOOK", "POINT_FILE", "TIMINGS", "build_index", "read_status", "read_timings", "sweep_status"]

#: The chapters, in reading order.
BOOK = ["00_data", "01_supervised", "02_self_training", "03_temporal_ensemble", "04_mean_teacher",
        "05_contrastive", "06_ablation", "07_recipe",
        "08_active_learning"]
#: Wall time of each executed notebook, merged across runs: {stem: {seconds, finished, ...}}.
TIMINGS = "book_timings.json"

#: A sweep point's status file: <notebook stem>-<8 hex digits>.json
POINT_FILE = re.compile(r"^(?P<stem>.+)-(?P<hash>[0-9a-f]{8})\.json$")


def read_timings(reports: Path) -> dict:
    """The book's per-notebook timings file (empty when there is none yet)."""
    try:
        data = read_json(reports / TIMINGS)
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(path: Path) -> dict | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None



def sweep_status(reports: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Every sweep under ``reports/sweeps``: {grid name: [point status dicts, in grid order]}."""
    root = reports_dir(reports) / "sweeps"
    out: dict[str, list[dict]] = {}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = read_status(folder / "sweep.json") or {}
        order = {name: i for i, name in enumerate(manifest.get("points") or [])}
        rows = []
        for file in folder.glob("*.json"):
            if POINT_FILE.match(file.name):
                status = read_status(file)
                if status is not None:
                    rows.append(status)
        if manifest.get("points"):  # points not started yet
            have = {r.get("point") for r in rows}
            rows += [{"point": n, "status": "pending"} for n in manifest["points"] if n not in have]
        rows.sort(key=lambda r: (order.get(r.get("point"), len(order)), str(r.get("point"))))
        out[folder.name] = rows
    return out



# --------------------------------------------------------------------------- index page


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.notebooks li { margin: .25rem 0; } .time { color: #666; } .failed { color: #b00020; }
.empty { color: #666; font-style: italic; }
img { max-width: 100%; height: auto; }
"""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, kind: str = "text") -> str:
    """One table cell's text (unescaped): percentages, minutes, integers, plain text."""
    if _missing(value):
        return "–"
    try:
        if kind == "pct":
            return f"{100 * float(value):.2f}%"
        if kind == "minutes":
            return f"{float(value):.1f}"
        if kind == "int" and float(value) == int(float(value)):
            return str(int(float(value)))
    except (TypeError, ValueError):
        pass
    return str(value)


def _fmt_seconds(seconds: Any) -> str:
    if _missing(seconds):
        return ""
    s = float(seconds)
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _notebook_pages(reports: Path) -> list[Path]:
    pages = [p for p in reports.glob("*.html") if p.name != "index.html"]
    order = {stem: i for i, stem in enumerate(BOOK)}
    return sorted(pages, key=lambda p: (order.get(p.stem, len(BOOK)), p.stem))


def _html_table(frame, numeric: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = "".join(("<td class=\"num\">" if c in numeric else "<td>") + f"{_e(v)}</td>"
                        for c, v in zip(frame.columns, row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _results_section(out_dir: Path, runs) -> list[str]:
    """The results first: mean ± std over seeds per method and budget, computed from the run records
    now (the same table as ablation.md), and test accuracy against the label budget as a figure."""
    parts = ["<h2>Results</h2>"]
    links = [(name, label) for name, label in (("06_ablation.html", "notebook 06_ablation"),
                                               ("ablation.md", "ablation.md"),
                                               ("ablation.csv", "ablation.csv"))
             if (out_dir / name).is_file()]
    if links:
        parts.append("<p>" + " · ".join(f'<a href="{_e(n)}">{_e(label)}</a>' for n, label in links) + "</p>")
    if len(runs) == 0:
        parts.append('<p class="empty">No finished runs yet: <code>make book</code> writes them.</p>')
        return parts
    try:
        from .ablation import ablation_table, format_table, plot_accuracy_vs_budget

        table = ablation_table(runs, with_gap=True)
        shown = format_table(table)
        parts.append(_html_table(shown, numeric=[c for c in shown.columns if c not in (
            "dataset", "backbone", "budget", "method")]))
        parts.append('<p class="sub">Test scores in percent, mean ± std over seeds (n runs); gap closed: '
                     "share of the supervised → all-labels gap closed (see ablation.md).</p>")
        parts.append(_figure(plot_accuracy_vs_budget(table), "Test accuracy against the label budget"))
    except Exception as err:  # a hand-edited record must not take the page down: keep the rest
        parts.append(f'<p class="failed">the results table could not be built: {_e(err)}</p>')
    return parts


def _figure(fig, alt: str) -> str:
    """A matplotlib figure as an embedded PNG (the page stays one self-contained file)."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig = getattr(fig, "figure", fig)  # an Axes or a Figure
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _notebooks_section(out_dir: Path) -> list[str]:
    """Every rendered notebook page (book order, then others) with its wall time."""
    timings = read_timings(out_dir)
    parts = ["<h2>Notebooks</h2>"]
    pages = _notebook_pages(out_dir)
    if not pages:
        return parts + ['<p class="empty">No rendered notebooks yet.</p>']
    parts.append('<ul class="notebooks">')
    for page in pages:
        info = timings.get(page.stem, {}) if isinstance(timings.get(page.stem), dict) else {}
        note = ""
        if info.get("seconds") is not None:
            note = f' <span class="time">({_e(_fmt_seconds(info["seconds"]))})</span>'
        if info.get("ok") is False:
            note += f' <span class="failed">failed: {_e(info.get("error") or "")}</span>'
        parts.append(f'<li><a href="{_e(page.name)}">{_e(page.stem)}</a>{note}</li>')
    return parts + ["</ul>"]


def _sweeps_section(out_dir: Path) -> list[str]:
    """One table per sweep under reports/sweeps: each point's status, time and links."""
    sweeps = sweep_status(out_dir)
    if not sweeps:
        return []
    parts = ["<h2>Sweeps</h2>"]
    for name, rows in sweeps.items():
        manifest = {}
        try:
            manifest = read_json(out_dir / "sweeps" / name / "sweep.json")
        except (OSError, json.JSONDecodeError):
            pass
        labels = manifest.get("labels") or {} if isinstance(manifest, dict) else {}
        counts: dict[str, int] = {}
        for row in rows:
            counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        parts.append(f'<h3>{_e(name)}</h3><p class="sub">{len(rows)} point(s): {_e(summary)}</p>')
        parts.append("<table><thead><tr><th>point</th><th>status</th><th>time</th><th>report</th>"
                     "<th>error</th></tr></thead><tbody>")
        for row in rows:
            point = str(row.get("point"))
            label = labels.get(point) or " ".join(
                [str(row.get("notebook") or point)]
                + [f"{k}={v}" for k, v in (row.get("parameters") or {}).items()])
            links = []
            for key, text in (("html", "html"), ("log", "log")):
                rel = row.get(key)
                if rel and (out_dir / rel).is_file():
                    links.append(f'<a href="{_e(rel)}">{text}</a>')
            status = str(row.get("status"))
            cls = ' class="failed"' if status in ("failed", "interrupted") else ""
            parts.append(f"<tr><td>{_e(label)}</td><td{cls}>{_e(status)}</td>"
                         f'<td class="num">{_e(_fmt_seconds(row.get("seconds")))}</td>'
                         f"<td>{' '.join(links)}</td><td>{_e(row.get('error') or '')}</td></tr>")
        parts.append("</tbody></table>")
    return parts


def build_index(reports: str | os.PathLike | None = None) -> Path:
    """Write ``reports/index.html``: the results (table and figure, from the run records), the
    rendered notebooks with their wall time, every sweep under reports/sweeps, and one row per run."""
    out_dir = reports_dir(reports)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out_dir)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>sslkit reports</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>sslkit reports</h1>",
             f'<p class="sub">Built {_e(datetime.now().astimezone().isoformat(timespec="seconds"))}'
             "</p>"]
    parts += _results_section(out_dir, runs)
    parts += _notebooks_section(out_dir)
    parts += _sweeps_section(out_dir)
    parts += _runs_section(runs, {p.stem for p in _notebook_pages(out_dir)})
    parts.append("</body></html>")
    target = out_dir / "index.html"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target


_RUN_COLUMNS = [("notebook", "notebook", "text"), ("dataset", "dataset", "text"), ("budget", "budget", "text"),
                ("method", "method", "text"), ("backbone", "backbone", "text"), ("seed", "seed", "int"),
                ("test.accuracy", "test accuracy", "pct"), ("test.macro_f1", "test macro-F1", "pct"),
                ("minutes", "minutes", "minutes"), ("run_id", "run", "text")]


def _runs_section(runs, page_stems: set[str]) -> list[str]:
    """One row per run record, linked to its notebook page and its summary.json."""
    parts = ["<h2>Runs</h2>"]
    if len(runs) == 0:
        return parts + ['<p class="empty">No runs yet.</p>']
    runs = runs.copy()
    for col in ("notebook", "dataset", "method"):
        if col not in runs.columns:
            runs[col] = None
    runs = runs.sort_values(["notebook", "dataset", "method"], na_position="last",
                            key=lambda s: s.astype(str).str.lower().where(s.notna()), kind="stable")
    parts.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for _, h, _ in _RUN_COLUMNS)
                 + "</tr></thead><tbody>")
    for _, row in runs.iterrows():
        cells = []
        for col, _, kind in _RUN_COLUMNS:
            value = row.get(col)
            text = _e(_fmt(value, kind))
            if col == "notebook" and not _missing(value) and str(value) in page_stems:
                text = f'<a href="{_e(str(value) + ".html")}">{text}</a>'
            if col == "run_id" and not _missing(row.get("run_dir")):
                href = f"runs/{Path(str(row['run_dir'])).name}/summary.json"
                text = f'<a href="{_e(href)}">{text}</a>'
            cls = ' class="num"' if kind != "text" else ""
            cells.append(f"<td{cls}>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts + [f'<p class="sub">{len(runs)} run(s); accuracy and macro-F1 on the test split.</p>']
