"""The ``sslkit`` command line.

    sslkit run 01_supervised -p dataset hwu64 -p labeled 0.05   # one notebook -> reports/*.html
    sslkit book -p seed 1 --only 00_data,01_supervised           # the book, in order, + index
    sslkit index                                                 # rebuild reports/index.html
    sslkit predict reports/runs/<run_id> new.csv                 # new.predictions.csv
    sslkit pseudo-label tickets.csv --label-col intent           # fill blank labels in place
    sslkit suggest tickets.csv --n 50                            # mark the rows to label next
    sslkit sweep sweeps/default.yaml [--dry-run]                 # a grid of notebooks x parameters
    sslkit sweep sweeps/gpu.yaml --executor slurm --partition gpu  # one SLURM job per grid point

Exit codes: 0 done, 1 a notebook failed (its partial HTML is written), 2 bad input (message on
stderr, no traceback); an interrupted sweep exits 128 + the signal (130 Ctrl-C, 143 SIGTERM).
Heavy imports (torch, papermill) happen inside the subcommands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["main", "predict_file", "build_parser"]


# --------------------------------------------------------------------------- predict


def _default_output(file: Path) -> Path:
    return file.with_name(f"{file.stem}.predictions{file.suffix}")


def _checkpoint_dir(run_dir: Path) -> Path:
    from .backbones import SAVE_CONFIG

    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    if (run_dir / "checkpoint" / SAVE_CONFIG).is_file():
        return run_dir / "checkpoint"
    if (run_dir / SAVE_CONFIG).is_file():  # the checkpoint folder itself
        return run_dir
    raise ValueError(f"{run_dir}: no checkpoint/{SAVE_CONFIG} (was the run trained with "
                     "save_checkpoint=False?)")


def _write_table(frame, records: list[dict] | None, output: Path) -> None:
    """Write the predictions file atomically in the format of ``output``'s suffix."""
    ext = output.suffix.lower()
    from .runs import atomic_write_text

    if ext in (".csv", ".tsv"):
        atomic_write_text(output, frame.to_csv(index=False, sep="\t" if ext == ".tsv" else ","))
    elif ext == ".jsonl":
        rows = records if records is not None else frame.to_dict(orient="records")
        atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                          for r in rows))
    elif ext == ".xlsx":
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".xlsx")
        os.close(fd)
        try:
            frame.to_excel(tmp, index=False, engine="openpyxl")
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:  # checked before the model loads
        raise ValueError(f"{output}: unsupported output type '{output.suffix}'")


def _original_rows(file: Path, frame: Any) -> tuple[Any, list[dict] | None]:
    """The rows to write, in the file's own values (strings for CSV/TSV, typed cells for XLSX,
    the original objects for JSONL), so the output differs from the input only by the new columns."""
    import pandas as pd

    records: list[dict] | None = None
    ext = file.suffix.lower()
    if ext == ".xlsx":
        typed = pd.read_excel(file, sheet_name=0, engine="openpyxl")
        typed.columns = [str(c).strip() for c in typed.columns]
        if len(typed) == len(frame) and list(typed.columns) == list(frame.columns):
            frame = typed
    elif ext == ".jsonl":
        from .data import decode_text

        records = [json.loads(line) for line in decode_text(file).splitlines() if line.strip()]
        if len(records) != len(frame):  # pragma: no cover - same parse as read_table
            records = None
    return frame, records


