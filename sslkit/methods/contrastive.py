"""Supervised contrastive fine-tuning: classification loss + weight * contrastive loss.

    L = L_cls(f(x), y) + w * L_con(g(h(x)), y)

L_cls is the trainer's configured loss (cross-entropy, or focal with ``fit(..., focal_gamma=2.0)``);
L_con one of :func:`sslkit.losses.supcon_loss` ("simple", Khosla et al. 2020),
:func:`~sslkit.losses.focal_contrastive_loss` ("focal") or
:func:`~sslkit.losses.margin_contrastive_loss` ("margin", batch-all triplets). h(x) is the pooled
embedding the classifier head sees (``layer=None``) or the pooled output of one transformer block
(``layer=i``); g is the identity or a small MLP projection head (``projection=d``), used only for
the contrastive term, as in SimCLR / SupCon.

Batches come from :func:`sslkit.sampling.pk_batches` (P classes x K = ``k`` examples), so every
anchor has positives: with a plain shuffle of banking77 at 10% labels most anchors have none.

With ``pseudo_positives=True`` the unlabeled part of the batch joins the contrastive term: examples
whose confidence (max softmax of the current model, no gradient) is >= ``pseudo_threshold`` take
their predicted class as label and act as anchors, positives and negatives; the classification loss
stays on human labels only.

Several processes: each process computes the contrastive loss on its own batch (P x K batches are
dealt whole to processes), no feature gathering across processes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..backbones import POOLERS
from ..losses import focal_contrastive_loss, margin_contrastive_loss, supcon_loss
from ..sampling import pk_batches
from .base import Method

#: Attribute under which :meth:`Contrastive.configure_model` attaches the projection head to the
#: backbone (a submodule, so the optimiser, device placement, DDP and trainable state include it).
PROJECTION_ATTR = "contrastive_projection"

LOSSES = ("simple", "focal", "margin")


def transformer_blocks(model) -> nn.ModuleList:
    """The list of transformer blocks of a :class:`~sslkit.backbones.Backbone`'s encoder (BERT:
    ``encoder.layer``, Qwen/Llama: ``layers``), peft-wrapped or not."""
    encoder = model.encoder
    base = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    n = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and (n is None or len(module) == n):
            return module
    raise ValueError(f"no list of {n} transformer blocks found in {type(base).__name__}")


@dataclass(init=False)
class Contrastive(Method):
    """Classification loss + ``weight`` x a supervised contrastive loss on P x K batches.

    loss: "simple" (SupCon), "focal" (focal contrastive) or "margin" (batch-all triplet).
    weight: w in L = L_cls + w L_con. temperature (simple, focal), gamma (focal), margin (margin).
    k: examples per class in a batch (P = batch_size / k classes); k <= 1: plain shuffle.
    layer: None = the pooled embedding the head sees; int i = the output of transformer block i
      (0-based, negative from the end), pooled like the backbone pools (masked mean for encoders,
      last token for decoders). Decoders apply a final norm after the last block, so ``layer=-1``
      is not the same as ``None`` there.
    projection: None, or the output size of a Linear(d, d) -> ReLU -> Linear(d, projection) head
      applied before the contrastive loss (not used for classification). It is attached to the
      model by :meth:`configure_model` (the trainer calls it before building the optimiser).
    pseudo_positives / pseudo_threshold: confident unlabeled examples join the contrastive term.
    """

    objective: str = "simple"
    weight: float = 0.5
    temperature: float = 0.1
    gamma: float = 2.0
    margin: float = 0.2
    k: int = 4
    layer: int | None = None
    projection: int | None = None
    pseudo_positives: bool = False
    pseudo_threshold: float = 0.95

    name = "contrastive"

    def __init__(self, loss: str = "simple", weight: float = 0.5, temperature: float = 0.1,
                 gamma: float = 2.0, margin: float = 0.2, k: int = 4, layer: int | None = None,
                 projection: int | None = None, pseudo_positives: bool = False,
                 pseudo_threshold: float = 0.95):
        # the knob is called ``loss`` (its name in the literature) but ``loss`` is also the Method's step function,
        # so it is stored as ``objective`` and recorded as "loss" in config()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if projection is not None and int(projection) < 1:
            raise ValueError(f"projection must be None or a positive size, got {projection}")
        self.objective, self.weight, self.temperature = loss, float(weight), float(temperature)
        self.gamma, self.margin, self.k = float(gamma), float(margin), int(k)
        self.layer = None if layer is None else int(layer)
        self.projection = None if projection is None else int(projection)
        self.pseudo_positives, self.pseudo_threshold = bool(pseudo_positives), float(pseudo_threshold)
        self._block = None  # the hooked transformer block when layer is set (found in setup)

    @property
    def uses_unlabeled(self) -> bool:  # type: ignore[override]
        return self.pseudo_positives

    def __repr__(self) -> str:
        knobs = self.config()
        knobs.pop("name")
        return "Contrastive(" + ", ".join(f"{k}={v!r}" for k, v in knobs.items()) + ")"

    def config(self) -> dict:
        knobs = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"name": self.name, "loss": knobs.pop("objective"), **knobs}

    # ------------------------------------------------------------------ model and batches
    def configure_model(self, model) -> None:
        """Attach the projection head (if any) to ``model`` as ``model.contrastive_projection``.

        Call it before ``fit`` builds its optimiser (the trainer does): as a submodule of the
        backbone the head is moved to the device, optimised (LoRA learning rate), wrapped by DDP
        with the rest and kept in the best/resume state. ``Backbone.save`` does not write it (it
        is a training-time device, not used for prediction). Idempotent; the head is initialised
        from a fixed seed, so runs are reproducible whatever the global RNG state."""
        if self.projection is None:
            return
        existing = getattr(model, PROJECTION_ATTR, None)
        if existing is not None and existing[-1].out_features == self.projection:
            return
        dim = model._head_weight().shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, self.projection))
        param = next(model.parameters())
        model.add_module(PROJECTION_ATTR, head.to(device=param.device))

    def labeled_batches(self, labels, batch_size: int, rng) -> list[list[int]] | None:
        return pk_batches(labels, batch_size, self.k, rng) if self.k > 1 else None

    def setup(self, ctx) -> None:
        model = ctx.unwrapped_model
        if self.projection is not None:
            head = getattr(model, PROJECTION_ATTR, None)
            if head is None or head[-1].out_features != self.projection:
                raise RuntimeError(
                    "Contrastive(projection=...) needs its head attached before fit() builds the "
                    "optimiser: call method.configure_model(model) first")
        self._block = transformer_blocks(model)[self.layer] if self.layer is not None else None

    # ------------------------------------------------------------------ the step
    def _forward(self, ctx, part: dict):
        """logits and the features the contrastive term uses (block output or pooled embedding)."""
        if self._block is None:
            logits, h = ctx.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"],
                                  return_features=True)
        else:
            captured = {}

            def hook(module, args, output):
                captured["h"] = output[0] if isinstance(output, tuple) else output

            handle = self._block.register_forward_hook(hook)
            try:
                logits = ctx.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
            finally:
                handle.remove()
            pool = POOLERS[ctx.unwrapped_model.info.pooling]
            h = pool(captured["h"], part["attention_mask"]).float()
        if self.projection is not None:
            h = getattr(ctx.unwrapped_model, PROJECTION_ATTR)(h)
        return logits, h

    def contrastive_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.objective == "simple":
            return supcon_loss(features, labels, self.temperature)
        if self.objective == "focal":
            return focal_contrastive_loss(features, labels, self.temperature, self.gamma)
        return margin_contrastive_loss(features, labels, self.margin)

    def loss(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        lab, unl = batch["labeled"], batch.get("unlabeled")
        logits, feats = self._forward(ctx, lab)
        sup = ctx.sup_loss(logits, lab["labels"])
        labels = lab["labels"]
        out = {}
        if self.pseudo_positives and unl is not None:
            u_logits, u_feats = self._forward(ctx, unl)
            conf, pred = torch.softmax(u_logits.detach().float(), dim=-1).max(dim=-1)
            keep = conf >= self.pseudo_threshold
            feats = torch.cat([feats, u_feats[keep]])
            labels = torch.cat([labels, pred[keep]])
            out["pseudo_positives"] = keep.float().sum()
        con = self.contrastive_loss(feats, labels)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        out["anchors"] = ((same.sum(1) > 1).float().mean())  # share of anchors with a positive
        total = sup + self.weight * con
        return {"loss": total, "sup": sup.detach(), "contrastive": con.detach(), **out}
