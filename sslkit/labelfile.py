"""Pseudo-labels written back into the user's own label file (CSV / TSV / XLSX / JSONL).

``write_pseudo_labels(path, pseudo)`` puts the labels a self-training run chose for blank rows
into the same file, matched by id, in the file's own label names. The rules:

- Only rows whose label cell is blank receive a pseudo-label; a label already in the file (typed
  by a person, or written by an earlier run) is never overwritten.
- Three columns are kept up to date (appended at the right when missing):
  ``label_source`` ("human" for a labeled row that was not pseudo-labeled, "pseudo" for a row
  pseudo-labeled now or by an earlier run, "" for a row still blank), ``pseudo_confidence`` and
  ``pseudo_round`` (blank for rows that are not pseudo-labeled). Rounds continue across runs: this
  run's round r is written as (largest ``pseudo_round`` already in the file) + 1 + r.
  A row whose label a person filled in after an earlier run (label_source "") becomes "human".
- Everything is checked before anything is written: a bad file (missing id or label column, a
  blank or duplicate id, a ``label_source`` / ``pseudo_round`` value that makes no sense) or a bad
  pseudo-label table (an id not in the file, a text that differs from the file's, a label that is
  not one of the file's human label names, a confidence outside [0, 1]) raises ``DataError``
  naming the file, the column and the row, and leaves the file byte-for-byte untouched.
- Then a backup copy ``<stem>.<YYYYmmdd-HHMMSS>.bak<suffix>`` is made beside the file (never
  replacing an older backup), and the new content is written to a temporary file in the same
  folder and renamed over the original (``os.replace``), so a crash leaves either the old or the
  new file, never half of one.

Formats: CSV / TSV are rewritten with every cell exactly as read (strings, ``keep_default_na``
off), the same separator, line ending and byte-order mark. XLSX cells are changed in place with
openpyxl on the first sheet; other sheets, other columns, cell types and styles stay as they were
(openpyxl does not keep images or charts: the backup does). JSONL records gain the keys; lines
that do not change are kept byte for byte.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .data import EXTENSIONS, DataError, Table, decode_text, read_table

__all__ = ["NEW_COLUMNS", "write_pseudo_labels", "check_label_file", "read_label_file",
           "label_sources", "backup_path"]

SOURCE, CONFIDENCE, ROUND = "label_source", "pseudo_confidence", "pseudo_round"
NEW_COLUMNS = (SOURCE, CONFIDENCE, ROUND)
HUMAN, PSEUDO = "human", "pseudo"
PSEUDO_COLUMNS = ("id", "label", "confidence", "round")


# --------------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """What the file holds (string view) and which cells change."""

    table: Table
    label_col: str
    id_col: str
    ids: list[str]
    labels: list[str]                      # stripped; "" = blank
    sources: list[str]                     # label_source as read, lower case ("" when absent)
    human_labels: list[str]                # sorted names of the human-labeled rows
    round_offset: int
    changes: dict[tuple[int, str], Any] = field(default_factory=dict)  # (row, column) -> value
    missing: list[str] = field(default_factory=list)                   # NEW_COLUMNS to append
    written: int = 0
    skipped_human: int = 0
    skipped_pseudo: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.missing)



def _as_float(value) -> float:
    """float(value), or NaN when it is not a number (the caller reports it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

def _cell(table: Table, col: str) -> list[str]:
    """A column of the string view, or all "" when the file lacks it."""
    if col in table.frame.columns:
        return table.frame[col].tolist()
    return [""] * len(table.frame)


def _parse_round(text: str, where: str) -> int | None:
    s = text.strip()
    if not s:
        return None
    try:
        value = float(s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise DataError(f"{where}: pseudo_round must be a whole number >= 0 or blank, got '{s}'")
    return int(value)


def _read_file(path: Path, label_col: str, id_col: str) -> _Plan:
    """Read and check the label file; the plan starts with no changes."""
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of "
                        f"{', '.join(EXTENSIONS)}")
    table = read_table(path)
    ids = [s.strip() for s in table.column(id_col, "id")]
    labels = [s.strip() for s in table.column(label_col, "label")]
    if id_col == label_col:
        raise DataError(f"{path}: the id column and the label column are both '{id_col}'")
    clash = [c for c in (id_col, label_col) if c in NEW_COLUMNS]
    if clash:
        raise DataError(f"{path}: column '{clash[0]}' is written by the pseudo-labeler; "
                        "choose another id / label column")
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
        if not v:
            raise DataError(f"{table.where(i, id_col)}: the id is empty; every row needs an id "
                            "so pseudo-labels can be written back")
        if v in seen:
            raise DataError(f"{table.where(i, id_col)}: duplicate id '{v}' "
                            f"(also in {table.unit} {table.rows[seen[v]]})")
        seen[v] = i

    sources = []
    for i, s in enumerate(_cell(table, SOURCE)):
        s = s.strip().lower()
        if s not in ("", HUMAN, PSEUDO):
            raise DataError(f"{table.where(i, SOURCE)}: label_source must be 'human', 'pseudo' "
                            f"or blank, got '{table.frame[SOURCE].iloc[i]}'")
        sources.append(s)
    rounds = [_parse_round(s, table.where(i, ROUND)) for i, s in enumerate(_cell(table, ROUND))]
    previous = [r for r in rounds if r is not None]
    human = sorted({lab for lab, src in zip(labels, sources) if lab and src != PSEUDO})

    plan = _Plan(table, label_col, id_col, ids, labels, sources, human,
                 round_offset=max(previous) + 1 if previous else 0,
                 missing=[c for c in NEW_COLUMNS if c not in table.frame.columns])
    old = {c: _cell(table, c) for c in NEW_COLUMNS}
    for i, (lab, src) in enumerate(zip(labels, sources)):
        if lab and src == PSEUDO:
            continue  # an earlier run's pseudo-label: keep its confidence and round as written
        want = {SOURCE: HUMAN if lab else "", CONFIDENCE: None, ROUND: None}
        for col, value in want.items():
            if _text(value) != old[col][i].strip() or (col == SOURCE and value != old[col][i]):
                plan.changes[(i, col)] = value
    return plan


def _text(value: Any) -> str:
    """The string a cell holds for ``value`` (None -> "")."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _apply_pseudo(plan: _Plan, pseudo: pd.DataFrame, text_col: str) -> None:
    """Check the pseudo-label table against the file and record the cells it fills."""
    path = plan.table.path
    if not isinstance(pseudo, pd.DataFrame):
        raise TypeError(f"pseudo must be a pandas DataFrame, got {type(pseudo).__name__}")
    missing = [c for c in PSEUDO_COLUMNS if c not in pseudo.columns]
    if missing:
        raise DataError(f"pseudo-label table: no column {', '.join(repr(c) for c in missing)} "
                        f"(needs {', '.join(PSEUDO_COLUMNS)}; has "
                        f"{', '.join(repr(str(c)) for c in pseudo.columns) or 'none'})")
    if len(pseudo) == 0:
        return
    where_of = {v: i for i, v in enumerate(plan.ids)}
    file_texts = _cell(plan.table, text_col) if text_col in plan.table.frame.columns else None
    known = set(plan.human_labels)
    shown = ", ".join(plan.human_labels[:20]) + (", ..." if len(plan.human_labels) > 20 else "")
    seen: dict[str, int] = {}
    todo = []
    for k, rec in enumerate(pseudo.to_dict(orient="records")):
        here = f"pseudo-label table, row {k + 1}"
        pid = "" if _blank(rec["id"]) else str(rec["id"]).strip()
        if not pid:
            raise DataError(f"{here}: the id is empty")
        if pid in seen:
            raise DataError(f"{here}: id '{pid}' appears twice (also row {seen[pid] + 1})")
        seen[pid] = k
        if pid not in where_of:
            raise DataError(f"{here}: id '{pid}' is not in {path} (column '{plan.id_col}'); "
                            "was the file changed during training?")
        i = where_of[pid]
        label = "" if _blank(rec["label"]) else str(rec["label"]).strip()
        if label not in known:
            raise DataError(f"{here} (id '{pid}'): label '{label}' is not one of the human labels "
                            f"in {path}, column '{plan.label_col}' ({shown or 'none'})")
        conf = _as_float(rec["confidence"])
        if not (0.0 <= conf <= 1.0):
            raise DataError(f"{here} (id '{pid}'): confidence must be a number in [0, 1], "
                            f"got {rec['confidence']!r}")
        rnd = _as_float(rec["round"])
        if not math.isfinite(rnd) or rnd != int(rnd) or rnd < 0:
            raise DataError(f"{here} (id '{pid}'): round must be a whole number >= 0, "
                            f"got {rec['round']!r}")
        if file_texts is not None and "text" in pseudo.columns and not _blank(rec["text"]):
            if " ".join(str(rec["text"]).split()) != " ".join(file_texts[i].split()):
                raise DataError(f"{here} (id '{pid}'): its text differs from "
                                f"{plan.table.where(i, text_col)}; was the file changed during "
                                "training, or is this table from another file?")
        todo.append((i, label, conf, int(rnd)))

    for i, label, conf, rnd in todo:
        if plan.labels[i]:
            if plan.sources[i] == PSEUDO:
                plan.skipped_pseudo += 1
            else:
                plan.skipped_human += 1
            continue
        plan.changes[(i, plan.label_col)] = label
        plan.changes[(i, SOURCE)] = PSEUDO
        plan.changes[(i, CONFIDENCE)] = conf
        plan.changes[(i, ROUND)] = plan.round_offset + rnd
        plan.written += 1


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


# --------------------------------------------------------------------------- writing


def backup_path(path: str | os.PathLike, when: float | None = None) -> Path:
    """A backup name beside ``path`` that does not exist yet: ``<stem>.<YYYYmmdd-HHMMSS>.bak<suffix>``
    (``-1``, ``-2``, ... appended to the time when that name is taken)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    k = 0
    while True:
        tag = stamp if k == 0 else f"{stamp}-{k}"
        candidate = path.with_name(f"{path.stem}.{tag}.bak{path.suffix}")
        if not candidate.exists():
            return candidate
        k += 1


def _backup(path: Path) -> Path:
    """Copy ``path`` to a new backup file; exclusive creation, so an older backup is never replaced."""
    while True:
        target = backup_path(path)
        try:
            with open(path, "rb") as src, open(target, "xb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
        except FileExistsError:  # taken between the check and the open: pick the next name
            continue
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        shutil.copystat(path, target)
        return target


def _atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, fsync, keep the file's mode, rename."""
    mode = stat.S_IMODE(path.stat().st_mode)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _render_csv(plan: _Plan) -> Callable[[Path], None]:
    """CSV / TSV: every cell as read, the changed cells, the new columns; same separator,
    line ending and byte-order mark."""
    path = plan.table.path
    raw_bytes = path.read_bytes()
    text = decode_text(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    raw = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                      skip_blank_lines=False, header=None)
    header = [str(h) for h in raw.iloc[0].fillna("").tolist()]
    body = raw.iloc[1:].reset_index(drop=True).fillna("").astype(object)
    body.columns = range(body.shape[1])
    if len(body) != len(plan.table.frame) or len(header) != plan.table.frame.shape[1]:
        raise DataError(f"{path}: could not read the file the same way twice; not written")
    position = {c: j for j, c in enumerate(plan.table.frame.columns)}
    for col in plan.missing:
        position[col] = len(header)
        body[len(header)] = ""
        header.append(col)
    for (i, col), value in plan.changes.items():
        body.iat[i, position[col]] = _text(value)
    body.columns = header
    newline = "\r\n" if "\r\n" in text else "\n"
    out = body.to_csv(index=False, sep=sep, lineterminator=newline)
    if raw_bytes.startswith(b"\xef\xbb\xbf"):
        out = "\ufeff" + out
    data = out.encode("utf-8")

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write


def _excel_str(value: Any) -> str:
    """A cell value as pandas' read_excel(dtype=str) shows it (for matching rows to ids)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _render_xlsx(plan: _Plan) -> Callable[[Path], None]:
    """XLSX: change cells in place on the first sheet; everything else stays as loaded."""
    import openpyxl

    path = plan.table.path
    try:
        wb = openpyxl.load_workbook(path)
    except Exception as e:  # pragma: no cover - read_table opened it a moment ago
        raise DataError(f"{path}: could not open as .xlsx ({type(e).__name__}: {e})") from None
    ws = wb.worksheets[0]
    columns = list(plan.table.frame.columns)
    column_of = {c: j + 1 for j, c in enumerate(columns)}  # pandas column j = sheet column j + 1
    for col in (plan.id_col, plan.label_col):
        head = ws.cell(row=1, column=column_of[col]).value
        if _excel_str(head).strip() != col:
            raise DataError(f"{path}: could not find column '{col}' in row 1 of sheet "
                            f"'{ws.title}'; not written")
    for i, pid in enumerate(plan.ids):  # pandas row i = sheet row i + 2
        cell = ws.cell(row=i + 2, column=column_of[plan.id_col])
        if cell.data_type != "f" and _excel_str(cell.value).strip() != pid:
            raise DataError(f"{path}: sheet '{ws.title}', row {i + 2}: could not match the rows "
                            f"to the ids in column '{plan.id_col}'; not written")
    typed = {}  # label name -> the cell value a human typed (keeps numbers numbers)
    for i in range(len(plan.ids)):
        value = ws.cell(row=i + 2, column=column_of[plan.label_col]).value
        if value is not None:
            typed.setdefault(_excel_str(value).strip(), value)
    if plan.missing:
        used = 0
        for row in ws.iter_rows(values_only=True):
            for j, v in enumerate(row, start=1):
                if v is not None and not (isinstance(v, str) and not v.strip()):
                    used = max(used, j)
        for k, col in enumerate(plan.missing):
            column_of[col] = used + 1 + k
            ws.cell(row=1, column=column_of[col], value=col)
    for (i, col), value in plan.changes.items():
        cell = ws.cell(row=i + 2, column=column_of[col])
        if cell.data_type == "f":
            raise DataError(f"{path}: sheet '{ws.title}', row {i + 2}, column '{col}' holds a "
                            "formula; not overwritten (clear it or move it)")
        if col == plan.label_col:
            value = typed.get(value, value)
        cell.value = None if value == "" else value

    def write(tmp: Path) -> None:
        wb.save(tmp)

    return write


def _render_jsonl(plan: _Plan) -> Callable[[Path], None]:
    """JSONL: records gain the new keys; unchanged lines are kept byte for byte."""
    path = plan.table.path
    raw_bytes = path.read_bytes()
    lines = decode_text(path).splitlines(keepends=True)
    row_of_line = {n: i for i, n in enumerate(plan.table.rows)}
    typed: dict[str, Any] = {}
    for line in lines:
        if line.strip():
            value = json.loads(line).get(plan.label_col)
            if value is not None:
                s = value if isinstance(value, str) else json.dumps(value)
                typed.setdefault(s.strip(), value)
    by_row: dict[int, dict[str, Any]] = {}
    for (i, col), value in plan.changes.items():
        by_row.setdefault(i, {})[col] = value
    out = []
    for n, line in enumerate(lines, start=1):
        if n not in row_of_line:
            out.append(line)
            continue
        i = row_of_line[n]
        rec = json.loads(line)
        before = dict(rec)
        for col in NEW_COLUMNS:
            rec.setdefault(col, "" if col == SOURCE else None)
        for col, value in by_row.get(i, {}).items():
            rec[col] = typed.get(value, value) if col == plan.label_col else value
        if rec == before and list(rec) == list(before):
            out.append(line)
        else:
            body = line.rstrip("\r\n")
            end = line[len(body):]
            out.append(json.dumps(rec, ensure_ascii=False) + end)
    data = "".join(out).encode("utf-8")
    if raw_bytes.startswith(b"\xef\xbb\xbf"):
        data = b"\xef\xbb\xbf" + data

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write


_RENDER = {".csv": _render_csv, ".tsv": _render_csv, ".xlsx": _render_xlsx, ".jsonl": _render_jsonl}


# --------------------------------------------------------------------------- public API


def check_label_file(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> dict:
    """Check that pseudo-labels could be written back into ``path`` (before a long training run).

    Raises ``DataError`` for a bad file; returns {"rows", "blank", "human_labels", "round_offset"}.
    """
    plan = _read_file(Path(path), label_col, id_col)
    return {"rows": len(plan.ids), "blank": sum(not s for s in plan.labels),
            "human_labels": plan.human_labels, "round_offset": plan.round_offset}


def write_pseudo_labels(path: str | os.PathLike, pseudo: pd.DataFrame, *, label_col: str = "label",
                        id_col: str = "id", text_col: str = "text", backup: bool = True) -> dict:
    """Write ``pseudo`` into the blank label cells of ``path``, matched by id (see the module doc).

    ``pseudo`` has columns ``id`` (str), ``label`` (a label name of the file), ``confidence``
    (float in [0, 1]) and ``round`` (this run's 0-based round); an optional ``text`` column is
    checked against the file's ``text_col``. Everything is validated first, then the file is backed
    up (``backup=True``) and replaced atomically. Nothing is written, and no backup made, when
    nothing would change.

    Returns {"written", "skipped_human", "skipped_pseudo", "backup" (path or None),
    "round_offset"}: rows filled now, table rows skipped because the file already labels them
    (by a person / by an earlier run), and the number added to this run's rounds.
    """
    path = Path(path)
    plan = _read_file(path, label_col, id_col)
    _apply_pseudo(plan, pseudo, text_col)
    result = {"written": plan.written, "skipped_human": plan.skipped_human,
              "skipped_pseudo": plan.skipped_pseudo, "backup": None,
              "round_offset": plan.round_offset}
    if not plan.changed:
        return result
    write = _RENDER[path.suffix.lower()](plan)  # may still refuse (DataError): nothing written yet
    if backup:
        result["backup"] = _backup(path)
    _atomic_replace(path, write)
    return result


def read_label_file(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> pd.DataFrame:
    """id, label ("" = blank), label_source, pseudo_confidence (float / NaN), pseudo_round
    (nullable int) of every row, in file order; label_source is derived ("human" / "") for a file
    that has never been pseudo-labeled."""
    plan = _read_file(Path(path), label_col, id_col)
    table = plan.table
    if SOURCE in table.frame.columns:
        source = plan.sources
    else:
        source = [HUMAN if lab else "" for lab in plan.labels]
    conf = pd.to_numeric(pd.Series(_cell(table, CONFIDENCE), dtype=object), errors="coerce")
    rounds = [_parse_round(s, table.where(i, ROUND)) for i, s in enumerate(_cell(table, ROUND))]
    return pd.DataFrame({"id": plan.ids, "label": plan.labels, SOURCE: source,
                         CONFIDENCE: conf.astype(float).to_numpy(),
                         ROUND: pd.array(rounds, dtype="Int64")})


def label_sources(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> pd.Series:
    """label_source ("human" / "pseudo" / "") of every row, indexed by id."""
    frame = read_label_file(path, label_col=label_col, id_col=id_col)
    return pd.Series(frame[SOURCE].to_numpy(), index=pd.Index(frame["id"], name="id"), name=SOURCE)