def predict_file(
    run_dir: str | os.PathLike,
    file: str | os.PathLike,
    text_col: str = "text",
    output: str | os.PathLike | None = None,
    batch_size: int = 128,
    device: str | None = None,
) -> Path:
    """Label a CSV / TSV / XLSX / JSONL file with the checkpoint of a finished run.

    Writes the input's rows, in order, plus ``pred_label`` (the label name) and
    ``pred_confidence`` (the largest softmax probability) to ``output`` (default
    ``<stem>.predictions<suffix>`` beside the file; its suffix picks the format). The input is
    never overwritten. ``device``: default CUDA when available, else CPU. Returns the output path.
    """
    import numpy as np
    import torch

    from .backbones import load_saved_backbone
    from .devices import resolve_device
    from .data import EXTENSIONS, DataError, read_table
    from .inference import predict_logits

    file = Path(file)
    ckpt = _checkpoint_dir(Path(run_dir))
    out = Path(output) if output is not None else _default_output(file)
    if out.suffix.lower() not in EXTENSIONS:
        raise ValueError(f"{out}: unsupported output type '{out.suffix}'; use one of "
                         f"{', '.join(EXTENSIONS)}")
    if file.exists() and out.resolve() == file.resolve():
        raise ValueError(f"{out}: the output would overwrite the input file; choose another --output")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")

    table = read_table(file)  # DataError naming file / column / row (same rules as load_dataset)
    texts = table.column(text_col, "text")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        more = f" ({len(empty)} such rows in all)" if len(empty) > 1 else ""
        raise DataError(f"{table.where(empty[0], text_col)}: the text is empty{more}")

    frame, records = _original_rows(file, table.frame)
    model = load_saved_backbone(ckpt)
    names = list(model.info.label_names or [str(i) for i in range(model.num_labels)])
    if len(names) != model.num_labels:
        raise ValueError(f"{ckpt}: {len(names)} label names for {model.num_labels} classes")
    dev = resolve_device(device or "auto")
    model.to(dev)
    logits = predict_logits(model, texts, batch_size=batch_size)
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()
    pred = probs.argmax(1)
    labels = [names[k] for k in pred]
    conf = probs.max(1).astype(np.float64)

    frame = frame.copy()
    frame["pred_label"] = labels
    frame["pred_confidence"] = conf
    if records is not None and out.suffix.lower() == ".jsonl":
        records = [{**r, "pred_label": lab, "pred_confidence": float(c)}
                   for r, lab, c in zip(records, labels, conf)]
    else:
        records = None
    _write_table(frame, records, out)
    return out


# --------------------------------------------------------------------------- subcommands


def _parameters(pairs: list[list[str]] | None) -> dict:
    from .book import parse_value

    params: dict = {}
    for key, value in pairs or []:
        if not key.isidentifier():
            raise ValueError(f"parameter name '{key}' is not a Python identifier")
        params[key] = parse_value(value)
    return params


def _cmd_run(args: argparse.Namespace) -> int:
    from .book import build_index, notebook_line, resolve_notebook, run_notebook

    notebook = resolve_notebook(args.notebook, args.notebooks_dir)
    try:
        page = run_notebook(notebook, _parameters(args.param), args.reports, kernel=args.kernel,
                            progress=_show_progress(args))
    finally:
        build_index(args.reports)
    if not args.quiet:
        print(notebook_line(notebook.stem, args.reports), file=sys.stderr)
    print(page)
    return 0


def _show_progress(args: argparse.Namespace) -> bool:
    """Bars by default on a terminal; --quiet (or output that is not a terminal) turns them off."""
    return args.progress or (not args.quiet and sys.stderr.isatty())


def _cmd_book(args: argparse.Namespace) -> int:
    from .book import BOOK, book_notebooks, run_book

    notebooks = None
    if args.only:
        stems = [s.strip() for s in args.only.split(",") if s.strip()]
        available = {p.stem: p for p in book_notebooks(args.notebooks_dir)}
        unknown = [s for s in stems if s not in available]
        if unknown:
            raise ValueError(f"--only: {', '.join(unknown)} not in the book's notebooks under "
                             f"{args.notebooks_dir} ({', '.join(available) or 'none'})")
        notebooks = [available[s] for s in sorted(stems, key=BOOK.index)]
    pages = run_book(notebooks, args.reports, _parameters(args.param), progress=_show_progress(args),
                     stop_on_error=not args.keep_going, kernel=args.kernel,
                     notebooks_dir=args.notebooks_dir, quiet=args.quiet)
    for page in pages:
        print(page)
    from .runs import reports_dir

    print(reports_dir(args.reports) / "index.html")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    """The results table from the run records: reports/ablation.md and .csv, printed too."""
    from .ablation import write_ablation
    from .runs import load_runs

    _, md_path = write_ablation(load_runs(args.reports), args.reports)
    print(md_path.read_text(encoding="utf-8"))
    print(md_path, file=sys.stderr)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .book import build_index

    print(build_index(args.reports))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    print(predict_file(args.run_dir, args.file, text_col=args.text_col, output=args.output,
                       batch_size=args.batch_size, device=args.device))
    return 0


