"""What the recipe costs: minutes per stage of every path of ``sslkit.recipe.ablation()`` at one seed,
and each path's total against the supervised run's and notebook 02's FixMatch run's, measured in one run
on this machine.

    .venv/bin/python benchmarks/recipe_cost.py                      # banking77, seed 0, every path, fresh
    .venv/bin/python benchmarks/recipe_cost.py --paths supervised,fixmatch,recipe
    .venv/bin/python benchmarks/recipe_cost.py --reports reports    # the recorded minutes of finished stages

Fresh (the default) trains every stage into a temporary reports folder, one after another, so the
ratios compare runs of one process on one machine. With ``--reports`` finished stages are loaded and
their recorded minutes reported: ratios then hold only if those runs shared a machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77")
    parser.add_argument("--labeled", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", default=None,
                        help="comma-separated labels of sslkit.recipe.ablation() (default: every path)")
    parser.add_argument("--reports", default=None,
                        help="reuse the finished stages recorded here (default: a fresh temporary folder)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args()

    import os

    reports = args.reports or tempfile.mkdtemp(prefix="recipe-cost-")
    os.environ["SSLKIT_REPORTS"] = str(reports)  # before sslkit resolves any reports folder
    os.environ.setdefault("SSLKIT_PROGRESS", "0")
    import sslkit
    from sslkit import recipe

    paths = recipe.ablation()
    chosen = args.paths.split(",") if args.paths else list(paths)
    unknown = sorted(set(chosen) - set(paths))
    if unknown:
        parser.error(f"unknown paths {unknown}; known: {', '.join(paths)}")
    _, budget = sslkit.load_budget(args.dataset, args.labeled, None, args.seed)
    train = sslkit.train_defaults("minilm", progress=False)
    runs = {}
    for label in chosen:
        runs[label, args.seed] = recipe.run_recipe(budget, paths[label], seed=args.seed, **train)
        print(f"{label}: {runs[label, args.seed].test['accuracy']:.2%} test accuracy", flush=True)
    table = recipe.cost_table(runs)
    if "supervised" in table.index:
        table["x_supervised"] = table["total_minutes"] / table.loc["supervised", "total_minutes"]
    table.insert(0, "accuracy", [runs[label, args.seed].test["accuracy"] for label in table.index])
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.2f}".format):
        print(f"\n{args.dataset}, {args.labeled:.0%} labels, seed {args.seed}; records in {reports}\n{table}")
    if args.out:
        Path(args.out).write_text(json.dumps(table.reset_index(names="path").to_dict(orient="records"), indent=2))


if __name__ == "__main__":
    main()
