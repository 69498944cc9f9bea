"""sslkit.dropout: numpy-drawn CPU dropout masks — rate, scale, gradient, seeding, and the switch."""
import pytest
import torch
from torch import nn

from sslkit.dropout import FastDropout, fast_dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_rate(p):
    mask = keep_mask((1000, 1000), p, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
    drop = 1.0 - mask.float().mean().item()
    sd = (p * (1 - p) / 1e6) ** 0.5
    assert abs(drop - round(p * 2**16) / 2**16) < 6 * sd


def test_keep_mask_is_a_function_of_the_seed():
    assert torch.equal(keep_mask((50, 7), 0.3, 11), keep_mask((50, 7), 0.3, 11))
    assert not torch.equal(keep_mask((50, 7), 0.3, 11), keep_mask((50, 7), 0.3, 12))


def test_fast_dropout_values_gradient_and_mean():
    x = torch.rand(400, 300) + 0.5  # no zeros: a zero output means a dropped element
    x.requires_grad_(True)
    y = fast_dropout(x, 0.2)
    kept = y.detach() != 0
    assert torch.allclose(y.detach()[kept], x.detach()[kept] / 0.8)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.8)
    assert abs(y.detach().mean().item() / x.detach().mean().item() - 1.0) < 0.02  # E[y] = x


def test_torch_seed_fixes_the_masks():
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a, b = fast_dropout(x, 0.1), fast_dropout(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(fast_dropout(x, 0.1), a)
    assert not torch.equal(a, b)  # successive calls draw fresh masks


def test_identity_where_dropout_does_nothing():
    x = torch.randn(10, 10)
    assert torch.equal(fast_dropout(x, 0.3, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0), x)
    layer = FastDropout(0.5).eval()
    assert torch.equal(layer(x), x)


def test_switch_on_a_backbone(mcid_budget, make_tiny_model):
    budget = mcid_budget()
    plain = make_tiny_model(budget, seed=0, fast_dropout=False)
    fast = make_tiny_model(budget, seed=0)  # the default for a pretrained backbone
    assert fast.info.extra.get("fast_dropout") is True and "fast_dropout" not in plain.info.extra
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    n_fast = sum(isinstance(m, FastDropout) for m in fast.modules())
    assert n_fast == sum(type(m) is nn.Dropout for m in plain.modules()) > 0
    assert use_fast_dropout(fast) == 0  # nothing left to switch
    batch = fast.collate(fast.tokenize(budget.labeled.texts[:8]))
    args = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(fast(**args), plain(**args))  # eval: the same model, the same numbers
        fast.train()
        noisy = fast(**args)
    assert not torch.allclose(noisy, plain(**args))  # training: the masks are on


def test_saved_backbone_keeps_its_dropout(mcid_budget, make_tiny_model, tmp_path):
    import sslkit

    budget = mcid_budget()
    for flag in (True, False):
        model = make_tiny_model(budget, seed=0, fast_dropout=flag)
        model.save(tmp_path / str(flag))
        again = sslkit.backbones.load_saved_backbone(tmp_path / str(flag))
        assert any(isinstance(m, FastDropout) for m in again.modules()) is flag
        assert not any(type(m) is nn.Dropout for m in again.modules()) is flag


def test_every_backbone_takes_the_numpy_masks_unless_asked_not_to():
    """FastText too: one default for every backbone (on a GPU the masks are torch's anyway)."""
    import sslkit

    ft = sslkit.load_backbone("fasttext", 3, seed=0)
    assert ft.info.extra.get("fast_dropout") is True
    assert any(isinstance(m, FastDropout) for m in ft.modules())
    plain = sslkit.load_backbone("fasttext", 3, seed=0, fast_dropout=False)
    assert "fast_dropout" not in plain.info.extra
    assert not any(isinstance(m, FastDropout) for m in plain.modules())