def _label_file_path(file: str) -> Path:
    """The label file argument of pseudo-label / suggest, refused early when its type is unknown."""
    from .data import EXTENSIONS, DataError

    path = Path(file)
    if path.suffix.lower() not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of "
                        f"{', '.join(EXTENSIONS)}")
    return path


def _check_options(*checks: tuple[str, Any, bool]) -> None:
    """(flag, value, ok) triples: the first not ok is a ValueError naming the flag."""
    for name, value, ok in checks:
        if not ok:
            raise ValueError(f"{name}: invalid value {value}")


@contextmanager
def _reports_env(reports: str | None) -> Iterator[None]:
    """$SSLKIT_REPORTS set to ``reports`` (when given) while fit() names its run folder."""
    old = os.environ.get("SSLKIT_REPORTS")
    if reports is not None:
        os.environ["SSLKIT_REPORTS"] = str(reports)
    try:
        yield
    finally:
        if reports is not None:
            if old is None:
                os.environ.pop("SSLKIT_REPORTS", None)
            else:
                os.environ["SSLKIT_REPORTS"] = old


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    """Train self-training on the labeled rows of a file, write pseudo-labels into its blank rows."""
    from .data import DataError
    from .labelfile import check_label_file, write_pseudo_labels

    path = _label_file_path(args.file)
    _check_options(("--epochs", args.epochs, args.epochs >= 1),
                   ("--rounds-top-k", args.top_k, 0 < args.top_k <= 1),
                   ("--max-length", args.max_length, args.max_length >= 8),
                   ("--strong-noise", args.strong_noise, 0 <= args.strong_noise < 1),
                   ("--unlabeled-ratio", args.unlabeled_ratio, args.unlabeled_ratio >= 1))
    # every check of the file that the write-back will make, before a long training run
    import sslkit
    from .methods import FixMatch, SelfTraining
    from .thresholds import AdaptiveThreshold

    data = sslkit.load_dataset(path, text_col=args.text_col, label_col=args.label_col,
                               id_col=args.id_col)
    state = check_label_file(path, label_col=args.label_col, id_col=args.id_col)
    if state["blank"] == 0:
        print(f"{path}: no blank '{args.label_col}' cells; nothing to pseudo-label")
        return 0
    budget = sslkit.split_budget(data)
    if budget.num_classes < 2:
        raise DataError(f"{path}: column '{args.label_col}' has {budget.num_classes} label name(s); "
                        "pseudo-labelling needs at least 2")

    model = sslkit.load_backbone(args.backbone, budget.num_classes, max_length=args.max_length)
    # --strong-noise > 0: FixMatch's per-step term on a token-noised copy, beside the rounds
    threshold = AdaptiveThreshold(tau0=args.tau0, margin=args.margin)
    method = FixMatch(threshold=threshold, top_k=args.top_k, strong_noise=args.strong_noise,
                      mu=args.unlabeled_ratio) if args.strong_noise else SelfTraining(threshold=threshold, top_k=args.top_k)
    with _reports_env(args.reports):  # fit() names its run folder under $SSLKIT_REPORTS
        result = sslkit.fit(model, budget, method, epochs=args.epochs, seed=args.seed, device=args.device,
                            progress=args.progress, batch_size=args.batch_size)
    pseudo = result.pseudo_labels()
    info = write_pseudo_labels(path, pseudo, label_col=args.label_col, id_col=args.id_col,
                               text_col=args.text_col)
    left = state["blank"] - info["written"]
    print(f"{path}: {info['written']} pseudo-label(s) written, {left} row(s) still blank"
          + (f", {info['skipped_human']} labeled by a person meanwhile (kept)"
             if info["skipped_human"] else ""))
    if info["written"]:
        print(f"rounds {info['round_offset']}..{info['round_offset'] + int(pseudo['round'].astype(int).max())}"
              " in column pseudo_round")
    if info["backup"] is not None:
        print(f"backup: {info['backup']}")
    print(f"run: {result.run_dir}")
    return 0


