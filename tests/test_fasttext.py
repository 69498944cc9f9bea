"""The FastText backbone: stable hashing, n-grams for Chinese and English, the Backbone interface,
save/reload, and a few real training steps through sslkit.fit."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sslkit
from sslkit.backbones import SAVE_CONFIG, BackboneInfo, CosineHead
from sslkit.backbones.fasttext import MASK_ID, NgramHasher, load_fasttext, load_saved_fasttext

TEXTS = ["How do I top up my card?", "今天东莞天气如何", "播放周杰伦的歌", "Where is my refund??",
         "a", "ＡＢＣ full-width and 中英 mixed text"]
SMALL = dict(buckets=2**12, dim=16)  # a small table: fast tests


def test_hashing_is_stable_across_processes():
    """Same ids in a fresh interpreter with another PYTHONHASHSEED (no salted hash())."""
    here = load_fasttext(3, **SMALL).tokenize(TEXTS)
    code = ("import json, sys; from sslkit.backbones.fasttext import load_fasttext; "
            f"print(json.dumps(load_fasttext(3, **{SMALL!r}).tokenize(json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # this process: a random seed (or another)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == here


def test_hash_values_are_pinned():
    """The hash function is part of every saved model: a change would silently break them."""
    hasher = NgramHasher(num_hashes=1, unique=False, buckets=2**20)
    # "ab cd": 2 words + 1 word bigram + 7 char n-grams of "<ab>" and of "<cd>"
    assert hasher(["ab cd"]) == [[468612, 969244, 22375, 526147, 434364, 654319, 869080, 252948,
                                  933342, 815142, 148531, 587281, 615339, 553443, 308873, 289740,
                                  524105]]


def test_chinese_and_english_give_ngrams():
    hasher = NgramHasher(num_hashes=1, unique=False)
    zh, en = hasher(["今天东莞天气如何", "top up my card"])
    # zh: one "word" (no spaces) + 8 + 9 + 8 char 1/2/3-grams of "<今天东莞天气如何>"
    assert len(zh) == 1 + 8 + 9 + 8
    # en: 4 words + 3 bigrams + char n-grams of <top> <up> <my> <card>
    assert len(en) == 4 + 3 + sum(3 * len(w) + 1 for w in ("top", "up", "my", "card"))
    ids = load_fasttext(3).tokenize(TEXTS)
    assert all(len(x) > 0 for x in ids)
    assert all(2 <= i < 2 + 2**16 for x in ids for i in x)  # 0 = padding, 1 = mask: never produced
    # character n-grams carry the signal: a shared character pair shares ids
    a, b, c = hasher(["天气预报", "明天天气", "播放音乐"])
    assert set(a) & set(b) and not set(a) & set(c)


def test_lower_case_and_unique_and_truncation():
    hasher = NgramHasher(word_ngrams=None, unique=True)
    assert hasher(["ABAB"]) == hasher(["abab"])
    assert hasher(["abab abab"]) == hasher(["abab"])  # a binary bag: repeats add nothing
    bag = NgramHasher(num_hashes=1, unique=False)  # counts: twice the n-grams + the word bigram
    assert len(bag(["abab abab"])[0]) == 2 * len(bag(["abab"])[0]) + 1
    long = " ".join(f"word{i}" for i in range(500))
    cut = hasher([long], max_length=20)[0]
    assert len(cut) == 20
    assert cut == hasher([long])[0][:20]  # the beginning of the text is kept


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_text_is_refused(bad):
    model = load_fasttext(2, **SMALL)
    with pytest.raises(ValueError, match=r"text 1 is empty or only whitespace"):
        model.tokenize(["fine", bad])


def test_backbone_interface():
    model = load_fasttext(4, **SMALL, dropout=0.0, lora={"r": 8}, dtype="bf16", pooling="auto",
                          gradient_checkpointing=True)  # pretrained-only keywords: ignored
    with pytest.raises(TypeError, match="char_ngram"):  # a typo is not silently ignored
        load_fasttext(4, **SMALL, char_ngram=(1, 2))
    with pytest.raises(TypeError, match="fasttext"):  # fasttext options on a pretrained backbone
        sslkit.load_backbone("minilm", 4, buckets=16)
    opts = sslkit.load_backbone("fasttext", 4, char_ngrams=(1, 2), buckets=64, dim=8).info.extra
    assert (opts["char_ngrams"], opts["buckets"], opts["dim"]) == ([1, 2], 64, 8)
    assert isinstance(model.head, CosineHead) and isinstance(model.info, BackboneInfo)
    assert (model.info.kind, model.info.name, model.info.model_type) == ("fasttext",) * 3
    assert model.num_labels == 4 and model.mask_token_id == MASK_ID and model.special_token_ids == {0}
    assert model.num_parameters() == model.num_parameters(trainable=True) == (2**12 + 2) * 16 + 4 * 16
    ids = model.tokenize(TEXTS[:3])
    batch = model.collate(ids)
    assert batch["input_ids"].shape == (3, max(map(len, ids)))
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(x) for x in ids]))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert all(batch["input_ids"][i, :len(x)].tolist() == list(x) for i, x in enumerate(ids))
    assert torch.equal(model.collate([[], [7, 3]])["input_ids"], torch.tensor([[0, 0], [7, 3]]))
    assert model.collate([[]])["input_ids"].shape == (1, 1)
    model.eval()
    logits, h = model(**batch, return_features=True)
    assert logits.shape == (3, 4) and h.shape == (3, 16) and h.dtype == torch.float32
    # features = masked mean of the rows; inputs_embeds replaces the lookup
    rows = model.encoder.weight[torch.tensor(ids[0])]
    torch.testing.assert_close(h[0], rows.mean(0))
    emb = model.input_embeddings(batch["input_ids"])
    assert emb.shape == (3, batch["input_ids"].shape[1], 16)
    torch.testing.assert_close(model(inputs_embeds=emb, input_ids=None, attention_mask=batch["attention_mask"]),
                               logits)
    # the ids path (one embedding_bag over the real positions) and the padded lookup agree, gradients
    # included, with IDF weights on
    idf = load_fasttext(4, **SMALL, weighting="idf")
    idf.adapt_to_corpus(TEXTS)
    idf.eval()
    grads = []
    for use_ids in (True, False):
        idf.zero_grad()
        b = idf.collate(idf.tokenize(TEXTS))
        h = idf.features(b["input_ids"], b["attention_mask"], inputs_embeds=None if use_ids else
                         idf.input_embeddings(b["input_ids"]))
        (h * torch.arange(16.0)).sum().backward()
        grads.append((h.detach(), idf.encoder.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][1].abs().sum() > 0
    # a linear head and prototypes work too
    linear = load_fasttext(2, **SMALL, head="linear")
    linear.init_head_from_prototypes(np.eye(16)[:4], [0, 0, 1, 1])
    assert torch.equal(linear.head.bias, torch.zeros(2))


def test_save_and_reload_give_identical_logits(tmp_path):
    model = load_fasttext(3, **SMALL, head="linear", char_ngrams=(2, 4), max_length=300, seed=1)
    with torch.no_grad():  # not the init: reload has to carry the trained table and head
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.eval()
    batch = model.collate(model.tokenize(TEXTS))
    before = model(**batch)
    model.save(tmp_path, label_names=["a", "b", "c"])
    saved = json.loads((tmp_path / SAVE_CONFIG).read_text())
    assert saved["kind"] == "fasttext" and saved["label_names"] == ["a", "b", "c"]
    assert saved["extra"]["char_ngrams"] == [2, 4] and saved["max_length"] == 300
    again = load_saved_fasttext(tmp_path)
    assert not again.training
    assert again.tokenize(TEXTS) == model.tokenize(TEXTS)
    assert torch.equal(again(**again.collate(again.tokenize(TEXTS))), before)


def test_fit_trains_end_to_end(tmp_path):
    data = sslkit.load_dataset("banking77").subsample(train=200, dev=50, test=50, seed=0)
    budget = sslkit.split_budget(data, labeled=0.5, seed=0)
    model = load_fasttext(budget.num_classes, **SMALL, dropout=0.0)
    result = sslkit.fit(model, budget, sslkit.methods.Supervised(), epochs=6, batch_size=16, lr=0.05,
                        weight_decay=0.0, max_grad_norm=0.0, seed=0, run_dir=tmp_path, progress=False)
    losses = result.history["epoch_loss"].dropna().to_numpy()
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert 0.0 <= result.test["accuracy"] <= 1.0
    # the trainer's checkpoint reloads to the same predictions
    again = load_saved_fasttext(tmp_path / "checkpoint")
    texts = budget.test.texts
    _, want = sslkit.embed(result.model, texts, return_logits=True)
    _, got = sslkit.embed(again, texts, return_logits=True)
    np.testing.assert_array_equal(got, want)


def test_fused_optimizer_is_the_fasttext_default_and_the_same_update(tmp_path, monkeypatch):
    """fit(fused_optimizer=True) builds torch's fused AdamW (FastText's default, not LoRA's); it
    trains to the same weights as the per-tensor update, up to float rounding."""
    assert sslkit.train_defaults("fasttext")["fused_optimizer"] is True
    assert "fused_optimizer" not in sslkit.train_defaults("minilm")
    made = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("fused"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    data = sslkit.load_dataset("banking77").subsample(train=120, dev=30, test=30, seed=0)
    budget = sslkit.split_budget(data, labeled=0.5, seed=0)
    tables = {}
    for fused in (False, True):
        model = load_fasttext(budget.num_classes, **SMALL, dropout=0.0)
        start = model.encoder.weight.detach().clone()
        result = sslkit.fit(model, budget, sslkit.methods.Supervised(), epochs=2, batch_size=16, lr=0.05,
                            fused_optimizer=fused, seed=0, run_dir=tmp_path / str(fused), progress=False)
        tables[fused] = result.model.encoder.weight.detach()
        assert (tables[fused] - start).abs().max() > 0.01  # it trained
        assert json.loads((tmp_path / str(fused) / "config.json").read_text())["train"].get("fused_optimizer", False) is fused
    assert made == [None, True]
    torch.testing.assert_close(tables[True], tables[False], rtol=1e-4, atol=1e-5)


def test_idf_weighting_from_the_training_corpus(tmp_path):
    """weighting="idf": w = ln((1+N)/(1+df)) + 1 per id, taken by fit from all training texts,
    saved with the model; the pooled vector is the w-weighted mean of the rows."""
    texts = ["card top up", "card refund", "card lost", "refund late"]
    model = load_fasttext(3, **SMALL, weighting="idf", word_ngrams=(1, 1), char_ngrams=None, num_hashes=1)
    assert torch.equal(model.ngram_weight, torch.ones_like(model.ngram_weight))  # before any corpus
    model.adapt_to_corpus(texts)
    card, refund, lost = (model.tokenize([w])[0][0] for w in ("card", "refund", "lost"))
    w = model.ngram_weight
    assert w[card] == pytest.approx(np.log(5 / 4) + 1) and w[refund] == pytest.approx(np.log(5 / 3) + 1)
    assert w[lost] == pytest.approx(np.log(5 / 2) + 1)
    model.eval()
    batch = model.collate(model.tokenize(["card lost"]))
    rows = model.encoder.weight
    expected = (w[card] * rows[card] + w[lost] * rows[lost]) / (w[card] + w[lost])
    assert torch.allclose(model.features(**batch)[0], expected, atol=1e-6)
    before = model(**batch)
    model.save(tmp_path)
    again = load_saved_fasttext(tmp_path)
    assert torch.equal(again.ngram_weight, w) and torch.equal(again(**batch), before)
    with pytest.raises(ValueError, match="weighting"):
        load_fasttext(3, **SMALL, weighting="tfidf")


def test_fit_takes_idf_from_labeled_and_unlabeled_texts(tmp_path):
    data = sslkit.load_dataset("banking77").subsample(train=120, dev=30, test=30, seed=0)
    budget = sslkit.split_budget(data, labeled=0.25, seed=0)
    model = load_fasttext(budget.num_classes, **SMALL, weighting="idf")
    sslkit.fit(model, budget, sslkit.methods.Supervised(), epochs=1, batch_size=16, seed=0, run_dir=tmp_path,
               progress=False, save_checkpoint=False)
    all_texts = list(budget.labeled.texts) + list(budget.unlabeled.texts)
    fresh = load_fasttext(budget.num_classes, **SMALL, weighting="idf")
    fresh.adapt_to_corpus(all_texts)
    assert torch.equal(model.ngram_weight, fresh.ngram_weight)
    assert model.ngram_weight.max() > model.ngram_weight[2:].min() > 1.0 - 1e-6


def test_lsa_init_from_the_corpus():
    """init="lsa": rows of n-grams that occur together start close, the others apart; seen rows get
    mean norm lsa_norm; ids no text contains keep their random init; the same corpus gives the same
    table."""
    texts = ["alpha beta"] * 5 + ["gamma delta"] * 5 + ["alpha beta gamma"]
    opts = dict(buckets=2**12, dim=4, init="lsa", lsa_norm=2.0, word_ngrams=(1, 1), char_ngrams=None, num_hashes=1)
    model = load_fasttext(2, **opts)
    before = model.encoder.weight.detach().clone()
    model.adapt_to_corpus(texts)
    rows = model.encoder.weight.detach()
    a, b, g, d = (model.tokenize([w])[0][0] for w in ("alpha", "beta", "gamma", "delta"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(rows[a], rows[b], dim=0) > 0.99 and abs(float(cos(rows[a], rows[d], dim=0))) < 0.5
    assert rows[[a, b, g, d]].norm(dim=1).mean() == pytest.approx(2.0, rel=1e-5)
    others = torch.ones(len(rows), dtype=torch.bool)
    others[[a, b, g, d]] = False
    assert torch.equal(rows[others], before[others])
    again = load_fasttext(2, **opts)
    again.adapt_to_corpus(texts)
    assert torch.equal(again.encoder.weight, model.encoder.weight)
    with pytest.raises(ValueError, match="init"):
        load_fasttext(2, **SMALL, init="word2vec")


def test_presets_are_backbone_names_with_their_train_defaults(tmp_path):
    model = sslkit.load_backbone("fasttext-zh", 3, buckets=2**10)  # the caller's option over the preset's
    extra = model.info.extra
    assert model.info.name == "fasttext-zh" and model.info.max_length == 8192
    assert (extra["char_ngrams"], extra["word_ngrams"], extra["init"], extra["buckets"]) == ([1, 2], None, "lsa", 2**10)
    assert sslkit.train_defaults("fasttext-zh")["weight_decay"] == 0.1
    assert sslkit.train_defaults("fasttext")["weight_decay"] == sslkit.backbones.fasttext.TRAIN_DEFAULTS["weight_decay"]
    assert sslkit.train_defaults("fasttext-zh", weight_decay=0.0)["weight_decay"] == 0.0
    model.save(tmp_path)
    assert sslkit.backbones.load_saved_backbone(tmp_path).info == model.info
