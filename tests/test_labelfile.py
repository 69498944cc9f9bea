"""Pseudo-labels written back into the user's own file: round trips, safety, bad files, the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from sslkit.data import DataError
from sslkit.labelfile import (NEW_COLUMNS, backup_path, check_label_file, label_sources,
                              read_label_file, write_pseudo_labels)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "example_intents.csv"

ROWS = [  # id, text, label ("" = blank), extra column
    ("r1", "refund my order, please", "A", "x1"),
    ("r2", "where is my parcel", "B", "007"),
    ("r3", "cancel it now", "", "  spaced  "),
    ("r4", "password reset link broken", "C", ""),
    ("r5", "money back for the lamp", "", "NA"),
    ("r6", "has it shipped", "", "1,5"),
    ("r7", "refund, twice charged", "A", "null"),
]


def _pseudo(*rows) -> pd.DataFrame:
    """(id, label, confidence, round) rows -> the table the trainer writes (id as str)."""
    return pd.DataFrame(rows, columns=["id", "label", "confidence", "round"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _others(path: Path) -> list[str]:
    """Every file in the folder except ``path`` itself (backups, temporary files)."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def _write_csv(path: Path, sep: str = ",", newline: str = "\n", bom: bool = False) -> Path:
    lines = [sep.join(["id", "text", "label", "note"])]
    for rid, text, label, note in ROWS:
        cells = [rid, text, label, note]
        lines.append(sep.join(f'"{c}"' if sep in c or '"' in c else c for c in cells))
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))
    return path


