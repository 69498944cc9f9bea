"""The book runner: execute notebooks with papermill, render them to HTML, index the reports.

``run_notebook("notebooks/01_supervised.ipynb", {"seed": 1})`` writes
``reports/01_supervised.ipynb`` (the executed copy), ``reports/01_supervised.html`` and its wall
time into ``reports/book_timings.json``; ``run_book()`` does that for every notebook of
:data:`BOOK` in order and ends with ``build_index()`` -> ``reports/index.html``.

The kernel inherits ``SSLKIT_NOTEBOOK`` (the notebook's stem, stored in every run record),
``SSLKIT_REPORTS`` (absolute, so ``fit`` writes to reports/runs) and ``SSLKIT_PROGRESS``.
Notebooks execute with the repository root (the notebook folder's parent) as working directory,
so relative paths such as ``data/my.csv`` mean the same in Jupyter and in the book.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from .runs import atomic_write_text, load_runs, read_json, reports_dir, write_json

__all__ = [
    "BOOK", "BookError", "book_notebooks", "build_index", "parse_value", "resolve_notebook",
    "run_book", "run_notebook", "TIMINGS",
]

#: The chapters, in reading order.
BOOK = ["00_data", "01_supervised", "02_self_training", "03_temporal_ensemble", "04_mean_teacher",
        "05_contrastive", "06_ablation"]
#: Wall time of each executed notebook, merged across runs: {stem: {seconds, finished, ...}}.
TIMINGS = "book_timings.json"


class BookError(RuntimeError):
    """Some notebooks of a book run failed (with ``stop_on_error=False``)."""

    def __init__(self, failed: dict[str, str], html_paths: list[Path]):
        self.failed = failed
        self.html_paths = html_paths
        lines = "; ".join(f"{stem}: {err}" for stem, err in failed.items())
        super().__init__(f"{len(failed)} notebook(s) failed: {lines}")


# --------------------------------------------------------------------------- locating notebooks


def book_notebooks(notebooks_dir: str | os.PathLike = "notebooks") -> list[Path]:
    """The notebooks of :data:`BOOK` that exist in ``notebooks_dir``, in book order."""
    folder = Path(notebooks_dir)
    return [folder / f"{stem}.ipynb" for stem in BOOK if (folder / f"{stem}.ipynb").is_file()]


def resolve_notebook(name: str | os.PathLike, notebooks_dir: str | os.PathLike = "notebooks") -> Path:
    """A notebook path from a path, a stem ("01_supervised") or a unique prefix ("01")."""
    path = Path(name)
    folder = Path(notebooks_dir)
    candidates = [path, path.with_name(path.name + ".ipynb"), folder / path,
                  folder / (path.name + ".ipynb")]
    for cand in candidates:
        if cand.is_file() and cand.suffix == ".ipynb":
            return cand
    if path.is_file():
        raise ValueError(f"{path}: not a notebook (expected a .ipynb file)")
    available = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if len(path.parts) == 1:
        matches = [p for p in available if p.stem.startswith(path.name)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(f"notebook '{name}' is ambiguous: "
                             f"{', '.join(p.stem for p in matches)}")
    have = ", ".join(p.stem for p in available) or "none"
    raise FileNotFoundError(f"{name}: notebook not found (notebooks in {folder}: {have})")


# --------------------------------------------------------------------------- parameters


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def parse_value(text: str) -> Any:
    """A command-line parameter value, papermill style: int, float, true/false/none
    (case-insensitive), a JSON list/dict/"quoted string", else the text itself.

    ``"0.05" -> 0.05``, ``"3" -> 3``, ``"True" -> True``, ``"[1, 2]" -> [1, 2]``, ``"hwu64" -> "hwu64"``.
    """
    s = text.strip()
    low = s.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(s):
        return int(s)
    if _FLOAT.fullmatch(s):
        return float(s)
    if s[:1] in "[{\"":
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            pass
    return text


# --------------------------------------------------------------------------- running


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (the kernel inherits them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        have = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
        raise ValueError(f"no Jupyter kernel named '{kernel}' (installed kernels: {have}); "
                         "register one with: python -m ipykernel install --sys-prefix "
                         "--name sslkit") from None


def render_html(executed: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Render an executed notebook to HTML (inputs shown, images embedded as base64)."""
    import nbformat
    from nbconvert import HTMLExporter

    executed = Path(executed)
    target = Path(target) if target is not None else executed.with_suffix(".html")
    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    atomic_write_text(target, body)
    return target


