"""``sslkit suggest``: the rows to label next, marked in the user's own file, and the round trip of a
person labelling them (read as human by pseudo-label and suggest alike). The tiny random encoder
and one epoch: these test the plumbing and the file rules, not which rows a good model picks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from sslkit.cli import main
from sslkit.data import read_table
from sslkit.labelfile import NEXT, check_label_file, read_label_file, write_pseudo_labels
from sslkit.query import STRATEGIES

TEMPLATES = {  # gold label -> texts; the label file hides most of the labels
    "refund": ["refund my order {k}", "money back for item {k}", "I was charged twice for {k}",
               "return the lamp {k} and pay me back"],
    "delivery": ["where is parcel {k}", "has order {k} shipped yet", "tracking number {k} shows nothing",
                 "the courier lost package {k}"],
    "account": ["reset my password {k}", "cannot log in to account {k}", "change the email of user {k}",
                "two factor code {k} never arrives"],
}


def _gold() -> list[dict]:
    rows, k = [], 0
    for r in range(10):
        for label, texts in TEMPLATES.items():
            k += 1
            rows.append({"id": f"t{k:02d}", "text": texts[r % 4].format(k=k), "gold": label})
    return rows  # 30 rows: t01 refund, t02 delivery, t03 account, ... (the classes cycle)


GOLD = {r["id"]: r["gold"] for r in _gold()}
HUMAN = {i for i in GOLD if int(i[1:]) <= 6}                  # t01..t06: two per class
PSEUDO = {"t07": GOLD["t07"], "t08": GOLD["t09"], "t09": GOLD["t09"]}  # t08's is wrong


def _make(path: Path, pseudo: bool = True) -> Path:
    """A label file with an id, text, label and note column: human labels on t01..t06, the rest
    blank, then (``pseudo``) pseudo-labels on t07..t09 written by write_pseudo_labels (as
    pseudo-label does)."""
    rows = [{"id": r["id"], "text": r["text"], "label": r["gold"] if r["id"] in HUMAN else "",
             "note": f"n{k:03d}"} for k, r in enumerate(_gold())]
    if path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".xlsx":
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(list(rows[0]))
        for r in rows:
            ws.append([v or None for v in r.values()])
        wb.create_sheet("notes")["A1"] = "kept"
        wb.save(path)
    else:
        path.write_text("".join(json.dumps({**r, "label": r["label"] or None}) + "\n" for r in rows))
    if pseudo:
        table = pd.DataFrame([(i, lab, 0.6, 0) for i, lab in PSEUDO.items()],
                             columns=["id", "label", "confidence", "round"])
        assert write_pseudo_labels(path, table, backup=False)["written"] == len(PSEUDO)
    return path


def _frame(path: Path) -> pd.DataFrame:
    """The file as strings, indexed by id (what every command reads)."""
    return read_table(path).frame.set_index("id", drop=False)


def _backups(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".bak." in p.name)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _set_cells(path: Path, updates: dict[str, dict[str, str]]) -> None:
    """Edit cells by id, as a person would in their editor: {id: {column: value}}."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for rid, cells in updates.items():
            for col, value in cells.items():
                frame.loc[frame["id"] == rid, col] = value
        frame.to_csv(path, index=False)
    elif path.suffix == ".xlsx":
        wb = openpyxl.load_workbook(path)
        ws = wb.worksheets[0]
        column = {c.value: c.column for c in ws[1]}
        for row in ws.iter_rows(min_row=2):
            for col, value in updates.get(row[0].value, {}).items():
                ws.cell(row=row[0].row, column=column[col], value=value)
        wb.save(path)
    else:
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        for rec in recs:
            rec.update(updates.get(rec["id"], {}))
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _marks(path: Path) -> dict[str, int]:
    """id -> label_next of the marked rows."""
    frame = _frame(path)
    return {i: int(v) for i, v in zip(frame["id"], frame[NEXT]) if v.strip()}


