"""Confidence thresholds and pseudo-label selection: pure tensor code, testable on random tensors.

The adaptive rule (self-adaptive thresholds in the spirit of FreeMatch, Wang et al. 2023), per
training step on the unlabeled part of a batch with ``probs = softmax(logits)`` of shape [B, C]:

    tau    <- lam * tau + (1 - lam) * mean_i max_c probs[i, c]          (global confidence)
    p~     <- lam * p~  + (1 - lam) * mean_i probs[i, :]                  (class-wise expectation)
    tau_c   = clamp(tau * p~ / (max(p~) + 1e-8), 1e-8, 1 - 1e-8)          (tau clamped the same way)

Start: tau = tau0, p~ = 1/C, tau_c = tau. A pseudo-label for example i: m = probs[i] - tau_c,
j = argmax m, label j if m[j] > margin else none (-1).

Three rules share that interface, so a method takes any of them as its ``threshold``:
:class:`AdaptiveThreshold` (tau0 = 0.8, lam = 0.9, margin 0.05), :class:`FixedThreshold` (the classic
tau_c = tau for every class, never updated) and :class:`FreeMatchThreshold` (FreeMatch's start:
tau0 = 1/C, lam = 0.999). A rule is built with its settings and sized with :meth:`setup` once the
number of classes is known.

After each round, :func:`class_balanced_top_k` keeps, within each pseudo-class, the top fraction
by confidence (at least one per class that has candidates).

SoftMatch (Chen et al. 2023) weighs every text instead of thresholding it: :func:`align_to_uniform`,
:func:`soft_weights` and their running statistics, :class:`SoftWeighting`.
"""
from __future__ import annotations

from typing import Callable

import torch

EPS = 1e-8


