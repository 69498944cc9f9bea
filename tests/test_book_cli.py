"""The book runner (papermill + nbconvert), the index page and the command line."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from sslkit.book import (BOOK, BookError, book_notebooks, build_index, parse_value,
                         resolve_notebook, run_book, run_notebook)
from sslkit.cli import main, predict_file


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "sslkit" if "sslkit" in KernelSpecManager().find_kernel_specs() else "python3"


KERNEL = _kernel()


def _notebook(path: Path, *cells: str, params: str = "x = 1", metadata: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    if metadata:  # a notebook written outside Jupyter may have no kernelspec / language at all
        nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _outputs(executed: Path) -> str:
    nb = nbformat.read(executed, as_version=4)
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or "".join(out.get("data", {}).get("text/plain", "")))
            text.append(out.get("evalue", ""))
    return "\n".join(text)


# --------------------------------------------------------------------------- parse_value


@pytest.mark.parametrize("text, expected", [
    ("0.05", 0.05), ("3", 3), ("-2", -2), ("1e-3", 1e-3), (".5", 0.5),
    ("true", True), ("False", False), ("NONE", None), ("null", None),
    ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"123"', "123"),
    ("hwu64", "hwu64"), ("data/my.csv", "data/my.csv"), ("inf", "inf"), ("[oops", "[oops"),
])
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


# --------------------------------------------------------------------------- locating notebooks


def test_book_notebooks_order_and_resolve(tmp_path):
    nbdir = tmp_path / "notebooks"
    for stem in ["05_contrastive", "00_data", "extra", "01_supervised"]:
        _notebook(nbdir / f"{stem}.ipynb")
    assert [p.stem for p in book_notebooks(nbdir)] == ["00_data", "01_supervised", "05_contrastive"]
    assert resolve_notebook("01", nbdir) == nbdir / "01_supervised.ipynb"
    assert resolve_notebook("extra", nbdir) == nbdir / "extra.ipynb"
    assert resolve_notebook(nbdir / "00_data.ipynb", nbdir) == nbdir / "00_data.ipynb"
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_notebook("0", nbdir)
    with pytest.raises(FileNotFoundError, match="00_data"):
        resolve_notebook("99_nope", nbdir)


# --------------------------------------------------------------------------- run_notebook


def test_run_notebook_parameters_env_html_timings(tmp_path, monkeypatch):
    monkeypatch.delenv("SSLKIT_NOTEBOOK", raising=False)
    monkeypatch.setenv("SSLKIT_PROGRESS", "keep-me")
    nb = _notebook(tmp_path / "repo" / "notebooks" / "tiny.ipynb",
                   'import os; print(os.environ["SSLKIT_NOTEBOOK"]); y = x * 2; print(y)',
                   'print("REPORTS=" + os.environ["SSLKIT_REPORTS"]); '
                   'print("PROGRESS=" + os.environ["SSLKIT_PROGRESS"]); print("CWD=" + os.getcwd())')
    reports = tmp_path / "reports"
    page = run_notebook(nb, {"x": 21}, reports=reports, kernel=KERNEL)

    executed = reports / "tiny.ipynb"
    assert page == reports.resolve() / "tiny.html" and page.is_file()
    out = _outputs(executed)
    assert "42" in out.split() and "tiny" in out.split()
    assert f"REPORTS={reports.resolve()}" in out.splitlines()
    assert "PROGRESS=0" in out
    assert f"CWD={(tmp_path / 'repo').resolve()}" in out.splitlines()
    assert "42" in page.read_text(encoding="utf-8")
    timings = json.loads((reports / "book_timings.json").read_text())
    assert timings["tiny"]["ok"] is True and timings["tiny"]["error"] is None
    assert timings["tiny"]["parameters"] == {"x": 21} and timings["tiny"]["seconds"] > 0
    # the runner's environment is restored
    assert "SSLKIT_NOTEBOOK" not in os.environ and os.environ["SSLKIT_PROGRESS"] == "keep-me"
    assert nbformat.read(nb, as_version=4).cells[1].outputs == []  # the input is untouched


def test_run_notebook_failure_records_and_renders(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "book_timings.json").write_text(json.dumps({"other": {"seconds": 1.0, "ok": True}}))
    nb = _notebook(tmp_path / "notebooks" / "broken.ipynb", 'print("before the error")',
                   'raise RuntimeError("boom-7")', 'print("never")')
    with pytest.raises(PapermillExecutionError):
        run_notebook(nb, reports=reports, kernel=KERNEL)
    timings = json.loads((reports / "book_timings.json").read_text())
    assert set(timings) == {"other", "broken"}  # merged, not replaced
    assert timings["broken"]["ok"] is False
    assert "RuntimeError" in timings["broken"]["error"] and "boom-7" in timings["broken"]["error"]
    page = (reports / "broken.html").read_text(encoding="utf-8")
    assert "before the error" in page and "boom-7" in page


def test_run_notebook_output_elsewhere_without_timings(tmp_path):
    """A sweep point's copy goes to its own path; the book's copy and timings stay untouched."""
    nb = _notebook(tmp_path / "notebooks" / "tiny.ipynb", "print('value', x * 3)")
    reports = tmp_path / "reports"
    out = reports / "sweeps" / "g" / "tiny-0123abcd.ipynb"
    page = run_notebook(nb, {"x": 5}, reports=reports, kernel=KERNEL, output=out, timings=False)
    assert page == out.resolve().with_suffix(".html") and page.is_file()
    assert "value 15" in _outputs(out)
    assert not (reports / "tiny.ipynb").exists() and not (reports / "tiny.html").exists()
    assert not (reports / "book_timings.json").exists()
    with pytest.raises(ValueError, match=".ipynb suffix"):
        run_notebook(nb, reports=reports, kernel=KERNEL, output=reports / "x.html")


def test_run_notebook_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_notebook(tmp_path / "missing.ipynb", reports=tmp_path / "r")
    nb = _notebook(tmp_path / "notebooks" / "a.ipynb")
    with pytest.raises(ValueError, match="no Jupyter kernel named 'no-such-kernel'"):
        run_notebook(nb, reports=tmp_path / "r", kernel="no-such-kernel")
    assert not (tmp_path / "r" / "book_timings.json").exists()


# --------------------------------------------------------------------------- index


def _summary(reports: Path, run_id: str, **fields) -> None:
    d = reports / "runs" / run_id
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"run_id": run_id, **fields}))


def test_build_index(tmp_path):
    reports = tmp_path / "reports"
    empty = build_index(reports).read_text(encoding="utf-8")
    assert "No runs yet" in empty and "No rendered notebooks yet" in empty

    _summary(reports, "hwu64-0.05-supervised-s0-aaaa", notebook="01_supervised", dataset="hwu64",
             budget="0.05", method="supervised", backbone="minilm", seed=0,
             test={"accuracy": 0.81234, "macro_f1": 0.7}, minutes=2.345)
    _summary(reports, "banking77-10pc-mean_teacher-s1-bbbb", notebook="04_mean_teacher",
             dataset="banking77", budget="10pc", method="mean_teacher", backbone="minilm", seed=1,
             test={"accuracy": 0.9, "macro_f1": 0.88}, minutes=10.0)
    _summary(reports, "odd-<b>-cccc", notebook=None, dataset="<b>x</b>", budget="1", method="m",
             backbone="minilm", seed=2, test=None, minutes=None)
    (reports / "01_supervised.html").write_text("<html>nb</html>")
    (reports / "zz_extra.html").write_text("<html>x</html>")
    (reports / "00_data.html").write_text("<html>x</html>")
    (reports / "book_timings.json").write_text(json.dumps(
        {"01_supervised": {"seconds": 75.0, "ok": True},
         "00_data": {"seconds": 3.2, "ok": False, "error": "ValueError: bad <x>"}}))

    page = build_index(reports).read_text(encoding="utf-8")
    assert "No runs yet" not in page
    for text in ["hwu64", "supervised", "banking77", "mean_teacher", "81.23%", "70.00%", "90.00%",
                 "2.3", "10.0", "hwu64-0.05-supervised-s0-aaaa"]:
        assert text in page, text
    assert '<a href="01_supervised.html">' in page
    assert "1 min 15 s" in page and "3.2 s" in page and "bad &lt;x&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # escaped
    assert 'href="runs/hwu64-0.05-supervised-s0-aaaa/summary.json"' in page
    # notebook links in book order, then the others; rows sorted by notebook (missing last)
    assert page.index('href="00_data.html"') < page.index('href="01_supervised.html"') \
        < page.index('href="zz_extra.html"')
    assert page.index("hwu64-0.05") < page.index("banking77-10pc") < page.index("odd-&lt;b&gt;")
    assert 'href="index.html"' not in page


def test_build_index_links_ablation_and_sweeps(tmp_path):
    from sslkit.ablation import fixture_runs, write_ablation
    from sslkit.runs import load_runs, write_json

    reports = tmp_path / "reports"
    page = build_index(reports).read_text(encoding="utf-8")
    assert "No finished runs yet" in page and "Sweeps" not in page

    write_ablation(load_runs(fixture_runs()), reports)
    shutil.copytree(fixture_runs(), reports / "runs")  # the results table is computed from the records
    (reports / "06_ablation.html").write_text("<html>06</html>")
    sweep = reports / "sweeps" / "default"
    write_json(sweep / "sweep.json", {"points": ["01_supervised-aaaaaaaa", "01_supervised-bbbbbbbb",
                                                 "01_supervised-cccccccc"],
                                      "labels": {"01_supervised-aaaaaaaa": "01_supervised labeled=0.05"}})
    write_json(sweep / "01_supervised-aaaaaaaa.json", {
        "point": "01_supervised-aaaaaaaa", "notebook": "01_supervised", "parameters": {"labeled": 0.05},
        "status": "done", "seconds": 125.0, "html": "sweeps/default/01_supervised-aaaaaaaa.html"})
    (sweep / "01_supervised-aaaaaaaa.html").write_text("<html>point</html>")
    write_json(sweep / "01_supervised-bbbbbbbb.json", {
        "point": "01_supervised-bbbbbbbb", "notebook": "01_supervised", "parameters": {"labeled": 0.1},
        "status": "failed", "error": "ValueError: <bad>"})
    page = build_index(reports).read_text(encoding="utf-8")
    assert '<a href="ablation.md">' in page and '<a href="ablation.csv">' in page
    assert page.count('href="06_ablation.html"') == 2  # in the notebook list and the ablation links
    assert "mean_teacher" in page and "85.88 ± 0.33" in page  # the table from the run records
    assert page.index("<h2>Results</h2>") < page.index("<h2>Notebooks</h2>") < page.index("<h2>Sweeps</h2>") \
        < page.index("<h2>Runs</h2>")
    assert "<h3>default</h3>" in page and "1 done, 1 failed, 1 pending" in page
    assert 'href="sweeps/default/01_supervised-aaaaaaaa.html"' in page and "2 min 05 s" in page
    assert "01_supervised labeled=0.05" in page and "01_supervised labeled=0.1" in page
    assert "ValueError: &lt;bad&gt;" in page
    assert page.index("-aaaaaaaa.html") < page.index("labeled=0.1") < page.index("<td>pending</td>")


# --------------------------------------------------------------------------- CLI


def test_cli_index_and_errors(tmp_path, capsys):
    assert main(["index", "--reports", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    assert str(tmp_path / "rep" / "index.html") in capsys.readouterr().out

    f = tmp_path / "new.csv"
    f.write_text("text\nhello\n")
    assert main(["predict", str(tmp_path / "no_such_run"), str(f)]) == 2
    err = capsys.readouterr().err
    assert "no_such_run" in err and "not found" in err and "Traceback" not in err

    (tmp_path / "run").mkdir()
    assert main(["predict", str(tmp_path / "run"), str(f)]) == 2
    assert "no checkpoint" in capsys.readouterr().err

    assert main(["run", "nope", "--notebooks-dir", str(tmp_path)]) == 2
    assert "notebook not found" in capsys.readouterr().err
    assert main(["book", "--only", "07_nope", "--notebooks-dir", str(tmp_path)]) == 2
    assert "07_nope" in capsys.readouterr().err
    assert main(["run", "x", "-p", "not-an-identifier", "1", "--notebooks-dir", str(tmp_path)]) == 2
    assert main(["frobnicate"]) == 2


def test_cli_book_runs_in_order_with_parameters(tmp_path, capsys):
    nbdir = tmp_path / "notebooks"
    for stem in ["01_supervised", "00_data"]:
        _notebook(nbdir / f"{stem}.ipynb", "print('seed', seed * 10)", params="seed = 0",
                  metadata=stem == "00_data")
    _notebook(nbdir / "02_self_training.ipynb", "raise ValueError('chapter 2 broke')")
    reports = tmp_path / "reports"
    rc = main(["book", "-p", "seed", "4", "--reports", str(reports), "--notebooks-dir", str(nbdir),
               "--kernel", KERNEL, "--only", "01_supervised,00_data"])
    assert rc == 0
    lines = capsys.readouterr().out.split()
    assert [Path(s).name for s in lines] == ["00_data.html", "01_supervised.html", "index.html"]
    for stem in ["00_data", "01_supervised"]:
        assert "seed 40" in _outputs(reports / f"{stem}.ipynb")
    timings = json.loads((reports / "book_timings.json").read_text())
    assert timings["00_data"]["finished"] <= timings["01_supervised"]["finished"]
    index = (reports / "index.html").read_text()
    assert 'href="00_data.html"' in index and 'href="01_supervised.html"' in index
    assert not (reports / "02_self_training.html").exists()  # --only left it out


def test_run_book_failure_still_indexes(tmp_path):
    nbdir = tmp_path / "notebooks"
    _notebook(nbdir / "02_self_training.ipynb", "raise ValueError('chapter 2 broke')")
    reports = tmp_path / "reports"
    with pytest.raises(BookError, match="chapter 2 broke") as info:
        run_book(reports=reports, notebooks_dir=nbdir, kernel=KERNEL, stop_on_error=False)
    assert [p.name for p in info.value.html_paths] == ["02_self_training.html"]
    index = (reports / "index.html").read_text()
    assert "failed" in index and "chapter 2 broke" in index
    assert BOOK[2] == "02_self_training"


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A saved run's checkpoint: the plumbing of predict, on the tiny random encoder (LoRA + head)."""
    import sslkit

    run = tmp_path_factory.mktemp("predict") / "run"
    model = sslkit.load_backbone(str(tiny_encoder_dir), 2, lora=True)
    model.save(run / "checkpoint", label_names=["neg", "pos"])
    return run