@pytest.fixture
def suggest_args(tiny_encoder_dir, tmp_path):
    """The command's tiny settings: the random encoder, one epoch, 32 tokens, the CPU."""
    def make(path: Path, *extra: str) -> list[str]:
        return ["suggest", str(path), "--backbone", str(tiny_encoder_dir), "--epochs", "1",
                "--max-length", "32", "--device", "cpu", "--reports", str(tmp_path / "reports"),
                "--quiet", *extra]
    return make


# --------------------------------------------------------------------------- the round trip


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl"])
def test_suggest_label_by_hand_and_run_again(tmp_path, capsys, suggest_args, tiny_encoder_dir, suffix):
    path = _make(tmp_path / f"tickets{suffix}")
    before, raw = _frame(path), path.read_bytes()
    candidates = set(before["id"]) - HUMAN

    assert main(suggest_args(path, "--n", "5")) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "5 row(s) to label next" in out and "backup:" in out
    marks = _marks(path)
    assert sorted(marks.values()) == [1, 2, 3, 4, 5] and set(marks) <= candidates
    after = _frame(path)
    assert list(after.columns) == list(before.columns) + [NEXT]
    pd.testing.assert_frame_equal(after.drop(columns=NEXT), before)  # every other cell as it was
    [backup] = _backups(path)
    assert backup.read_bytes() == raw
    if suffix == ".csv":  # byte for byte but the appended column
        lines = raw.decode().splitlines()
        assert path.read_text().splitlines() == [lines[0] + f",{NEXT}"] + [
            f"{line},{marks.get(line.split(',')[0], '')}" for line in lines[1:]]
    if suffix == ".xlsx":
        wb = openpyxl.load_workbook(path)
        assert wb.sheetnames == ["Sheet", "notes"] and wb["notes"]["A1"].value == "kept"
        ws = wb.worksheets[0]
        column = [c.value for c in ws[1]].index(NEXT) + 1
        values = [ws.cell(row=r, column=column).value for r in range(2, ws.max_row + 1)]
        assert sorted(v for v in values if v is not None) == [1, 2, 3, 4, 5]  # numbers, not text

    # the same content and settings: the model is reused (no second run folder), the marks the same
    runs = sorted((tmp_path / "reports" / "runs").iterdir())
    assert main(suggest_args(path, "--n", "5")) == 0
    assert sorted((tmp_path / "reports" / "runs").iterdir()) == runs and _marks(path) == marks

    # a person labels the marked rows: fills the label; on a pseudo-labeled row also label_source.
    # And corrects the wrong pseudo-label of t08, confirms t09's by clearing its label_source.
    edits = {i: {"label": GOLD[i], **({"label_source": "human"} if i in PSEUDO else {})} for i in marks}
    edits["t08"] = {"label": GOLD["t08"], "label_source": "human"}
    edits["t09"] = {"label_source": ""}
    _set_cells(path, edits)
    hand = set(edits)
    state = read_label_file(path).set_index("id")
    assert (state.loc[sorted(hand), "label_source"] == "human").all()
    assert check_label_file(path)["human"] == len(HUMAN) + len(hand)

    # pseudo-label reads them as human: never overwritten, recorded as human, round and confidence cleared
    assert main(["pseudo-label", str(path), "--backbone", str(tiny_encoder_dir), "--epochs", "1",
                 "--max-length", "32", "--device", "cpu", "--reports", str(tmp_path / "reports"),
                 "--tau0", "0.05", "--margin", "0.0"]) == 0, capsys.readouterr().err
    labeled = _frame(path)
    for i in hand:
        assert labeled.loc[i, "label"] == GOLD[i] and labeled.loc[i, "label_source"] == "human"
        assert labeled.loc[i, "pseudo_round"] == "" and labeled.loc[i, "pseudo_confidence"] == ""
    assert _marks(path) == marks  # pseudo-label leaves label_next alone

    # suggest again: the hand-labeled rows lose their marks and are not suggested again
    capsys.readouterr()
    assert main(suggest_args(path, "--n", "5")) == 0, capsys.readouterr().err
    again = _marks(path)
    assert sorted(again.values()) == [1, 2, 3, 4, 5]
    assert not set(again) & (hand | HUMAN)
    assert (_frame(path)["label"] == labeled["label"]).all()
    assert len(_backups(path)) == 3  # suggest, pseudo-label, suggest: one backup each


