"""Frozen-feature probes (the MFCC baseline is in :mod:`eval.mfcc`).

Everything here works on PRECOMPUTED features (torch tensors); nothing imports the encoder. The encoder harness
extracts features once, then calls these.

Probes (all include their own feature standardisation, fitted on the training set by :func:`fit_probe` and stored
as buffers, so :func:`predict` on new data applies the same transform; no BatchNorm anywhere):

* :class:`LinearProbe`: one layer's pooled features ``[N, D]`` -> linear head.
* :class:`WeightedLayerProbe`: pooled features of all layers ``[N, L, D]`` -> softmax-weighted sum over layers
  (learned weights, returned by ``layer_weights()``) -> linear head.
* :class:`AttentiveProbe`: token sequences ``[N, T, D]`` -> one learned query cross-attends over the tokens (a
  V-JEPA-style attentive pooler: pre-norm multi-head cross-attention + MLP, both residual on the query) -> linear
  head. Variable token counts: pass a list of ``[T_i, D]`` tensors, or ``(x [N, T, D], valid_mask [N, T])``.

The fair linear read-out, :func:`fit_logreg`: ``StandardScaler`` + scikit-learn's ``LogisticRegression`` fitted
to convergence (L-BFGS), its inverse regularisation ``C`` chosen on the valid split from :data:`LOGREG_CS`. It is
the MAE / AudioMAE linear-probing protocol (standardised features, then a linear classifier) without an
optimisation budget that could underfit, and it reads out every encoder and the MFCC baseline the same way.
:func:`linear_probe_by_layer` uses it on every layer.

Training: :func:`fit_probe` (AdamW, per-step cosine schedule, optional selection of the best epoch on a validation
set); :func:`predict` returns logits; :func:`evaluate_probe` turns them into metrics.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from encoder.query_attention import normalise_tokens, query_attention
from eval import metrics
from mosaic_core.runtime import autocast
from mosaic_core.schedule import lr_factor

__all__ = [
    "LOGREG_CS",
    "AttentiveProbe",
    "LinearProbe",
    "LogRegReadout",
    "WeightedLayerProbe",
    "evaluate_probe",
    "fit_logreg",
    "fit_probe",
    "linear_probe_by_layer",
    "predict",
]

_EPS = 1e-6


# --------------------------------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------------------------------
class _Probe(nn.Module):
    """Common parts: standardisation buffers, input packing, parameter reset."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1:
            raise ValueError(f"{type(self).__name__}: dim and num_classes must be >= 1 (got {dim}, {num_classes})")
        self.dim = dim
        self.num_classes = num_classes
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))

    # -- inputs -----------------------------------------------------------------------------------------------
    def pack(self, x: Any) -> tuple[torch.Tensor, ...]:
        """Turn user input into a tuple of tensors whose first dimension is the example index (the subclasses
        say what a single input looks like; the base class takes one [N, dim] tensor)."""
        return (self._check_tensor(x, 2, "[N, dim] features"),)

    def _check_tensor(self, x: Any, ndim: int, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim != ndim:
            raise ValueError(f"{type(self).__name__}: expected {what}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: feature dim {x.shape[-1]} != probe dim {self.dim}")
        return x.float()

    # -- standardisation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_standardiser(self, *packed: torch.Tensor) -> None:
        """Per-feature mean/std over the training set (over every example, layer and valid token)."""
        x = packed[0]
        flat = x.reshape(-1, self.dim)
        if len(packed) > 1 and packed[1] is not None:  # token validity mask
            flat = x[packed[1]]
        self.feat_mean.copy_(flat.mean(dim=0))
        self.feat_std.copy_(flat.std(dim=0, unbiased=False).clamp_min(_EPS))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feat_mean) / self.feat_std

    # -- the fixed part of the forward, done once per fit -----------------------------------------------------------
    def prepare(self, *packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part of the forward that has no trainable parameter, applied to packed inputs once (``fit_probe``
        does it once per fit, after :meth:`fit_standardiser`); ``forward(*packed) ==
        forward_prepared(*prepare(*packed))``. The base class prepares nothing."""
        return packed

    def forward_prepared(self, *prepared: torch.Tensor) -> torch.Tensor:
        return self(*prepared)

    def reset_parameters(self) -> None:
        """Re-initialise every submodule (``fit_probe`` calls this under the run's seed)."""
        for m in self.modules():
            if m is self:
                continue
            if isinstance(m, nn.MultiheadAttention):
                m._reset_parameters()  # its in-projection has no public reset
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()


class LinearProbe(_Probe):
    """Linear classifier on one layer's pooled features ``[N, D]``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        self.head = nn.Linear(dim, num_classes)

    def pack(self, x: Any) -> tuple[torch.Tensor, ...]:
        return (self._check_tensor(x, 2, "[N, D] pooled features"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardise(x))


class WeightedLayerProbe(_Probe):
    """Softmax-weighted sum over layers of pooled features ``[N, L, D]``, then a linear head.

    Standardisation is per layer and feature (layers differ in scale, which would otherwise bias the weights).
    The learned mixture is ``layer_weights()`` (softmax of ``layer_logits``, sums to 1).
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        if num_layers < 1:
            raise ValueError(f"WeightedLayerProbe: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.feat_mean = torch.zeros(num_layers, dim)
        self.feat_std = torch.ones(num_layers, dim)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.head = nn.Linear(dim, num_classes)

    def pack(self, x: Any) -> tuple[torch.Tensor, ...]:
        x = self._check_tensor(x, 3, "[N, L, D] per-layer pooled features")
        if x.shape[1] != self.num_layers:
            raise ValueError(f"WeightedLayerProbe: got {x.shape[1]} layers, probe built for {self.num_layers}")
        return (x,)

    @torch.no_grad()
    def fit_standardiser(self, x: torch.Tensor) -> None:
        self.feat_mean.copy_(x.mean(dim=0))
        self.feat_std.copy_(x.std(dim=0, unbiased=False).clamp_min(_EPS))

    def layer_weights(self) -> torch.Tensor:
        """Learned softmax weights over layers, ``[L]`` (detached)."""
        return torch.softmax(self.layer_logits.detach(), dim=0)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.layer_logits.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.layer_logits, dim=0)
        mixed = torch.einsum("nld,l->nd", self.standardise(x), w)
        return self.head(mixed)


class AttentiveProbe(_Probe):
    """One learned query cross-attending over tokens ``[N, T, D]``, then a linear head.

    Block (pre-norm, residual on the query): ``q = query + MHA(LN(query), LN(tokens))``;
    ``q = q + MLP(LN(q))``; ``logits = head(LN(q))``. Padding tokens are excluded through the attention mask.
    """

    def __init__(self, dim: int, num_classes: int, *, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__(dim, num_classes)
        if dim % num_heads:
            raise ValueError(f"AttentiveProbe: dim {dim} is not divisible by num_heads {num_heads}")
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            nn.init.trunc_normal_(self.query, std=0.02)

    def pack(self, x: Any) -> tuple[torch.Tensor, ...]:
        if isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[1], torch.Tensor) and x[1].dtype == torch.bool:
            feats = self._check_tensor(x[0], 3, "[N, T, D] tokens")
            mask = x[1]
            if mask.shape != feats.shape[:2]:
                raise ValueError(f"AttentiveProbe: mask {tuple(mask.shape)} does not match tokens {tuple(feats.shape)}")
        elif isinstance(x, (list, tuple)):
            seqs = [self._check_tensor(s, 2, "[T_i, D] tokens per example") for s in x]
            if not seqs:
                raise ValueError("AttentiveProbe: empty list of token sequences")
            t_max = max(s.shape[0] for s in seqs)
            feats = torch.zeros(len(seqs), t_max, self.dim)
            mask = torch.zeros(len(seqs), t_max, dtype=torch.bool)
            for i, s in enumerate(seqs):
                feats[i, : s.shape[0]] = s
                mask[i, : s.shape[0]] = True
        else:
            feats = self._check_tensor(x, 3, "[N, T, D] tokens")
            mask = torch.ones(feats.shape[:2], dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("AttentiveProbe: every example needs at least one valid token")
        return feats, mask

    def prepare(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Standardised tokens through ``norm_kv``'s normalisation (its affine is applied in
        :meth:`forward_prepared`): the per-token work that no parameter touches, done once per fit."""
        xn = normalise_tokens(self.standardise(x), self.norm_kv)
        return (xn,) if mask is None else (xn, mask)

    def forward_prepared(self, xn: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block on prepared tokens ``xn`` ``[N, T, D]``, computed from the query side
        (:func:`encoder.query_attention.query_attention`): the same function as ``nn.MultiheadAttention`` on
        ``norm_kv(x)``, at O(T * D * heads) per example instead of O(T * D^2) for the key and value projections."""
        q = self.query[0]
        q = q + query_attention(self.attn, self.norm_kv, self.norm_q(q), xn, mask)  # [N, 1, D]
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(self.norm_out(q[:, 0]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_prepared(*self.prepare(x, mask))


# --------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------
def _pack_targets(y: Any, n: int, num_classes: int, multilabel: bool, name: str) -> torch.Tensor:
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.shape[0] != n:
        raise ValueError(f"{name}: {y.shape[0]} targets for {n} examples")
    if multilabel:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise ValueError(f"{name}: multi-label targets must be [N, {num_classes}], got {tuple(y.shape)}")
        return y.float()
    if y.ndim != 1:
        raise ValueError(f"{name}: single-label targets must be [N] class indices, got {tuple(y.shape)}")
    y = y.long()
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: class indices must lie in [0, {num_classes})")
    return y


def _score(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> float:
    if multilabel:
        return metrics.mean_average_precision(y.numpy() > 0.5, logits.numpy())
    return metrics.accuracy(y.numpy(), logits.argmax(dim=1).numpy())


@torch.no_grad()
def _predict_packed(probe: _Probe, packed: tuple[torch.Tensor, ...], batch_size: int,
                    prepared: bool = False) -> torch.Tensor:
    was_training = probe.training
    probe.eval()
    device = next(probe.parameters()).device
    n = packed[0].shape[0]
    fwd = probe.forward_prepared if prepared else probe
    out = [fwd(*(p[i : i + batch_size].to(device) for p in packed)).float().cpu() for i in range(0, n, batch_size)]
    probe.train(was_training)
    return torch.cat(out)


def fit_probe(
    probe: _Probe,
    train_x: Any,
    train_y: Any,
    valid_x: Any = None,
    valid_y: Any = None,
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int = 256,
    seed: int = 0,
    multilabel: bool = False,
    warmup_epochs: float = 0.0,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> dict:
    """Train ``probe`` in place on precomputed features and return its history.

    * Parameters are re-initialised from ``seed`` and the batch order is drawn from ``seed``: same seed, same
      inputs -> same probe.
    * Feature standardisation is fitted on ``train_x``.
    * Loss: cross-entropy (``train_y`` = class indices ``[N]``) or, with ``multilabel=True``, binary cross-entropy
      on a ``[N, C]`` target matrix (soft targets allowed).
    * AdamW (weight decay on weight matrices only, not on biases, norms, the query or layer logits), learning rate
      with optional linear warm-up then cosine decay to 0 (:mod:`mosaic_core.schedule`), stepped per batch.
    * With ``valid_x``/``valid_y``, the metric (accuracy, or mAP if multilabel) is computed after every epoch and
      the probe is left with the weights of the best epoch (ties: the earlier epoch).
    * ``train_metric`` is read from the epoch's own training batches (no second pass over the training set).
    * ``bf16``: forward and backward under bf16 autocast (parameters, optimiser and loss stay fp32); on CPUs with
      native bf16 an attentive probe fits ~2-3x faster.

    Returns:
        ``{"train_loss": [per epoch], "train_metric": [...], "valid_metric": [...] (if valid), "lr": [per epoch,
        at its end], "metric": "accuracy" | "mAP", "best_epoch": int, "best_valid": float | None, "seed": int}``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit_probe: epochs and batch_size must be >= 1 (got {epochs}, {batch_size})")
    if (valid_x is None) != (valid_y is None):
        raise ValueError("fit_probe: give both valid_x and valid_y, or neither")
    device = torch.device(device)
    train = probe.pack(train_x)
    n = train[0].shape[0]
    if n == 0:
        raise ValueError("fit_probe: no training examples")
    ytr = _pack_targets(train_y, n, probe.num_classes, multilabel, "train_y")
    valid = probe.pack(valid_x) if valid_x is not None else None
    yva = _pack_targets(valid_y, valid[0].shape[0], probe.num_classes, multilabel, "valid_y") if valid else None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe.reset_parameters()
    probe.fit_standardiser(*train)
    with torch.no_grad():  # the fixed per-token work, once per fit instead of once per epoch
        train = probe.prepare(*train)
        valid = probe.prepare(*valid) if valid is not None else None
    probe.to(device)
    gen = torch.Generator().manual_seed(seed)

    decay, no_decay = [], []
    for name, p in probe.named_parameters():
        (decay if p.ndim >= 2 and name != "query" else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = int(warmup_epochs * steps_per_epoch)

    # the kit's one schedule (mosaic_core.schedule); the probe's warm-up counts its first step as 1 / warmup
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step + 1 if step < warmup else step, total, warmup)
    )
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    metric_name = "mAP" if multilabel else "accuracy"

    history: dict = {"train_loss": [], "train_metric": [], "lr": [], "metric": metric_name, "seed": seed}
    if valid is not None:
        history["valid_metric"] = []
    best_state, best_value, best_epoch = None, -math.inf, epochs - 1

    probe.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total_loss = 0.0
        seen_logits = torch.empty(n, probe.num_classes)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            inputs = [p[idx].to(device) for p in train]
            with autocast(bf16, device):
                logits = probe.forward_prepared(*inputs)
            loss = loss_fn(logits.float(), ytr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * idx.numel()
            seen_logits[idx] = logits.detach().float().cpu()
        history["train_loss"].append(total_loss / n)
        history["lr"].append(opt.param_groups[0]["lr"])
        history["train_metric"].append(_score(seen_logits, ytr, multilabel))
        if valid is not None:
            with autocast(bf16, device):
                value = _score(_predict_packed(probe, valid, 1024, prepared=True), yva, multilabel)
            history["valid_metric"].append(value)
            if value > best_value:
                best_value, best_epoch = value, epoch
                best_state = copy.deepcopy(probe.state_dict())
    if best_state is not None:
        probe.load_state_dict(best_state)
    history["best_epoch"] = best_epoch
    history["best_valid"] = None if valid is None else best_value
    probe.eval()
    return history


def predict(probe: _Probe, x: Any, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits ``[N, C]`` (CPU float tensor) of a fitted probe. Softmax / sigmoid is left to the caller."""
    return _predict_packed(probe, probe.pack(x), batch_size)


def evaluate_probe(probe: _Probe, x: Any, y: Any, *, multilabel: bool = False) -> dict:
    """Metrics of a fitted probe: ``{"accuracy"}`` (single-label) or :func:`eval.metrics.multilabel_summary`."""
    logits = predict(probe, x)
    yt = _pack_targets(y, logits.shape[0], probe.num_classes, multilabel, "y")
    if multilabel:
        return metrics.multilabel_summary(yt.numpy() > 0.5, logits.numpy())
    return {"accuracy": metrics.accuracy(yt.numpy(), logits.argmax(dim=1).numpy())}


LOGREG_CS = (0.01, 0.1, 1.0, 10.0)


class LogRegReadout:
    """A fitted fair linear read-out: ``StandardScaler`` + ``LogisticRegression`` (one-vs-rest when multi-label),
    with the ``C`` chosen on valid (``C``) and every candidate's valid metric (``valid_metric``)."""

    def __init__(self, model, C: float, valid_metric: dict[float, float], multilabel: bool) -> None:
        self.model, self.C, self.valid_metric, self.multilabel = model, C, valid_metric, multilabel

    def scores(self, x: Any) -> np.ndarray:
        """Class probabilities ``[N, C]``."""
        return self.model.predict_proba(_as_numpy(x))

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class labels ``[N]`` (single-label; the labels seen in training, not column indices)."""
        return self.model.predict(_as_numpy(x))

    def evaluate(self, x: Any, y: Any) -> dict:
        """``{"accuracy"}`` (single-label) or :func:`eval.metrics.multilabel_summary` (multi-label)."""
        y = np.asarray(y)
        if self.multilabel:
            return metrics.multilabel_summary(y > 0.5, self.scores(x))
        return {"accuracy": metrics.accuracy(y, self.predict(x))}


def _as_numpy(x: Any) -> np.ndarray:
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"fit_logreg: expected [N, D] features, got shape {x.shape}")
    return x


def fit_logreg(train_x: Any, train_y: Any, valid_x: Any = None, valid_y: Any = None, *,
               Cs: tuple[float, ...] = LOGREG_CS, seed: int = 0, max_iter: int = 1000,
               multilabel: bool = False) -> LogRegReadout:
    """The fair linear read-out: standardise (fitted on train), multinomial logistic regression to convergence,
    ``C`` chosen on valid (the largest-metric candidate; ties: the smaller C). Without valid, ``Cs[len // 2]``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = _as_numpy(train_x), np.asarray(train_y)
    if len(xtr) != len(ytr) or len(xtr) == 0:
        raise ValueError(f"fit_logreg: {len(xtr)} training examples and {len(ytr)} targets")
    if (valid_x is None) != (valid_y is None):
        raise ValueError("fit_logreg: give both valid_x and valid_y, or neither")
    candidates = tuple(Cs) if valid_x is not None else (Cs[len(Cs) // 2],)
    best, by_c = None, {}
    for c in candidates:
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(clf) if multilabel else clf)
        with warnings.catch_warnings():  # at max_iter the fit is as converged as a probe needs
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(xtr, ytr.astype(int) if multilabel else ytr)
        readout = LogRegReadout(model, c, by_c, multilabel)
        if valid_x is None:
            return readout
        by_c[c] = readout.evaluate(valid_x, valid_y)["mAP" if multilabel else "accuracy"]
        if best is None or by_c[c] > by_c[best.C]:
            best = readout
    return best


def linear_probe_by_layer(
    train_x: torch.Tensor,
    train_y: Any,
    test_x: torch.Tensor,
    test_y: Any,
    *,
    valid_x: torch.Tensor | None = None,
    valid_y: Any = None,
    multilabel: bool = False,
    seed: int = 0,
) -> list[float]:
    """Fit the fair linear read-out (:func:`fit_logreg`, C chosen on valid when given) on every layer of
    ``[N, L, D]`` features; return the test metric of each layer (accuracy, or mAP if multilabel), in layer order."""
    if train_x.ndim != 3 or test_x.ndim != 3 or (valid_x is not None and valid_x.ndim != 3):
        raise ValueError("linear_probe_by_layer: features must be [N, L, D]")
    key = "mAP" if multilabel else "accuracy"
    scores = []
    for layer in range(train_x.shape[1]):
        readout = fit_logreg(train_x[:, layer], train_y, None if valid_x is None else valid_x[:, layer], valid_y,
                             multilabel=multilabel, seed=seed)
        scores.append(readout.evaluate(test_x[:, layer], test_y)[key])
    return scores