def _human_budget(data: Any, kinds: Sequence[str], path: Path, label_col: str) -> Any:
    """The file as a Budget whose training labels are the human labels alone; blank and
    pseudo-labeled rows form the pool, the candidates to suggest."""
    import numpy as np

    from .data import UNLABELED, DataError, DatasetSplits, TextDataset, split_budget

    train = data.train
    human = np.asarray([k == "human" for k in kinds], dtype=bool)
    present = {train.label_names[y] for y in train.labels[human]}
    names = [s for s in train.label_names if s in present]
    if len(names) < 2:
        raise DataError(f"{path}: column '{label_col}' has {len(names)} human label name(s); "
                        "suggest trains on the human labels and needs at least 2 (label a few "
                        "rows of each class by hand first)")
    index = {s: k for k, s in enumerate(names)}
    y = [index[train.label_names[c]] if h else UNLABELED for c, h in zip(train.labels, human)]
    ds = TextDataset(train.texts, np.asarray(y, dtype=np.int64), train.ids, names, train.idx,
                     train.name, train.source)
    return split_budget(DatasetSplits(data.name, ds, None, None, names))


def _content_tag(budget: Any) -> str:
    """A hash of the texts and labels the model learns from and of the pool it scores. In the run
    name it keys the run folder to the file's content (the run id hashes only counts and settings)."""
    import hashlib

    labeled = budget.labeled
    blob = json.dumps([labeled.texts, [budget.label_names[y] for y in labeled.labels],
                       budget.unlabeled.texts], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10]


def _cmd_suggest(args: argparse.Namespace) -> int:
    """Train on the human labels of a file, mark the rows a person should label next (label_next).

    The model learns from the human-labeled rows only (label_source other than "pseudo"): a
    person's labels and corrections weigh fully, and a pseudo-label run's own guesses do not decide
    which of them to check. The candidates are all the other rows, blank and pseudo-labeled (a
    person confirms or corrects those). ``fit(..., reuse=True)`` under a run name that holds
    :func:`_content_tag`: the same file content and settings load the finished model instead of
    training again, and so does a file changed only by pseudo-label runs (same human labels, same
    candidates).
    """
    import sslkit
    from .devices import resolve_device
    from .labelfile import read_label_file, write_suggestions
    from .query import STRATEGIES, query

    path = _label_file_path(args.file)
    if args.strategy not in STRATEGIES:
        raise ValueError(f"--strategy: unknown strategy '{args.strategy}'; known strategies: "
                         f"{', '.join(STRATEGIES)}")
    if args.n < 1:
        raise ValueError(f"--n: the number of rows to suggest must be >= 1, got {args.n}")
    _check_options(("--epochs", args.epochs, args.epochs >= 1),
                   ("--max-length", args.max_length, args.max_length >= 8),
                   ("--batch-size", args.batch_size, args.batch_size >= 1))
    # every check of the file that the write-back will make, before a long training run
    data = sslkit.load_dataset(path, text_col=args.text_col, label_col=args.label_col,
                               id_col=args.id_col)
    frame = read_label_file(path, label_col=args.label_col, id_col=args.id_col)
    kinds = frame["label_source"].tolist()
    if list(data.train.ids) != frame["id"].tolist():  # pragma: no cover - one file, read twice
        raise ValueError(f"{path}: could not read the rows the same way twice; not written")
    if kinds.count("human") == len(kinds):
        return _nothing_to_suggest(args, path)
    budget = _human_budget(data, kinds, path, args.label_col)

    model = sslkit.load_backbone(args.backbone, budget.num_classes, max_length=args.max_length)
    with _reports_env(args.reports):  # fit() names its run folder under $SSLKIT_REPORTS
        result = sslkit.fit(model, budget, "supervised", epochs=args.epochs, seed=args.seed,
                            device=args.device, progress=_show_progress(args),
                            batch_size=args.batch_size, reuse=True,
                            run_name=f"{budget.dataset}-suggest-{_content_tag(budget)}")
    result.model.to(resolve_device(args.device))  # a reused model loads on the CPU
    pool = budget.unlabeled
    chosen = query(result.model, pool.texts, args.n, strategy=args.strategy, seed=args.seed,
                   labeled=budget.labeled.texts)
    info = write_suggestions(path, [pool.ids[i] for i in chosen.indices],
                             texts=[pool.texts[i] for i in chosen.indices], label_col=args.label_col,
                             id_col=args.id_col, text_col=args.text_col)
    _report_suggestions(args, path, len(pool), info)
    print(f"run: {result.run_dir}")
    return 0