def _read_strings(path: Path) -> pd.DataFrame:
    sep = "\t" if path.suffix == ".tsv" else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _write_xlsx(path: Path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "tickets"
    ws.append(["id", "text", "label", "amount", "note"])
    for k, (rid, text, label, note) in enumerate(ROWS):
        ws.append([rid, text, label or None, 10.5 * (k + 1), note or None])
    ws["D2"].number_format = "0.00"
    other = wb.create_sheet("summary")
    other["A1"] = "kept as is"
    other["B2"] = 42
    other["C3"] = "=B2*2"
    wb.save(path)
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("sep, suffix, newline, bom", [
    (",", ".csv", "\n", False), ("\t", ".tsv", "\n", False), (",", ".csv", "\r\n", True),
])
def test_csv_tsv_round_trip(tmp_path, sep, suffix, newline, bom):
    path = _write_csv(tmp_path / f"tickets{suffix}", sep, newline, bom)
    before = _read_strings(path)
    info = write_pseudo_labels(path, _pseudo(("r3", "A", 0.91, 0), ("r5", "A", 0.8, 1)))
    assert info["written"] == 2 and info["skipped_human"] == 0 and info["round_offset"] == 0
    assert Path(info["backup"]).read_bytes() != path.read_bytes()

    after = _read_strings(path)
    assert list(after.columns) == list(before.columns) + list(NEW_COLUMNS)
    assert len(after) == len(before)
    # every original cell as read (leading zeros, "NA", "null", spaces, separators), in order
    for col in ("id", "text", "note"):
        assert after[col].tolist() == before[col].tolist()
    assert after["label"].tolist() == ["A", "B", "A", "C", "A", "", "A"]
    assert after["label_source"].tolist() == ["human", "human", "pseudo", "human", "pseudo", "",
                                              "human"]
    assert after["pseudo_round"].tolist() == ["", "", "0", "", "1", "", ""]
    assert float(after["pseudo_confidence"][2]) == pytest.approx(0.91)
    assert after["pseudo_confidence"][[0, 1, 3, 5, 6]].tolist() == [""] * 5
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == bom
    assert (b"\r\n" in raw) == (newline == "\r\n")


def test_xlsx_round_trip_keeps_other_sheets_columns_and_types(tmp_path):
    path = _write_xlsx(tmp_path / "tickets.xlsx")
    info = write_pseudo_labels(path, _pseudo(("r3", "B", 0.75, 0), ("r6", "C", 0.66, 0)))
    assert info["written"] == 2 and Path(info["backup"]).exists()

    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["tickets", "summary"]
    other = wb["summary"]
    assert (other["A1"].value, other["B2"].value, other["C3"].value) == ("kept as is", 42, "=B2*2")
    ws = wb["tickets"]
    header = [c.value for c in ws[1]]
    assert header == ["id", "text", "label", "amount", "note", *NEW_COLUMNS]
    rows = list(ws.iter_rows(min_row=2, values_only=True))
    assert len(rows) == len(ROWS)
    for k, (row, (rid, text, label, note)) in enumerate(zip(rows, ROWS)):
        assert row[:2] == (rid, text)
        assert row[3] == 10.5 * (k + 1)  # a number stays a number
        assert row[4] == (note or None)
    assert ws["D2"].number_format == "0.00"
    assert [r[2] for r in rows] == ["A", "B", "B", "C", None, "C", "A"]
    assert [r[5] for r in rows] == ["human", "human", "pseudo", "human", None, "pseudo", "human"]
    assert rows[2][6] == pytest.approx(0.75) and rows[2][7] == 0
    assert rows[0][6] is None and rows[0][7] is None

    frame = pd.read_excel(path, dtype=str, keep_default_na=False)  # what load_dataset will see
    assert frame["label"].tolist() == ["A", "B", "B", "C", "", "C", "A"]


def test_jsonl_round_trip_keeps_unchanged_lines(tmp_path):
    path = tmp_path / "tickets.jsonl"
    recs = [{"id": rid, "text": text, "label": label or None, "n": k}
            for k, (rid, text, label, _) in enumerate(ROWS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    write_pseudo_labels(path, _pseudo(("r5", "C", 0.5, 0)))
    out = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in recs]
    assert [r["n"] for r in out] == list(range(len(ROWS)))
    assert out[4]["label"] == "C" and out[4]["label_source"] == "pseudo"
    assert out[4]["pseudo_round"] == 0 and out[4]["pseudo_confidence"] == 0.5
    assert out[2]["label"] is None and out[2]["label_source"] == ""
    assert out[0]["label_source"] == "human" and out[0]["pseudo_round"] is None


# --------------------------------------------------------------------------- the rules


def test_human_labels_are_never_overwritten(tmp_path):
    path = _write_csv(tmp_path / "tickets.csv")
    info = write_pseudo_labels(path, _pseudo(("r1", "B", 0.99, 0), ("r3", "C", 0.9, 0)))
    assert info["written"] == 1 and info["skipped_human"] == 1
    after = _read_strings(path)
    assert after.loc[0, "label"] == "A" and after.loc[0, "label_source"] == "human"
    assert after.loc[0, "pseudo_confidence"] == "" and after.loc[0, "pseudo_round"] == ""
    assert after.loc[2, "label"] == "C"

    # an earlier run's pseudo-label is not replaced either
    info = write_pseudo_labels(path, _pseudo(("r3", "A", 0.99, 0), ("r5", "A", 0.9, 0)))
    assert info["written"] == 1 and info["skipped_pseudo"] == 1 and info["skipped_human"] == 0
    after = _read_strings(path)
    assert after.loc[2, "label"] == "C" and after.loc[2, "pseudo_round"] == "0"


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_rounds_continue_across_runs(tmp_path, suffix):
    path = _write_csv(tmp_path / "t.csv") if suffix == ".csv" else _write_xlsx(tmp_path / "t.xlsx")
    first = write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0), ("r5", "B", 0.8, 1)))
    assert first["round_offset"] == 0
    second = write_pseudo_labels(path, _pseudo(("r6", "C", 0.7, 0)))
    assert second["round_offset"] == 2 and second["written"] == 1

    state = read_label_file(path)
    assert [None if pd.isna(v) else int(v) for v in state["pseudo_round"]] == \
        [None, None, 0, None, 1, 2, None]
    assert state["label"].tolist() == ["A", "B", "A", "C", "B", "C", "A"]
    assert label_sources(path).to_dict() == {
        "r1": "human", "r2": "human", "r3": "pseudo", "r4": "human", "r5": "pseudo",
        "r6": "pseudo", "r7": "human"}
    assert check_label_file(path)["round_offset"] == 3
    assert len({first["backup"], second["backup"]}) == 2


