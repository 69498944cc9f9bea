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

import json
import os
import re
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from .report_index import BOOK, TIMINGS, build_index, read_timings
from .runs import atomic_write_text, reports_dir, write_json

__all__ = [
    "BOOK", "BookError", "book_notebooks", "build_index", "parse_value", "resolve_notebook",
    "run_book", "run_notebook", "TIMINGS",
]



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


def _record_timing(reports: Path, stem: str, entry: dict) -> None:
    timings = read_timings(reports)
    timings[stem] = entry
    write_json(reports / TIMINGS, timings)


def _describe_error(err: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        return f"{err.ename}: {err.evalue} (cell In [{err.exec_count}])"
    return f"{type(err).__name__}: {err}"


#: The kernel logs errors only: its start-up notes (e.g. that its TCP sockets are not encrypted, on
#: every start) would otherwise fill the terminal between the progress lines.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


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
        # progress: the training bars go to this process's terminal, not into the executed notebook
        with _environ(SSLKIT_NOTEBOOK=stem, SSLKIT_REPORTS=str(out_dir),
                      SSLKIT_PROGRESS="terminal" if progress else "0"):
            papermill.execute_notebook(
                str(source), str(executed), parameters=params, kernel_name=kernel,
                language="python", cwd=str(source.parent.parent), progress_bar=progress, log_output=log_output,
                extra_arguments=KERNEL_ARGUMENTS,
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
    quiet: bool = False,
) -> list[Path]:
    """Run the book's notebooks in order (default: every :data:`BOOK` notebook present in
    ``notebooks_dir``), then :func:`build_index`. ``parameters`` go to every notebook.

    A failing notebook stops the book (after the index is rebuilt) and re-raises; with
    ``stop_on_error=False`` the others still run and a :class:`BookError` lists the failures.
    Returns the HTML pages written. Unless ``quiet``, one line per finished notebook (time and
    headline result, :func:`notebook_line`); ``progress`` adds the training bars.
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
                if not quiet:  # beside the bars, on stderr: stdout keeps the pages' paths
                    print(notebook_line(Path(path).stem, reports), file=sys.stderr, flush=True)
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


def notebook_line(stem: str, reports: str | os.PathLike | None = None) -> str:
    """One line about a finished notebook: its time and its headline result, the best test accuracy
    among the run records it wrote (``02_self_training  1.8 min  best: fixmatch 88.12% test accuracy``)."""
    from .runs import load_runs

    out_dir = reports_dir(reports)
    timing = read_timings(out_dir).get(stem, {})
    minutes = f"{timing['seconds'] / 60:.1f} min" if timing.get("seconds") is not None else "?"
    state = "" if timing.get("ok", True) else f"  FAILED: {timing.get('error')}"
    runs = load_runs(out_dir)
    if len(runs):  # the trained runs, not the frozen-embedding references beside them
        runs = runs[(runs["notebook"] == stem) & runs["test.accuracy"].notna() & (runs["method"] != "frozen-logreg")]
    mine = runs
    best = ""
    if len(mine):
        top = mine.loc[mine["test.accuracy"].astype(float).idxmax()]
        best = f"  best: {top['method']} {float(top['test.accuracy']):.2%} test accuracy"
    return f"{stem:<22}{minutes:>9}{best}{state}"