def test_predict_file_end_to_end(checkpoint, tmp_path):
    import sslkit
    from sslkit.inference import predict_logits

    texts = ["I love this, wonderful", "terrible, I hate it", "the weather is a bit grey today"]
    src = tmp_path / "new.csv"
    pd.DataFrame({"id": ["007", "b", "c"], "text": texts}).to_csv(src, index=False)
    before = src.read_bytes()

    out = predict_file(checkpoint, src, device="cpu")
    assert out == tmp_path / "new.predictions.csv"
    assert src.read_bytes() == before
    df = pd.read_csv(out, dtype={"id": str})
    assert list(df.columns) == ["id", "text", "pred_label", "pred_confidence"]
    assert df["text"].tolist() == texts and df["id"].tolist() == ["007", "b", "c"]
    assert set(df["pred_label"]) <= {"neg", "pos"}
    assert ((df["pred_confidence"] >= 0.5) & (df["pred_confidence"] <= 1.0)).all()

    model = sslkit.load_saved_backbone(checkpoint / "checkpoint")
    logits = predict_logits(model, texts)
    expected = np.array(["neg", "pos"])[logits.argmax(1)]
    assert df["pred_label"].tolist() == expected.tolist()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(df["pred_confidence"], probs.max(1), rtol=1e-5)

    # JSONL keeps the original values' types; an explicit output; the CLI prints the path
    src2 = tmp_path / "more.jsonl"
    src2.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    out2 = predict_file(checkpoint, src2, output=tmp_path / "out" / "p.jsonl", device="cpu")
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [r["n"] for r in rows] == [0, 1, 2]
    assert [r["pred_label"] for r in rows] == expected.tolist()


def test_predict_file_errors(checkpoint, tmp_path, capsys):
    src = tmp_path / "new.csv"
    src.write_text("text,other\nfine text,1\n   ,2\n")
    with pytest.raises(ValueError, match=r"new.csv: column 'text', row 3.*the text is empty"):
        predict_file(checkpoint, src)
    assert main(["predict", str(checkpoint), str(src), "--text-col", "body"]) == 2
    err = capsys.readouterr().err
    assert "new.csv" in err and "'body'" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="overwrite the input"):
        predict_file(checkpoint, src, output=src)
    with pytest.raises(ValueError, match="unsupported output type"):
        predict_file(checkpoint, src, output=tmp_path / "x.parquet")
    assert not (tmp_path / "new.predictions.csv").exists()