def test_label_filled_in_by_a_person_between_runs_becomes_human(tmp_path):
    path = _write_csv(tmp_path / "tickets.csv")
    write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    frame = _read_strings(path)
    frame.loc[5, "label"] = "B"  # r6 labeled by hand afterwards
    frame.to_csv(path, index=False)
    write_pseudo_labels(path, _pseudo(("r5", "C", 0.6, 0)))
    after = _read_strings(path)
    assert after["label_source"].tolist() == ["human", "human", "pseudo", "human", "pseudo",
                                              "human", "human"]
    assert after["pseudo_round"].tolist() == ["", "", "0", "", "1", "", ""]


def test_pseudo_label_table_from_the_trainer_is_accepted(tmp_path):
    """The run's pseudo_labels.csv read back as text: extra columns, numbers as strings."""
    path = _write_csv(tmp_path / "tickets.csv")
    run = tmp_path / "pseudo_labels.csv"
    pd.DataFrame({"idx": [2, 4], "id": ["r3", "r5"], "text": [ROWS[2][1], ROWS[4][1]],
                  "label": ["A", "B"], "confidence": [0.93, 0.81], "weight": [1.0, 1.0],
                  "round": [0, 0], "epoch": [1, 1], "gold": ["", ""]}).to_csv(run, index=False)
    pseudo = pd.read_csv(run, dtype=str, keep_default_na=False)
    assert write_pseudo_labels(path, pseudo)["written"] == 2


def test_numeric_labels_stay_numbers_in_xlsx(tmp_path):
    path = tmp_path / "numbers.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["id", "text", "label"])
    ws.append([1, "a", 1])
    ws.append([2, "b", 2])
    ws.append([3, "c", None])
    wb.save(path)
    write_pseudo_labels(path, _pseudo(("3", "2", 0.7, 0)))
    assert openpyxl.load_workbook(path).active["C4"].value == 2


def test_nothing_to_change_writes_nothing(tmp_path):
    path = _write_csv(tmp_path / "tickets.csv")
    write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    digest, files = _sha(path), _others(path)
    info = write_pseudo_labels(path, _pseudo())
    assert info["written"] == 0 and info["backup"] is None
    assert _sha(path) == digest and _others(path) == files


# --------------------------------------------------------------------------- safety


def test_backups_are_unique_and_keep_each_version(tmp_path):
    path = _write_csv(tmp_path / "tickets.csv")
    original = path.read_bytes()
    first = write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))["backup"]
    middle = path.read_bytes()
    second = write_pseudo_labels(path, _pseudo(("r5", "B", 0.9, 0)))["backup"]
    assert first != second  # same second: a suffix, never a replaced backup
    assert first.read_bytes() == original and second.read_bytes() == middle
    for b in (first, second):
        assert b.parent == path.parent and b.name.startswith("tickets.") and b.name.endswith(".bak.csv")
    assert backup_path(path, when=0).name.endswith(".bak.csv")
    taken = backup_path(path)
    taken.write_text("older backup")
    assert backup_path(path) != taken