def _read_timings(reports: Path) -> dict:
    try:
        data = read_json(reports / TIMINGS)
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_timing(reports: Path, stem: str, entry: dict) -> None:
    timings = _read_timings(reports)
    timings[stem] = entry
    write_json(reports / TIMINGS, timings)


def _describe_error(err: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        return f"{err.ename}: {err.evalue} (cell In [{err.exec_count}])"
    return f"{type(err).__name__}: {err}"


def run_notebook(
    notebook: str | os.PathLike,
    parameters: dict | None = None,
    reports: str | os.PathLike | None = None,
    kernel: str = "sslkit",
    progress: bool = False,
    html: bool = True,
    log_output: bool = False,
    output: str | os.PathLike | None = None,
    timings: bool = True,
) -> Path:
    """Execute one notebook with papermill into ``reports/<stem>.ipynb`` and render
    ``reports/<stem>.html``; returns the HTML path (the executed .ipynb when ``html=False``).

    The working directory is the notebook folder's parent (the repository root). The wall time,
    parameters and outcome are merged into ``reports/book_timings.json``. When a cell fails, the
    partial notebook is still rendered and recorded (``ok: false``), then the error is re-raised
    (``papermill.PapermillExecutionError``).

    ``output`` puts the executed copy elsewhere (its HTML beside it), e.g. one file per sweep point
    (run records still go to ``reports/runs``); ``timings=False`` leaves book_timings.json alone.
    """
    import papermill

    source = Path(notebook)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook not found")
    if source.suffix != ".ipynb":
        raise ValueError(f"{source}: not a notebook (expected a .ipynb file)")
    _check_kernel(kernel)
    source = source.resolve()
    out_dir = reports_dir(reports).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = source.stem
    executed = Path(output).resolve() if output is not None else out_dir / f"{stem}.ipynb"
    if executed.suffix != ".ipynb":
        raise ValueError(f"{executed}: the executed copy needs the .ipynb suffix")
    executed.parent.mkdir(parents=True, exist_ok=True)
    page = executed.with_suffix(".html")
    if executed == source:
        raise ValueError(f"{source}: the reports folder holds the notebook itself; pick another")
    for stale in (executed, page):  # never show an old report for a new run
        stale.unlink(missing_ok=True)
    params = dict(parameters or {})

    error: BaseException | None = None
    started = time.perf_counter()
    try:
        with _environ(SSLKIT_NOTEBOOK=stem, SSLKIT_REPORTS=str(out_dir),
                      SSLKIT_PROGRESS="1" if progress else "0"):
            papermill.execute_notebook(
                str(source), str(executed), parameters=params, kernel_name=kernel,
                language="python", cwd=str(source.parent.parent), progress_bar=progress, log_output=log_output,
            )
    except Exception as err:  # recorded and re-raised below
        error = err
    seconds = time.perf_counter() - started

    rendered = None
    if html and executed.is_file():
        rendered = render_html(executed, page)
    if timings:
        _record_timing(out_dir, stem, {
            "seconds": round(seconds, 3),
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
            "parameters": params,
            "ok": error is None,
            "error": None if error is None else _describe_error(error),
        })
    if error is not None:
        raise error
    return rendered if rendered is not None else executed


def run_book(
    notebooks: Sequence[str | os.PathLike] | None = None,
    reports: str | os.PathLike | None = None,
    parameters: dict | None = None,
    progress: bool = False,
    stop_on_error: bool = True,
    kernel: str = "sslkit",
    notebooks_dir: str | os.PathLike = "notebooks",
) -> list[Path]:
    """Run the book's notebooks in order (default: every :data:`BOOK` notebook present in
    ``notebooks_dir``), then :func:`build_index`. ``parameters`` go to every notebook.

    A failing notebook stops the book (after the index is rebuilt) and re-raises; with
    ``stop_on_error=False`` the others still run and a :class:`BookError` lists the failures.
    Returns the HTML pages written.
    """
    if notebooks is None:
        paths = book_notebooks(notebooks_dir)
        if not paths:
            raise FileNotFoundError(f"{notebooks_dir}: none of the book's notebooks "
                                    f"({', '.join(BOOK)}) is there")
    else:
        paths = [resolve_notebook(n, notebooks_dir) for n in notebooks]
    pages: list[Path] = []
    failed: dict[str, str] = {}
    try:
        for path in paths:
            try:
                pages.append(run_notebook(path, parameters, reports, kernel=kernel, progress=progress))
            except Exception as err:
                page = reports_dir(reports).resolve() / f"{Path(path).stem}.html"
                if page.is_file():
                    pages.append(page)
                if stop_on_error:
                    raise
                failed[Path(path).stem] = _describe_error(err)
    finally:
        build_index(reports)
    if failed:
        raise BookError(failed, pages)
    return pages


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


def _ablation_section(out_dir: Path) -> list[str]:
    """Links to the ablation notebook and files, and the table itself from ablation.csv."""
    parts = ["<h2>Ablation</h2>"]
    links = [(name, label) for name, label in (("06_ablation.html", "notebook 06_ablation"),
                                               ("ablation.md", "ablation.md"),
                                               ("ablation.csv", "ablation.csv"))
             if (out_dir / name).is_file()]
    if not links:
        parts.append('<p class="empty">No ablation yet: notebook 06_ablation (the last chapter of '
                     "<code>sslkit book</code>) writes ablation.csv and ablation.md.</p>")
        return parts
    parts.append("<p>" + " · ".join(f'<a href="{_e(n)}">{_e(label)}</a>' for n, label in links) + "</p>")
    if (out_dir / "ablation.csv").is_file():
        try:
            import pandas as pd

            from .ablation import format_table

            table = pd.read_csv(out_dir / "ablation.csv", keep_default_na=True,
                                dtype={"budget": str, "seeds": str})
            if len(table):
                shown = format_table(table)
                parts.append(_html_table(shown, numeric=[c for c in shown.columns if c not in (
                    "dataset", "backbone", "budget", "method")]))
                parts.append('<p class="sub">Test scores in percent, mean ± std over seeds (n runs); '
                             "gap closed: share of the supervised → all-labels gap (see ablation.md)."
                             "</p>")
        except Exception as err:  # an old or hand-edited file: keep the links
            parts.append(f'<p class="failed">ablation.csv could not be shown: {_e(err)}</p>')
    return parts


def _sweeps_section(out_dir: Path) -> list[str]:
    """One table per sweep under reports/sweeps: each point's status, time and links."""
    from .sweep import sweep_status

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
    """Write ``reports/index.html``: links to the rendered notebooks (book order, then others)
    with their wall time, the ablation (links to 06_ablation.html, ablation.md/.csv and its
    table), every sweep under reports/sweeps (each point's status and report), and one table
    row per run record (``load_runs``)."""
    out_dir = reports_dir(reports)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = _read_timings(out_dir)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>sslkit reports</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>sslkit reports</h1>",
             f'<p class="sub">Built {_e(datetime.now().astimezone().isoformat(timespec="seconds"))}'
             "</p>", "<h2>Notebooks</h2>"]

    pages = _notebook_pages(out_dir)
    if pages:
        parts.append('<ul class="notebooks">')
        for page in pages:
            info = timings.get(page.stem, {}) if isinstance(timings.get(page.stem), dict) else {}
            note = ""
            if info.get("seconds") is not None:
                note = f' <span class="time">({_e(_fmt_seconds(info["seconds"]))})</span>'
            if info.get("ok") is False:
                note += f' <span class="failed">failed: {_e(info.get("error") or "")}</span>'
            parts.append(f'<li><a href="{_e(page.name)}">{_e(page.stem)}</a>{note}</li>')
        parts.append("</ul>")
    else:
        parts.append('<p class="empty">No rendered notebooks yet.</p>')

    parts += _ablation_section(out_dir)
    parts += _sweeps_section(out_dir)

    parts.append("<h2>Runs</h2>")
    runs = load_runs(out_dir)
    if len(runs) == 0:
        parts.append('<p class="empty">No runs yet.</p>')
    else:
        runs = runs.copy()
        for col in ("notebook", "dataset", "method"):
            if col not in runs.columns:
                runs[col] = None
        runs = runs.sort_values(["notebook", "dataset", "method"], na_position="last",
                                key=lambda s: s.astype(str).str.lower().where(s.notna()),
                                kind="stable")
        columns = [("notebook", "notebook", "text"), ("dataset", "dataset", "text"),
                   ("budget", "budget", "text"), ("method", "method", "text"),
                   ("backbone", "backbone", "text"), ("seed", "seed", "int"),
                   ("test.accuracy", "test accuracy", "pct"), ("test.macro_f1", "test macro-F1", "pct"),
                   ("minutes", "minutes", "minutes"), ("run_id", "run", "text")]
        page_stems = {p.stem for p in pages}
        parts.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for _, h, _ in columns)
                     + "</tr></thead><tbody>")
        for _, row in runs.iterrows():
            cells = []
            for col, _, kind in columns:
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
        parts.append(f'<p class="sub">{len(runs)} run(s); accuracy and macro-F1 on the test split.</p>')
    parts.append("</body></html>")
    target = out_dir / "index.html"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target