class AdaptiveThreshold:
    """EMA state of the rule above. Attributes: ``tau`` (0-dim), ``p_tilde`` [C], ``tau_c`` [C].

    ``num_classes`` may be left out and given later to :meth:`setup` (a method builds its rule
    before it knows the data). ``reduce`` (optional) averages the batch statistics across processes
    before each update, so every process holds the same thresholds (pass e.g.
    ``lambda t: accelerator.reduce(t, "mean")``). ``margin`` is the default of :meth:`pseudo_labels`.
    """

    rule = "adaptive"
    #: the thresholds follow the model's confidence, so each step's unlabeled batch updates them
    adapts = True

    def __init__(self, num_classes: int | None = None, tau0: float = 0.8, ema: float = 0.9,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, margin: float = 0.05):
        if not 0.0 <= ema <= 1.0:
            raise ValueError("ema must be in [0, 1]")
        self.tau0, self.ema, self.margin = tau0, float(ema), float(margin)
        self.num_classes = None
        if num_classes is not None:
            self.setup(num_classes, reduce)

    def setup(self, num_classes: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> "AdaptiveThreshold":
        """(Re)start the state for ``num_classes`` classes."""
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.reduce = reduce
        # float32 state, as the probabilities (note: in float32 the upper clamp 1 - 1e-8 equals 1.0)
        self.tau = torch.tensor(float(self._start_tau(num_classes))).clamp(EPS, 1 - EPS)
        self.p_tilde = torch.full((num_classes,), 1.0 / num_classes)
        self.tau_c = self._class_thresholds()
        return self

    def _start_tau(self, num_classes: int) -> float:
        return self.tau0

    def config(self) -> dict:
        """The rule's settings, as recorded in a run's config.json."""
        return {"rule": self.rule, "tau0": float(self.tau0), "ema": self.ema, "margin": self.margin}

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "rule")
        return f"{type(self).__name__}({knobs})"

    def _class_thresholds(self) -> torch.Tensor:
        return (self.tau * self.p_tilde / (self.p_tilde.max() + EPS)).clamp(EPS, 1 - EPS)

    def _to(self, device: torch.device) -> None:
        if self.p_tilde.device != device:
            self.tau, self.p_tilde, self.tau_c = (t.to(device) for t in (self.tau, self.p_tilde, self.tau_c))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """One EMA step from a batch of probabilities [B, C]."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be [B, {self.num_classes}], got {tuple(probs.shape)}")
        if probs.shape[0] == 0:
            return
        probs = probs.detach().float()
        self._to(probs.device)
        batch_max = probs.max(dim=1).values.mean()
        batch_mean = probs.mean(dim=0)
        if self.reduce is not None:
            batch_max, batch_mean = self.reduce(batch_max), self.reduce(batch_mean)
        lam = self.ema
        self.tau = (lam * self.tau + (1 - lam) * batch_max).clamp(EPS, 1 - EPS)
        self.p_tilde = lam * self.p_tilde + (1 - lam) * batch_mean
        self.tau_c = self._class_thresholds()

    @torch.no_grad()
    def pseudo_labels(self, probs: torch.Tensor, margin: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [B] with -1 where none, margins [B] = m[j]) for probabilities [B, C]; ``margin``
        defaults to the rule's own."""
        return pseudo_labels_by_margin(probs, self.tau_c, self.margin if margin is None else margin)

    def state_dict(self) -> dict:
        return {"tau": self.tau.cpu(), "p_tilde": self.p_tilde.cpu(), "tau_c": self.tau_c.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.tau, self.p_tilde, self.tau_c = state["tau"], state["p_tilde"], state["tau_c"]


class FixedThreshold(AdaptiveThreshold):
    """The classic rule: tau_c = tau for every class, never updated (FixMatch: 0.95). Its margin
    defaults to 0: with the adaptive rule's 0.05 a threshold of 0.95 could never be passed."""

    rule = "fixed"
    adapts = False

    def __init__(self, num_classes: int | None = None, tau0: float = 0.95, margin: float = 0.0):
        super().__init__(num_classes, tau0=tau0, ema=1.0, margin=margin)

    def config(self) -> dict:
        return {"rule": self.rule, "tau": float(self.tau0), "margin": self.margin}

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:  # noqa: D102 - fixed: nothing to learn
        return None


class FreeMatchThreshold(AdaptiveThreshold):
    """FreeMatch's start (Wang et al. 2023): tau0 = 1/C (every class passes at first), lam = 0.999."""

    rule = "freematch"

    def __init__(self, num_classes: int | None = None, ema: float = 0.999, margin: float = 0.05):
        super().__init__(num_classes, tau0=0.0, ema=ema, margin=margin)

    def _start_tau(self, num_classes: int) -> float:
        return 1.0 / num_classes

    def config(self) -> dict:
        return {"rule": self.rule, "ema": self.ema, "margin": self.margin}


THRESHOLDS = {"adaptive": AdaptiveThreshold, "fixed": FixedThreshold, "freematch": FreeMatchThreshold}


def threshold_from_config(config: dict) -> AdaptiveThreshold:
    """The rule a run's config.json recorded (:meth:`AdaptiveThreshold.config`), unsized."""
    knobs = {k: v for k, v in config.items() if k != "rule"}
    if "tau" in knobs:
        knobs["tau0"] = knobs.pop("tau")
    return THRESHOLDS[config["rule"]](**knobs)


def pseudo_labels_by_margin(probs: torch.Tensor, tau_c: torch.Tensor, margin: float = 0.05):
    """m = probs - tau_c; j = argmax_c m; label j if m[j] > margin else -1. Returns (labels, m[j])."""
    m = probs.float() - tau_c.to(probs.device).float()
    best, j = m.max(dim=1)
    labels = torch.where(best > margin, j, torch.full_like(j, -1))
    return labels, best


def class_balanced_top_k(labels: torch.Tensor, confidence: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Row indices to keep: within each pseudo-class c with n_c candidates (label >= 0), the
    max(1, floor(fraction * n_c)) most confident rows. Rows labeled -1 are never kept.
    Vectorised (sorts, no loop over examples); returned in ascending row order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels).long().reshape(-1)
    confidence = torch.as_tensor(confidence).float().reshape(-1)
    if labels.shape != confidence.shape:
        raise ValueError("labels and confidence must have the same length")
    cand = torch.nonzero(labels >= 0).squeeze(1)
    if cand.numel() == 0:
        return cand
    lab, conf = labels[cand], confidence[cand]
    # sort by confidence (descending), then stably by class: each class's rows are contiguous, best first
    order = torch.argsort(conf, descending=True, stable=True)
    order = order[torch.argsort(lab[order], stable=True)]
    lab_sorted = lab[order]
    counts = torch.bincount(lab_sorted)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(lab_sorted.numel(), device=lab_sorted.device) - starts[lab_sorted]
    keep_n = torch.clamp((counts.float() * fraction + 1e-9).floor().long(), min=1)
    kept = cand[order[rank < keep_n[lab_sorted]]]
    return torch.sort(kept).values


# --------------------------------------------------------------------------- soft weighting (SoftMatch)
def align_to_uniform(probs: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """Uniform alignment (SoftMatch, Chen et al. 2023; ReMixMatch's distribution alignment with a
    uniform target): q~ = normalize(q / p_model), where p_model is the running mean prediction on
    the pool. A class the model under-predicts gets its probabilities scaled up, so its texts reach
    a pseudo-label as often as the others'."""
    q = probs.float() / p_model.to(probs.device).float().clamp_min(EPS)
    return q / q.sum(dim=1, keepdim=True)


def soft_weights(max_probs: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor | float,
                 n_sigma: float = 2.0) -> torch.Tensor:
    """SoftMatch's per-text weight of the unlabeled loss (Chen et al. 2023, eq. 7):

        w_i = 1                                                  if p_i >= mean
        w_i = exp(-(p_i - mean)^2 / (2 var / n_sigma^2))         otherwise

    with p_i = max_c q~_ic and (mean, var) the running mean and variance of p_i: a truncated
    Gaussian, so no text is dropped outright and the confident half counts fully."""
    below = (max_probs.float() - torch.as_tensor(mean, dtype=torch.float32, device=max_probs.device)).clamp(max=0)
    var = torch.as_tensor(var, dtype=torch.float32, device=max_probs.device).clamp_min(EPS)
    return torch.exp(-below.pow(2) / (2 * var / n_sigma ** 2))


class SoftWeighting:
    """SoftMatch's running statistics, updated from each step's weak predictions (EMA ``ema``):
    p_model (mean prediction, for :func:`align_to_uniform`) and the mean and variance of the
    aligned max-probability (for :func:`soft_weights`). Start: p_model = 1/C, mean = 1/C, var = 1."""

    def __init__(self, num_classes: int, ema: float = 0.999, n_sigma: float = 2.0):
        self.ema, self.n_sigma = ema, n_sigma
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.mean, self.var = torch.tensor(1.0 / num_classes), torch.tensor(1.0)

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update from weak probabilities [B, C]; returns (hard labels [B], weights [B])."""
        probs = probs.detach().float()
        lam, red = self.ema, reduce or (lambda t: t)
        self.p_model = self.p_model.to(probs.device)
        self.p_model = lam * self.p_model + (1 - lam) * red(probs.mean(0))
        aligned = align_to_uniform(probs, self.p_model)
        top, labels = aligned.max(dim=1)
        mean = red(top.mean())
        var = red(top.var(unbiased=True)) if top.numel() > 1 else self.var.to(top.device)
        self.mean = lam * self.mean.to(top.device) + (1 - lam) * mean
        self.var = lam * self.var.to(top.device) + (1 - lam) * var
        return labels, soft_weights(top, self.mean, self.var, self.n_sigma)

    def state_dict(self) -> dict:
        return {"p_model": self.p_model.cpu(), "mean": self.mean.cpu(), "var": self.var.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.p_model, self.mean, self.var = state["p_model"], state["mean"], state["var"]