@pytest.mark.parametrize("make", [_write_csv, _write_xlsx], ids=["csv", "xlsx"])
def test_write_is_atomic(tmp_path, monkeypatch, make):
    path = make(tmp_path / ("tickets.csv" if make is _write_csv else "tickets.xlsx"))
    digest = _sha(path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    assert _sha(path) == digest
    left = _others(path)  # the backup may stay (it is a copy of the original); no temp file
    assert all(".bak." in name for name in left), left
    assert not any(name.endswith(".tmp") for name in left)


def test_file_mode_is_kept(tmp_path):
    path = _write_csv(tmp_path / "tickets.csv")
    path.chmod(0o640)
    write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    assert path.stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- bad input


def _edit_csv(tmp_path, edit) -> Path:
    path = tmp_path / "bad.csv"
    frame = pd.DataFrame(ROWS, columns=["id", "text", "label", "note"])
    edit(frame)
    frame.to_csv(path, index=False)
    return path


def _set(row, col, value):
    def edit(frame):
        frame.loc[row, col] = value
    return edit


BAD_FILES = {  # name -> (edit of the file, pseudo table, words the message must hold)
    "missing id column": (lambda f: f.drop(columns="id", inplace=True), _pseudo(("r3", "A", .9, 0)),
                          ["no id column 'id'", "bad.csv"]),
    "missing label column": (lambda f: f.drop(columns="label", inplace=True),
                             _pseudo(("r3", "A", .9, 0)), ["no label column 'label'"]),
    "duplicate ids": (_set(3, "id", "r2"), _pseudo(("r3", "A", .9, 0)),
                      ["duplicate id 'r2'", "row 5", "row 3", "column 'id'"]),
    "blank id": (_set(4, "id", "  "), _pseudo(("r3", "A", .9, 0)), ["row 6", "id is empty"]),
    "bad label_source": (_set(1, "label_source", "robot"), _pseudo(("r3", "A", .9, 0)),
                         ["column 'label_source'", "row 3", "robot"]),
    "bad pseudo_round": (_set(2, "pseudo_round", "two"), _pseudo(("r3", "A", .9, 0)),
                         ["column 'pseudo_round'", "row 4", "two"]),
    "id not in the file": (lambda f: None, _pseudo(("r3", "A", .9, 0), ("zz9", "B", .8, 0)),
                           ["'zz9'", "not in", "bad.csv", "row 2"]),
    "label outside the known set": (lambda f: None, _pseudo(("r3", "D", .9, 0)),
                                    ["label 'D'", "A, B, C"]),
    "label only an earlier run gave": (
        lambda f: (f.__setitem__("label_source", ["human", "human", "pseudo", "human", "", "", "human"]),
                   f.loc.__setitem__((2, "label"), "Z"), f.__setitem__("pseudo_round", ["", "", "0", "", "", "", ""])),
        _pseudo(("r5", "Z", .9, 0)), ["label 'Z'"]),
    "duplicate ids in the table": (lambda f: None, _pseudo(("r3", "A", .9, 0), ("r3", "B", .8, 0)),
                                   ["'r3' appears twice"]),
    "confidence outside [0, 1]": (lambda f: None, _pseudo(("r3", "A", 1.5, 0)), ["confidence"]),
    "negative round": (lambda f: None, _pseudo(("r3", "A", .5, -1)), ["round"]),
    "table without a label column": (lambda f: None, pd.DataFrame({"id": ["r3"], "confidence": [.9],
                                                                    "round": [0]}), ["'label'"]),
    "text differs (another file)": (lambda f: None,
                                    _pseudo(("r3", "A", .9, 0)).assign(text="something else"),
                                    ["text differs", "row 4"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_leaves_the_file_untouched(tmp_path, case):
    edit, pseudo, words = BAD_FILES[case]
    path = _edit_csv(tmp_path, edit)
    digest = _sha(path)
    with pytest.raises(DataError) as err:
        write_pseudo_labels(path, pseudo)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert _sha(path) == digest
    assert _others(path) == []  # no backup, no temporary file


def test_bad_xlsx_leaves_the_file_untouched(tmp_path):
    path = _write_xlsx(tmp_path / "tickets.xlsx")
    wb = openpyxl.load_workbook(path)
    wb["tickets"]["A4"] = "r1"  # duplicate id in sheet row 4
    wb.save(path)
    digest = _sha(path)
    with pytest.raises(DataError, match=r"row 4 .*duplicate id 'r1'"):
        write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    assert _sha(path) == digest and _others(path) == []

    (tmp_path / "f").mkdir()
    path = _write_xlsx(tmp_path / "f" / "formula.xlsx")
    wb = openpyxl.load_workbook(path)
    wb["tickets"]["C4"] = '=IF(1=1,"","A")'  # a formula in a label cell pandas shows as blank
    wb.save(path)
    digest = _sha(path)
    with pytest.raises(DataError, match="formula"):
        write_pseudo_labels(path, _pseudo(("r3", "A", 0.9, 0)))
    assert _sha(path) == digest and _others(path) == []


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "tickets.txt"
    path.write_text("id,text,label\n1,a,A\n")
    with pytest.raises(DataError, match="unsupported"):
        write_pseudo_labels(path, _pseudo())


# --------------------------------------------------------------------------- the command


def test_cli_bad_file_exits_2_before_training(tmp_path, capsys):
    from sslkit.cli import main

    path = _edit_csv(tmp_path, _set(3, "id", "r2"))
    digest = _sha(path)
    assert main(["pseudo-label", str(path), "--reports", str(tmp_path / "reports")]) == 2
    assert "duplicate id 'r2'" in capsys.readouterr().err
    assert _sha(path) == digest and _others(path) == []


def test_cli_pseudo_label_end_to_end(tmp_path, capsys, tiny_encoder_dir):
    from sslkit.cli import main

    path = tmp_path / "tickets.csv"
    shutil.copy(EXAMPLE, path)
    before = _read_strings(path)
    human = before["label"] != ""
    known = set(before.loc[human, "label"])
    args = ["pseudo-label", str(path), "--text-col", "text", "--label-col", "label", "--id-col", "id",
            "--reports", str(tmp_path / "reports"), "--device", "cpu",
            # the plumbing, not the model: the tiny random encoder, with a starting threshold low
            # enough that its (unconfident) predictions are accepted, so rows are really written
            "--backbone", str(tiny_encoder_dir), "--tau0", "0.05", "--margin", "0.0"]
    # one round (at most one row per class): rows stay blank for the second run to continue with
    assert main(args + ["--epochs", "1"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "backup:" in out

    after = _read_strings(path)
    assert list(after.columns) == list(before.columns) + list(NEW_COLUMNS)
    assert after["id"].tolist() == before["id"].tolist()
    assert after["text"].tolist() == before["text"].tolist()
    assert after.loc[human, "label"].tolist() == before.loc[human, "label"].tolist()
    assert set(after.loc[human, "label_source"]) == {"human"}
    pseudo = after["label_source"] == "pseudo"
    assert pseudo.any()  # something was written back
    assert set(after.loc[pseudo, "label"]) <= known
    assert (after.loc[~pseudo & ~human, "label"] == "").all()
    assert [p.name for p in tmp_path.iterdir() if ".bak." in p.name]

    # a second run continues from the file (with the FixMatch-style options, so they are wired through)
    assert (after["label"] == "").any()
    assert main(args + ["--epochs", "2", "--strong-noise", "0.2", "--unlabeled-ratio", "2"]) == 0, \
        capsys.readouterr().err
    again = _read_strings(path)
    assert again.loc[human, "label"].tolist() == before.loc[human, "label"].tolist()
    assert again.loc[pseudo, "label"].tolist() == after.loc[pseudo, "label"].tolist()
    assert set(again.loc[again["label"] != "", "label"]) <= known
    first_rounds = [int(r) for r in after["pseudo_round"] if r]
    new = (again["label_source"] == "pseudo") & ~pseudo
    assert first_rounds and new.any()  # the second run wrote rows of its own...
    assert min(int(r) for r in again.loc[new, "pseudo_round"]) == max(first_rounds) + 1  # ...in later rounds
    configs = [json.loads(c.read_text()) for c in (tmp_path / "reports" / "runs").glob("*/config.json")]
    # the first run: self-training's rounds alone; the second: FixMatch with its strong view and mu
    assert sorted((c["method"]["name"], c["method"].get("strong_noise"), c["method"].get("mu")) for c in configs) \
        == [("fixmatch", 0.2, 2), ("self_training", None, None)]
