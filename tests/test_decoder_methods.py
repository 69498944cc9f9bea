"""A decoder backbone (a tiny random Qwen3 built from a config) through the methods the book runs on
it: the supervised baseline, FixMatch with its rounds, and focal + supervised contrastive loss."""
from __future__ import annotations

import pytest

import sslkit


@pytest.mark.parametrize("preset", ["supervised", "fixmatch", "focal_supcon"])
def test_a_decoder_trains_with_the_notebooks_methods(preset, tiny_decoder_dir, mcid_budget, tmp_path):
    budget = mcid_budget(train=160, labeled=0.25)
    model = sslkit.load_backbone(str(tiny_decoder_dir), budget.num_classes, lora={"r": 4, "alpha": 8},
                                 max_length=32)
    assert model.info.kind == "decoder" and model.info.pooling == "last"
    result = sslkit.fit(model, budget, preset, epochs=1, batch_size=16, progress=False,
                        run_dir=str(tmp_path / preset))
    assert 0.0 <= result.test["accuracy"] <= 1.0 and result.summary["epochs_run"] == 1
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)  # B starts at 0: the adapters trained
    if preset == "fixmatch":
        assert result.summary["n_pseudo_labeled"] >= 0 and (tmp_path / preset / "rounds.jsonl").exists()
    reloaded = sslkit.load_saved_backbone(tmp_path / preset / "checkpoint")
    assert reloaded.info.kind == "decoder"