def _nothing_to_suggest(args: argparse.Namespace, path: Path) -> int:
    """Every row has a human label: say so. Marks left from an earlier run are cleared (a backup
    first); a file without any is not touched."""
    from .labelfile import write_suggestions

    info = write_suggestions(path, [], label_col=args.label_col, id_col=args.id_col)
    print(f"{path}: every row has a human label in column '{args.label_col}'; nothing to suggest"
          + (f" ({info['cleared']} old mark(s) cleared in column label_next)" if info["cleared"] else ""))
    if info["backup"] is not None:
        print(f"backup: {info['backup']}")
    return 0


def _report_suggestions(args: argparse.Namespace, path: Path, candidates: int, info: dict) -> None:
    """What suggest wrote, on stdout."""
    if args.n > candidates:
        print(f"--n {args.n} is more than the {candidates} row(s) without a human label; "
              f"all {candidates} are suggested")
    marked = info["marked"]
    print(f"{path}: {marked} row(s) to label next, numbered 1..{marked} in column label_next "
          f"(strategy {args.strategy}; {candidates} candidate row(s): blank or pseudo-labeled)")
    if info["skipped_human"]:
        print(f"{info['skipped_human']} chosen row(s) were labeled by a person during training "
              "(left unmarked)")
    if info["cleared"]:
        print(f"{info['cleared']} old mark(s) cleared")
    if not args.quiet:
        print("label them in order: fill the label cell; on a pseudo-labeled row also set "
              "label_source to human (the next pseudo-label / suggest run reads it as yours)")
    if info["backup"] is not None:
        print(f"backup: {info['backup']}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    import signal

    from .sweep import load_grid, run_sweep

    grid = load_grid(args.grid, args.notebooks_dir)
    if args.executor == "slurm":
        from .executors import SlurmSettings, submit_sweep

        settings = SlurmSettings.from_grid(grid.slurm, partition=args.partition,
                                           gpus_per_job=args.gpus_per_job, time=args.time,
                                           array_parallelism=args.array_parallelism)
        result = submit_sweep(grid, args.reports, kernel=args.kernel, settings=settings,
                              dry_run=args.dry_run, progress=args.progress)
    else:
        result = run_sweep(grid, args.reports, kernel=args.kernel, gpus=args.gpus,
                           dry_run=args.dry_run, progress=args.progress)
    if args.dry_run:
        return 0
    if result.signum is not None:
        print(f"sslkit sweep: interrupted by {signal.Signals(result.signum).name}; "
              f"{len(result.done)} point(s) finished in this run, {len(result.interrupted)} stopped "
              "(not marked done); run the same command again to continue", file=sys.stderr)
        return 128 + result.signum
    from .runs import reports_dir

    print(f"sweep {result.name}: {len(result.done)} run, {len(result.skipped)} skipped (done before), "
          f"{len(result.failed)} failed; {result.folder}")
    print(reports_dir(args.reports) / "index.html")
    if result.failed:
        for name, error in result.failed.items():
            print(f"sslkit sweep: {name} failed: {error}", file=sys.stderr)
        return 1
    return 0


def _add_book_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="a notebook parameter (repeatable); VALUE is parsed as int, float, "
                        "true/false/none, JSON, else text")
    p.add_argument("--reports", default=None,
                   help="reports folder (default $SSLKIT_REPORTS or ./reports)")
    p.add_argument("--notebooks-dir", default="notebooks", help="where the notebooks are")
    p.add_argument("--kernel", default="sslkit", help="Jupyter kernel name (default sslkit)")
    p.add_argument("--progress", action="store_true",
                   help="training progress bars even when the output is not a terminal")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no line per finished notebook")


