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
