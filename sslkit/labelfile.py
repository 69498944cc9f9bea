"""The user's own label file (CSV / TSV / XLSX / JSONL) as the record of an annotation loop.

Two commands write into the file a person keeps labelling, so neither may lose a cell of it:
``write_pseudo_labels(path, pseudo)`` (``sslkit pseudo-label``) fills blank rows with the labels a
self-training run chose, and ``write_suggestions(path, ids)`` (``sslkit suggest``) marks the rows a
person should label next. Both share one path: read and check the file, plan the changed cells,
back up, replace atomically. The rules:

- Only rows whose label cell is blank receive a pseudo-label; a label already in the file (typed
  by a person, or written by an earlier run) is never overwritten.
- Three columns are kept up to date by ``pseudo-label`` (appended at the right when missing):
  ``label_source`` ("human" for a labeled row that was not pseudo-labeled, "pseudo" for a row
  pseudo-labeled now or by an earlier run, "" for a row still blank), ``pseudo_confidence`` and
  ``pseudo_round`` (blank for rows that are not pseudo-labeled). Rounds continue across runs: this
  run's round r is written as (largest ``pseudo_round`` already in the file) + 1 + r.
- ``suggest`` writes only the column ``label_next``: 1, 2, ... on the rows to label next, in that
  order, blank elsewhere. Every run clears the column and writes it anew, so a mark on a row that
  has a human label since is gone after the next run. Candidates are the rows without a human
  label: blank rows and pseudo-labeled rows (a person may confirm or correct those).
- The recording rule for a person's work: ``label_source`` decides. A filled label cell whose
  ``label_source`` is not "pseudo" is a human label, so filling a blank row is all it takes (the
  next ``pseudo-label`` run writes "human" into its ``label_source``); to confirm or correct a
  pseudo-label, write the label and set ``label_source`` to "human" (clearing it works the same).
  A label changed while ``label_source`` still says "pseudo" stays a pseudo-label. Both commands
  read the file by this rule, ``pseudo-label`` never writes into a row with a label, and
  ``suggest`` never marks a human-labeled row.
- Everything is checked before anything is written: a bad file (missing id or label column, a
  blank or duplicate id, a ``label_source`` / ``pseudo_round`` value that makes no sense) or a bad
  pseudo-label table / suggestion list (an id not in the file, a text that differs from the
  file's, a label that is not one of the file's human label names, a confidence outside [0, 1])
  raises ``DataError`` naming the file, the column and the row, and leaves the file byte-for-byte
  untouched.
- Then a backup copy ``<stem>.<YYYYmmdd-HHMMSS>.bak<suffix>`` is made beside the file (never
  replacing an older backup), and the new content is written to a temporary file in the same
  folder and renamed over the original (``os.replace``), so a crash leaves either the old or the
  new file, never half of one. When no cell would change, nothing is written and no backup made.

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
from typing import Any, Callable, Sequence

import pandas as pd

from .data import EXTENSIONS, DataError, Table, decode_text, read_table

__all__ = ["NEW_COLUMNS", "NEXT", "write_pseudo_labels", "write_suggestions", "check_label_file",
           "read_label_file", "label_sources", "backup_path"]

SOURCE, CONFIDENCE, ROUND = "label_source", "pseudo_confidence", "pseudo_round"
NEW_COLUMNS = (SOURCE, CONFIDENCE, ROUND)  # pseudo-label's columns
NEXT = "label_next"                        # suggest's column
OWN_COLUMNS = (*NEW_COLUMNS, NEXT)         # written by sslkit: never an id or label column
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
    owned: tuple[str, ...] = ()                                        # the columns this write keeps
    missing: list[str] = field(default_factory=list)                   # owned columns to append
    written: int = 0
    skipped_human: int = 0
    skipped_pseudo: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.missing)

    @property
    def kinds(self) -> list[str]:
        """Each row's label by the recording rule: HUMAN, PSEUDO, or "" when blank."""
        return ["" if not lab else PSEUDO if src == PSEUDO else HUMAN
                for lab, src in zip(self.labels, self.sources)]

    def own(self, columns: tuple[str, ...]) -> None:
        """This write keeps ``columns`` (appended at the right when the file lacks them)."""
        self.owned = columns
        self.missing = [c for c in columns if c not in self.table.frame.columns]



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
    clash = [c for c in (id_col, label_col) if c in OWN_COLUMNS]
    if clash:
        raise DataError(f"{path}: column '{clash[0]}' is written by sslkit (pseudo-label / "
                        "suggest); choose another id / label column")
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

    return _Plan(table, label_col, id_col, ids, labels, sources, human,
                 round_offset=max(previous) + 1 if previous else 0)


