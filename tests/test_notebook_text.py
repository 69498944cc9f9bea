"""The notebooks' set-up prose follows their parameters: at most 12 parameters per notebook, and the
text rendered by the cell tagged ``setup`` changes when any one of them does (``-p`` never leaves the
text saying something else). Only the parameters cell, papermill's injected cell and the setup cell
run, with papermill's own parameter injection; nothing is trained and no data is read."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_PARAMETERS = 12

#: another value for every notebook parameter (a new parameter needs one here)
ALTERNATIVES = {
    "dataset": "clinc150", "labeled": 0.2, "per_class": 5, "seed": 1, "backbone": "fasttext",
    "method": "focal", "epochs": 3, "batch_size": 16, "lr": 1e-3, "references": False, "tracker": "mlflow",
    "fasttext_backbone": "fasttext-zh", "fasttext_methods": ["supervised"], "tsne_classes": 5,
    "text_col": "sentence", "label_col": "intent", "id_col": "uid", "runs_dir": "/elsewhere/runs",
    "reports": "/elsewhere/reports", "metric": "macro_f1",
    "strategies": ["random", "entropy"], "targets": [0.03, 0.05], "seeds": [0],
    "paths": ["supervised", "recipe"], "semi_epochs": 6,
}


def _alternative(name: str, default):
    if name == "methods":  # one more preset
        import sslkit

        return list(default) + [next(p for p in sslkit.preset_names() if p not in default)]
    if name == "retrain_epochs":
        return 0 if default else 3
    if name not in ALTERNATIVES:
        pytest.fail(f"parameter {name!r}: add another value for it to ALTERNATIVES")
    value = ALTERNATIVES[name]
    assert value != default, name
    return value


def _cells(path: Path):
    from papermill.iorw import load_notebook_node  # as papermill reads it (every cell gets its tags list)

    nb = load_notebook_node(str(path))
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    setup = [c for c in code if "setup" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code[0] is params[0], f"{path.name}: one parameters cell, the first code cell"
    assert len(setup) == 1, f"{path.name}: one cell tagged 'setup' renders the set-up text"
    return nb, params[0], setup[0]


def parameter_names(source: str) -> list[str]:
    """The names a parameters cell assigns at top level (imports are not parameters)."""
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
    return names


def _run_cell(source: str, namespace: dict):
    """Run a cell as IPython does: its last expression is the cell's value."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None


def render_setup(path: Path, parameters: dict | None = None) -> str:
    """The markdown the setup cell shows after papermill injects ``parameters``."""
    from papermill.parameterize import parameterize_notebook

    nb, params, setup = _cells(path)
    nb = parameterize_notebook(nb, dict(parameters or {}), kernel_name="sslkit", language="python")
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    namespace: dict = {}
    _run_cell(params.source, namespace)
    for cell in injected:
        _run_cell(cell.source, namespace)
    shown = _run_cell(setup.source, namespace)
    assert shown is not None and hasattr(shown, "data"), f"{path.name}: the setup cell must end in Markdown(...)"
    return shown.data


def test_every_notebook_is_checked():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_few_and_the_setup_text_follows_each(path):
    _, params, _ = _cells(path)
    names = parameter_names(params.source)
    assert 0 < len(names) <= MAX_PARAMETERS, f"{path.name}: {len(names)} parameters {names}"
    defaults: dict = {}
    _run_cell(params.source, defaults)
    base = render_setup(path)
    assert base == render_setup(path, {}), "the text depends on the parameters only"
    for name in names:
        changed = render_setup(path, {name: _alternative(name, defaults[name])})
        assert changed != base, f"{path.name}: -p {name} leaves the set-up text as it is"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_cells_hold_no_parameter_values(path):
    """Markdown cells are prose: parameter values (data set, backbone) only appear in generated text."""
    nb, params, _ = _cells(path)
    defaults: dict = {}
    _run_cell(params.source, defaults)
    words = [defaults[k] for k in ("dataset", "backbone") if isinstance(defaults.get(k), str)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for word in words:
                assert word not in cell.source, f"{path.name}: {word!r} typed into a markdown cell"