#: subcommand -> handler.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run, "book": _cmd_book, "index": _cmd_index, "results": _cmd_results, "predict": _cmd_predict,
    "pseudo-label": _cmd_pseudo_label, "suggest": _cmd_suggest, "sweep": _cmd_sweep,
}


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="execute one notebook into reports/<name>.ipynb/.html")
    p.add_argument("notebook", help="a notebook path, stem (01_supervised) or unique prefix (01)")
    _add_book_options(p)


def _add_book(sub: Any) -> None:
    p = sub.add_parser("book", help="run the book's notebooks in order, then the index")
    p.add_argument("--only", default=None, help="comma-separated notebook stems, e.g. 00_data,01_supervised")
    p.add_argument("--keep-going", action="store_true",
                   help="run the remaining notebooks after one fails")
    _add_book_options(p)


def _add_sweep(sub: Any) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid of notebooks x parameters (papermill), skipping finished points",
        description="Run every point of a grid file (notebooks x parameter values, see "
                    "sweeps/default.yaml) with papermill: serially on a CPU, one worker per GPU "
                    "(CUDA_VISIBLE_DEVICES) otherwise. Executed copies, HTML, logs and a status "
                    "file per point go to REPORTS/sweeps/<grid>/; points marked done are skipped, "
                    "a failing point is recorded and the sweep goes on (exit 1 at the end). "
                    "Ctrl-C or SIGTERM stops the running kernels; run again to continue.")
    p.add_argument("grid", metavar="GRID.yaml", help="the grid file")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is skipped")
    p.add_argument("--reports", default=None,
                   help="reports folder (default $SSLKIT_REPORTS or ./reports)")
    p.add_argument("--notebooks-dir", default=None,
                   help="where notebook stems are looked up (default: the grid file's "
                        "notebooks_dir, else ./notebooks)")
    p.add_argument("--kernel", default="sslkit", help="Jupyter kernel name (default sslkit)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPU workers (default: every visible GPU; 0: one worker, no GPU assignment)")
    p.add_argument("--progress", action="store_true",
                   help="progress bars inside the notebooks (written to each point's .log)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: worker processes on this machine (default); slurm: one SLURM job "
                        "per point through submitit, resources from the grid file's slurm: "
                        "section and the flags below (docs/many_runs.md)")
    slurm = p.add_argument_group("SLURM resources (--executor slurm; override the grid's slurm:)")
    slurm.add_argument("--partition", default=None, help="SLURM partition")
    slurm.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job (default 1)")
    slurm.add_argument("--time", default=None,
                       help="time limit per job: minutes or SLURM's H:MM:SS, D-HH:MM (default 2:00:00)")
    slurm.add_argument("--array-parallelism", type=int, default=None,
                       help="jobs of the array running at once (default 16)")


def _add_index(sub: Any) -> None:
    p = sub.add_parser("index", help="rebuild reports/index.html")
    p.add_argument("--reports", default=None)


def _add_results(sub: Any) -> None:
    p = sub.add_parser("results", help="the results table (mean ± std over seeds) from the run records: "
                                       "reports/ablation.md and .csv")
    p.add_argument("--reports", default=None, help="reports folder (default $SSLKIT_REPORTS or ./reports)")


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="label a file with a run's checkpoint")
    p.add_argument("run_dir", help="reports/runs/<run_id> (or its checkpoint folder)")
    p.add_argument("file", help="a .csv / .tsv / .xlsx / .jsonl file")
    p.add_argument("--text-col", default="text")
    p.add_argument("--output", default=None,
                   help="output file (default <stem>.predictions<suffix> beside FILE)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto (cuda when available) / cpu / cuda")