def _tidy_sources(plan: _Plan) -> None:
    """pseudo-label's bookkeeping: label_source by the recording rule, no confidence or round on a
    row that is not pseudo-labeled (a person's label, or a rejected pseudo-label made blank)."""
    plan.own(NEW_COLUMNS)
    old = {c: _cell(plan.table, c) for c in NEW_COLUMNS}
    for i, kind in enumerate(plan.kinds):
        if kind == PSEUDO:
            continue  # an earlier run's pseudo-label: keep its confidence and round as written
        want = {SOURCE: kind, CONFIDENCE: None, ROUND: None}
        for col, value in want.items():
            if _text(value) != old[col][i].strip() or (col == SOURCE and value != old[col][i]):
                plan.changes[(i, col)] = value


def _text(value: Any) -> str:
    """The string a cell holds for ``value`` (None -> "")."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _match_rows(plan: _Plan, records: list[dict], what: str, text_col: str) -> list[int]:
    """The file row of each record's ``id``; an empty, repeated or unknown id, or a ``text`` that
    differs from the file's (when the record has one), raises DataError naming record and row."""
    path = plan.table.path
    where_of = {v: i for i, v in enumerate(plan.ids)}
    file_texts = _cell(plan.table, text_col) if text_col in plan.table.frame.columns else None
    seen: dict[str, int] = {}
    rows = []
    for k, rec in enumerate(records):
        here = f"{what}, row {k + 1}"
        pid = "" if _blank(rec.get("id")) else str(rec["id"]).strip()
        if not pid:
            raise DataError(f"{here}: the id is empty")
        if pid in seen:
            raise DataError(f"{here}: id '{pid}' appears twice (also row {seen[pid] + 1})")
        seen[pid] = k
        if pid not in where_of:
            raise DataError(f"{here}: id '{pid}' is not in {path} (column '{plan.id_col}'); "
                            "was the file changed during training?")
        i = where_of[pid]
        text = rec.get("text")
        if file_texts is not None and not _blank(text):
            if " ".join(str(text).split()) != " ".join(file_texts[i].split()):
                raise DataError(f"{here} (id '{pid}'): its text differs from "
                                f"{plan.table.where(i, text_col)}; was the file changed during "
                                "training, or is this table from another file?")
        rows.append(i)
    return rows


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
    records = pseudo.to_dict(orient="records")
    rows = _match_rows(plan, records, "pseudo-label table", text_col)
    known = set(plan.human_labels)
    shown = ", ".join(plan.human_labels[:20]) + (", ..." if len(plan.human_labels) > 20 else "")
    todo = []
    for k, (i, rec) in enumerate(zip(rows, records)):
        here = f"pseudo-label table, row {k + 1} (id '{plan.ids[i]}')"
        label = "" if _blank(rec["label"]) else str(rec["label"]).strip()
        if label not in known:
            raise DataError(f"{here}: label '{label}' is not one of the human labels "
                            f"in {path}, column '{plan.label_col}' ({shown or 'none'})")
        conf = _as_float(rec["confidence"])
        if not (0.0 <= conf <= 1.0):
            raise DataError(f"{here}: confidence must be a number in [0, 1], "
                            f"got {rec['confidence']!r}")
        rnd = _as_float(rec["round"])
        if not math.isfinite(rnd) or rnd != int(rnd) or rnd < 0:
            raise DataError(f"{here}: round must be a whole number >= 0, got {rec['round']!r}")
        todo.append((i, label, conf, int(rnd)))

    kinds = plan.kinds
    for i, label, conf, rnd in todo:
        if kinds[i]:  # labeled in the file: never overwritten
            if kinds[i] == PSEUDO:
                plan.skipped_pseudo += 1
            else:
                plan.skipped_human += 1
            continue
        plan.changes[(i, plan.label_col)] = label
        plan.changes[(i, SOURCE)] = PSEUDO
        plan.changes[(i, CONFIDENCE)] = conf
        plan.changes[(i, ROUND)] = plan.round_offset + rnd
        plan.written += 1


def _suggest(plan: _Plan, records: list[dict], text_col: str) -> dict:
    """Number the records' rows 1, 2, ... in ``label_next`` and clear every other mark; a row a
    person has labeled (read now) is left out and the numbers close up."""
    plan.own((NEXT,))
    rows = _match_rows(plan, records, "suggestion list", text_col)
    kinds = plan.kinds
    chosen = [i for i in rows if kinds[i] != HUMAN]
    rank = {i: k + 1 for k, i in enumerate(chosen)}
    if not chosen:
        plan.missing = []  # no marks: a file without the column does not gain it
    old = [v.strip() for v in _cell(plan.table, NEXT)]
    for i, before in enumerate(old):
        value = rank.get(i)
        if _text(value) != before:
            plan.changes[(i, NEXT)] = value
    return {"marked": len(chosen), "skipped_human": len(rows) - len(chosen),
            "cleared": sum(1 for i, before in enumerate(old) if before and i not in rank)}


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
        for col in plan.owned:
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