def test_a_file_never_pseudo_labeled_gains_only_label_next(tmp_path, capsys, suggest_args):
    path = _make(tmp_path / "tickets.csv", pseudo=False)
    raw = path.read_text().splitlines()
    assert main(suggest_args(path, "--n", "3", "--strategy", "margin")) == 0, capsys.readouterr().err
    marks = _marks(path)
    assert sorted(marks.values()) == [1, 2, 3] and not set(marks) & HUMAN
    assert path.read_text().splitlines() == [raw[0] + f",{NEXT}"] + [
        f"{line},{marks.get(line.split(',')[0], '')}" for line in raw[1:]]


def test_more_than_the_candidates_marks_them_all(tmp_path, capsys, suggest_args):
    path = _make(tmp_path / "tickets.csv")
    candidates = set(_frame(path)["id"]) - HUMAN
    assert main(suggest_args(path, "--n", "100", "--strategy", "random")) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"--n 100 is more than the {len(candidates)} row(s) without a human label" in out
    marks = _marks(path)
    assert set(marks) == candidates and sorted(marks.values()) == list(range(1, len(candidates) + 1))


def test_old_marks_on_rows_labeled_since_are_cleared_when_nothing_is_left(tmp_path, capsys, suggest_args):
    path = _make(tmp_path / "tickets.csv")
    _set_cells(path, {i: {"label": GOLD[i], "label_source": "human"} for i in GOLD if i not in HUMAN})
    digest = _sha(path)
    assert main(suggest_args(path)) == 0
    assert "nothing to suggest" in capsys.readouterr().out
    assert _sha(path) == digest and _backups(path) == []  # no marks: untouched

    _set_cells(path, {"t07": {NEXT: "1"}, "t12": {NEXT: "2"}})  # marks from a run before the labelling
    assert main(suggest_args(path)) == 0
    assert "2 old mark(s) cleared" in capsys.readouterr().out
    assert _marks(path) == {} and len(_backups(path)) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, words", [
    (["--n", "0"], ["--n", ">= 1", "got 0"]),
    (["--strategy", "smartest"], ["unknown strategy 'smartest'", *STRATEGIES]),
    (["--epochs", "0"], ["--epochs"]),
])
def test_bad_options_exit_2_before_training(tmp_path, capsys, suggest_args, extra, words):
    path = _make(tmp_path / "tickets.csv")
    digest = _sha(path)
    assert main(suggest_args(path, *extra)) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert _sha(path) == digest and _backups(path) == []
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("edit, words", [
    (lambda f: f.drop(columns="label"), ["tickets.csv", "no label column 'label'"]),
    (lambda f: f.assign(label=["refund" if i in HUMAN else "" for i in f["id"]], label_source=""),
     ["tickets.csv", "column 'label'", "1 human label name(s)", "at least 2"]),
    (lambda f: f.assign(id=["t01", "t01"] + f["id"].tolist()[2:]), ["duplicate id 't01'"]),
    (lambda f: f.rename(columns={"note": NEXT, "id": "key"}), ["no id column 'id'"]),
])
def test_bad_files_exit_2_untouched(tmp_path, capsys, suggest_args, edit, words):
    path = tmp_path / "tickets.csv"
    edit(pd.read_csv(_make(path), dtype=str, keep_default_na=False)).to_csv(path, index=False)
    digest = _sha(path)
    assert main(suggest_args(path)) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert _sha(path) == digest and _backups(path) == []


def test_label_next_is_not_an_id_or_label_column(tmp_path, capsys, suggest_args):
    path = tmp_path / "tickets.csv"
    frame = pd.read_csv(_make(path), dtype=str, keep_default_na=False)
    frame.rename(columns={"label": NEXT}).to_csv(path, index=False)
    assert main(suggest_args(path, "--label-col", NEXT)) == 2
    assert f"column '{NEXT}' is written by sslkit" in capsys.readouterr().err
    assert main(suggest_args(tmp_path / "tickets.txt")) == 2
    assert "unsupported file type '.txt'" in capsys.readouterr().err