def _add_pseudo_label(sub: Any) -> None:
    p = sub.add_parser(
        "pseudo-label",
        help="self-train on a file's labeled rows, write pseudo-labels into its blank rows",
        description="Train on the rows of DATA_FILE that have a label, pseudo-label the blank ones "
                    "(adaptive-threshold self-training) and write them back into the same file by "
                    "id, in its own label names. A backup copy is made first; labels already in "
                    "the file are never overwritten; columns label_source, pseudo_confidence and "
                    "pseudo_round record what was pseudo-labeled. Run it again to continue.")
    _add_label_file_options(p, "blank cells are the ones to fill")
    p.add_argument("--epochs", type=int, default=4, help="epochs = pseudo-label rounds")
    p.add_argument("--rounds-top-k", "--top-k", dest="top_k", type=float, default=0.1,
                   help="fraction of each class's accepted candidates kept per round")
    p.add_argument("--tau0", type=float, default=0.8, help="starting confidence threshold")
    p.add_argument("--margin", type=float, default=0.05, help="margin over the class threshold")
    p.add_argument("--strong-noise", type=float, default=0.0,
                   help="0: the exact rule (rounds only). > 0, e.g. 0.2: also train every step on the "
                        "unlabeled batch's pseudo-labels, the loss on a copy with this rate of token noise")
    p.add_argument("--unlabeled-ratio", type=int, default=1,
                   help="unlabeled texts per labeled one in a step (3 with --strong-noise 0.2: the best "
                        "measured setting on banking77, see the README)")
    _add_training_options(p)
    p.add_argument("--progress", action="store_true", help="show progress bars")


def _add_label_file_options(p: argparse.ArgumentParser, label_help: str) -> None:
    """The label file and its columns (pseudo-label, suggest)."""
    p.add_argument("file", metavar="DATA_FILE", help="a .csv / .tsv / .xlsx / .jsonl file")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label", help=label_help)
    p.add_argument("--id-col", default="id", help="a unique id per row (default id)")
    p.add_argument("--backbone", default="minilm", help="a preset name or a local model folder")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Training settings shared by pseudo-label and suggest."""
    p.add_argument("--batch-size", type=int, default=32, help="labeled texts per step")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto / cpu / cuda")
    p.add_argument("--reports", default=None,
                   help="reports folder for the run record (default $SSLKIT_REPORTS or ./reports)")


def _add_suggest(sub: Any) -> None:
    p = sub.add_parser(
        "suggest", help="mark the rows of a file a person should label next (column label_next)",
        description="Train a classifier on the human-labeled rows of DATA_FILE, score the other rows "
                    "(blank or pseudo-labeled) and number the N worth labeling next 1..N in column "
                    "label_next, in the same file (a backup copy first; only that column changes; "
                    "old marks are cleared). Label the marked rows: fill the label cell, and on a "
                    "pseudo-labeled row also set label_source to human. Then run pseudo-label or "
                    "suggest again. The same file content and settings reuse the trained model.")
    _add_label_file_options(p, "the label column (blank: unlabeled)")
    p.add_argument("--n", type=int, default=50, help="rows to mark (default 50)")
    p.add_argument("--strategy", default="hybrid",
                   help="hybrid (default: uncertain, diverse, balanced over predicted classes), "
                        "margin, entropy, least_confidence, kmeans_pp, coreset or random")
    p.add_argument("--epochs", type=int, default=6, help="supervised training epochs")
    _add_training_options(p)
    p.add_argument("--progress", action="store_true",
                   help="progress bars even when the output is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no how-to line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslkit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_book, _add_sweep, _add_index, _add_results, _add_predict, _add_pseudo_label,
                _add_suggest):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslkit`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error (argparse printed the message)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)

    from papermill.exceptions import PapermillExecutionError

    from .book import BookError

    try:
        return COMMANDS[args.command](args)
    except (PapermillExecutionError, BookError) as err:
        from .book import _describe_error

        what = _describe_error(err) if isinstance(err, PapermillExecutionError) else str(err)
        print(f"sslkit {args.command}: notebook failed: {what}", file=sys.stderr)
        print("the partial report is in the reports folder (see index.html)", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
        print(f"sslkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