def _commit(plan: _Plan, backup: bool) -> Path | None:
    """Write the plan's changes: render first (it may still refuse, before anything is written),
    then the backup, then the atomic replace. Returns the backup (None: none made, or no change)."""
    if not plan.changed:
        return None
    path = plan.table.path
    write = _RENDER[path.suffix.lower()](plan)
    saved = _backup(path) if backup else None
    _atomic_replace(path, write)
    return saved


# --------------------------------------------------------------------------- public API


def check_label_file(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> dict:
    """Check that pseudo-labels or suggestions could be written back into ``path`` (before a long
    training run).

    Raises ``DataError`` for a bad file; returns {"rows", "blank", "human", "pseudo",
    "human_labels", "round_offset"}: row counts by the recording rule, the sorted label names of
    the human-labeled rows, and the number the next pseudo-label run adds to its rounds.
    """
    plan = _read_file(Path(path), label_col, id_col)
    kinds = plan.kinds
    return {"rows": len(plan.ids), "blank": kinds.count(""), "human": kinds.count(HUMAN),
            "pseudo": kinds.count(PSEUDO), "human_labels": plan.human_labels,
            "round_offset": plan.round_offset}


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
    plan = _read_file(Path(path), label_col, id_col)
    _tidy_sources(plan)
    _apply_pseudo(plan, pseudo, text_col)
    return {"written": plan.written, "skipped_human": plan.skipped_human,
            "skipped_pseudo": plan.skipped_pseudo, "backup": _commit(plan, backup),
            "round_offset": plan.round_offset}


def write_suggestions(path: str | os.PathLike, ids: Sequence[str], *, texts: Sequence[str] | None = None,
                      label_col: str = "label", id_col: str = "id", text_col: str = "text",
                      backup: bool = True) -> dict:
    """Mark the rows of ``ids`` 1, 2, ... in column ``label_next`` of ``path`` (the order in which
    to label them) and clear every other mark (see the module doc).

    A row with a human label in the file as it is now is not marked (the numbers close up); an
    empty, repeated or unknown id, or a text in ``texts`` (optional, one per id) that differs from
    the file's ``text_col``, raises DataError before anything is written. The file is backed up
    (``backup=True``) and replaced atomically; nothing is written when no mark changes.

    Returns {"marked", "skipped_human", "cleared" (old marks removed from rows not marked now),
    "backup" (path or None)}.
    """
    ids = list(ids)
    if texts is not None and len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts for {len(ids)} ids")
    records = [{"id": v, "text": None if texts is None else texts[k]} for k, v in enumerate(ids)]
    plan = _read_file(Path(path), label_col, id_col)
    info = _suggest(plan, records, text_col)
    return {**info, "backup": _commit(plan, backup)}


def read_label_file(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> pd.DataFrame:
    """id, label ("" = blank), label_source, pseudo_confidence (float / NaN), pseudo_round and
    label_next (nullable ints) of every row, in file order, after every check of
    ``check_label_file``. label_source is the recording rule's reading ("human" / "pseudo" / ""),
    not the cell: a label a person filled in reads "human" before any run has written that."""
    plan = _read_file(Path(path), label_col, id_col)
    table = plan.table
    conf = pd.to_numeric(pd.Series(_cell(table, CONFIDENCE), dtype=object), errors="coerce")
    rounds = [_parse_round(s, table.where(i, ROUND)) for i, s in enumerate(_cell(table, ROUND))]
    marks = pd.to_numeric(pd.Series(_cell(table, NEXT), dtype=object), errors="coerce")
    marks = [int(v) if math.isfinite(v) and v == int(v) else None for v in marks.astype(float)]
    return pd.DataFrame({"id": plan.ids, "label": plan.labels, SOURCE: plan.kinds,
                         CONFIDENCE: conf.astype(float).to_numpy(),
                         ROUND: pd.array(rounds, dtype="Int64"), NEXT: pd.array(marks, dtype="Int64")})


def label_sources(path: str | os.PathLike, *, label_col: str = "label", id_col: str = "id") -> pd.Series:
    """label_source ("human" / "pseudo" / "") of every row, indexed by id."""
    frame = read_label_file(path, label_col=label_col, id_col=id_col)
    return pd.Series(frame[SOURCE].to_numpy(), index=pd.Index(frame["id"], name="id"), name=SOURCE)
