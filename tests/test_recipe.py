"""The recipe's stages on the tiny encoder: names, the ablation's paths, distillation labels, reuse."""
from __future__ import annotations

import numpy as np
import pytest

from sslkit import recipe as rc
from sslkit import trainer
from sslkit.adaptation import PoolAdaptation
from sslkit.recipe import (RECIPE, Distillation, Recipe, ablation, distillation_labels, error_pairs, error_takeaway,
                           run_recipe, stage_table)

TINY_ADAPT = PoolAdaptation("simcse", epochs=0.5, batch_size=16)


def test_labels_name_the_ingredients_and_the_default_is_the_recipe():
    assert RECIPE.label == "recipe"
    assert Recipe(distil=None).label == "fixmatch"  # notebook 02's run
    assert Recipe(train={"epochs": 12}, distil=None).label == "fixmatch_12ep"
    assert Recipe(adapt=TINY_ADAPT).label == "adapt+fixmatch+distil"
    assert Recipe(adapt=TINY_ADAPT, train={"epochs": 3}).semi_label == "adapt+fixmatch_3ep"
    assert Recipe(method="supervised", distil=None).label == "supervised"


def test_ablation_toggles_one_ingredient_at_a_time_and_keeps_the_recipe_under_its_name():
    paths = ablation(RECIPE, adapt=TINY_ADAPT)
    assert list(paths) == ["supervised", "fixmatch", "fixmatch_12ep", "recipe", "recipe+distil",
                           "adapt+supervised", "adapt+recipe"]
    assert paths["recipe"] == RECIPE and RECIPE.method == "fixmatch_ema"
    assert paths["supervised"].distil is None and paths["supervised"].train == {}
    assert paths["fixmatch"].train == {} and paths["fixmatch"].distil is None  # notebook 02's run
    assert paths["fixmatch_12ep"].train == RECIPE.train  # the recipe's training, without its own method
    assert paths["recipe+distil"].train == RECIPE.train and paths["recipe+distil"].distil == Distillation()
    assert all(paths[k].adapt == TINY_ADAPT for k in paths if k.startswith("adapt+"))
    assert list(ablation(RECIPE, adapt=None)) == ["supervised", "fixmatch", "fixmatch_12ep", "recipe",
                                                  "recipe+distil"]
    # a recipe with the plain method and a final stage: no method row, the toggle takes the stage away
    with_distil = Recipe(train={"epochs": 3}, name="mine")
    assert list(ablation(with_distil, adapt=None)) == ["supervised", "fixmatch", "mine", "mine_without_distil"]


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError):
        Distillation(min_confidence=1.0)
    with pytest.raises(ValueError):
        Distillation(epochs=0)


def test_distillation_labels_keep_the_pool_texts_the_model_is_sure_of(mcid_budget, make_tiny_model):
    budget = mcid_budget()
    model = make_tiny_model(budget, seed=0)
    every = distillation_labels(model, budget, 0.0)
    assert len(every) == len(budget.unlabeled)
    assert set(every["idx"]) == set(budget.unlabeled.idx.tolist())
    assert set(every["label"]) <= set(budget.label_names)
    cut = float(np.median(every["confidence"]))
    sure = distillation_labels(model, budget, cut)
    assert 0 < len(sure) < len(every) and (sure["confidence"] >= cut).all()
    assert set(sure["idx"]) == set(every.loc[every["confidence"] >= cut, "idx"])


def test_run_recipe_trains_each_stage_once_and_names_the_last_record(mcid_budget, make_tiny_model, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("SSLKIT_REPORTS", str(tmp_path))
    budget = mcid_budget()
    path = Recipe(adapt=TINY_ADAPT, distil=Distillation(min_confidence=0.0, epochs=1), name="mine")
    train = {"epochs": 1, "batch_size": 8, "progress": False}
    run = run_recipe(budget, path, backbone=make_tiny_model, seed=0, **train)
    assert set(run.runs) == {"semi", "distil"}
    assert run.runs["semi"].summary["method"] == "adapt+fixmatch"
    assert run.result.summary["method"] == "mine" and run.test == run.runs["distil"].test
    # min_confidence 0: every pool text joins the human labels in the final stage
    assert run.runs["distil"].summary["n_labeled"] == len(budget.labeled) + len(budget.unlabeled)
    assert run.seconds["adapt"] > 0 and run.seconds["semi"] > 0 and run.seconds["distil"] > 0
    table = stage_table(run)
    assert list(table.index) == ["adapt", "semi", "distil"]
    assert table.loc["distil", "accuracy"] == run.test["accuracy"]

    # the errors by pair: the last stage's test errors beside the semi stage's wrong moves
    pairs = error_pairs(run)
    preds = run.result.predictions()
    assert pairs["errors"].sum() == (preds["gold"] != preds["pred"]).sum()
    moved = run.runs["semi"].pseudo_labels()
    assert len(moved) == run.runs["semi"].summary["n_pseudo_labeled"]
    wrong = moved[(moved["gold"] != "") & (moved["gold"] != moved["label"])]
    in_test_pairs = {tuple(sorted(p)) for p in zip(wrong["gold"], wrong["label"])} & set(pairs.index)
    assert pairs["wrong_moves"].sum() == sum(tuple(sorted(p)) in in_test_pairs
                                             for p in zip(wrong["gold"], wrong["label"]))
    assert f"{pairs['errors'].sum()} test errors" in error_takeaway(pairs)

    # the same path again, and the path without the final stage: every record is reused
    monkeypatch.setattr(trainer, "train_epoch", lambda *a, **k: pytest.fail("a finished stage was retrained"))
    again = run_recipe(budget, path, backbone=make_tiny_model, seed=0, **train)
    assert again.result.run_id == run.result.run_id and again.seconds == run.seconds
    semi_only = run_recipe(budget, Recipe(adapt=TINY_ADAPT, distil=None, name="semi"), backbone=make_tiny_model,
                           seed=0, **train)
    # the same stage under another name: found by its identity, not trained again
    assert semi_only.result.run_id == run.runs["semi"].run_id
    assert rc.RecipeRun is type(semi_only) and set(semi_only.runs) == {"semi"}
