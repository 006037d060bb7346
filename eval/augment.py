"""Fine-tuning augmentations and optimiser helpers.

Spectrogram batches are ``[B, T, F]``: time is axis 1, frequency axis 2 (the repository's ``[T, 128]`` fbank,
batched). All random functions take an optional ``torch.Generator`` so a run's seed fixes every draw, and none
modifies its input in place.

* :func:`mixup`: convex combination of the batch with a permutation of itself; soft targets.
* :func:`spec_augment`: SpecAugment time and frequency masking (zero or mean fill).
* :func:`roll_and_magnitude`: circular shift along time plus a random gain (dB) on the log spectrum.
* :func:`class_balanced_weights`: per-clip sampling weights for ``torch.utils.data.WeightedRandomSampler``.
* :func:`layerwise_lr_groups`: AdamW parameter groups with layer-wise learning-rate decay.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["mixup", "spec_augment", "roll_and_magnitude", "class_balanced_weights", "layerwise_lr_groups"]


def _check_batch(x: torch.Tensor, fn: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{fn}: expected a [B, T, F] spectrogram batch, got {getattr(x, 'shape', type(x))}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


# --------------------------------------------------------------------------------------------------------------
# mixup
# --------------------------------------------------------------------------------------------------------------
def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    *,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., 2018) of a batch with a random permutation of itself.

    ``lam ~ Beta(alpha, alpha)`` once per batch; ``x' = lam x + (1 - lam) x[perm]``, ``y' = lam y + (1 - lam)
    y[perm]``. ``y`` is either class indices ``[B]`` (then ``num_classes`` is required and targets are one-hot
    first) or a ``[B, C]`` target matrix (multi-label or already soft). ``alpha <= 0`` disables mixing (``lam = 1``).

    Returns ``(mixed_x, soft_targets [B, C] float)``.
    """
    if x.ndim < 2:
        raise ValueError(f"mixup: x must be batched, got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"mixup: {y.shape[0]} targets for a batch of {x.shape[0]}")
    if y.ndim == 1:
        if num_classes is None:
            raise ValueError("mixup: class-index targets need num_classes")
        y = torch.nn.functional.one_hot(y.long(), num_classes)
    elif y.ndim != 2:
        raise ValueError(f"mixup: targets must be [B] or [B, C], got {tuple(y.shape)}")
    y = y.float()
    if alpha <= 0:
        return x.clone(), y
    from scipy.stats import beta

    lam = float(beta.ppf(float(torch.rand((), generator=generator)), alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    mixed_x = lam * x + (1.0 - lam) * x[perm]
    mixed_y = lam * y + (1.0 - lam) * y[perm.to(y.device)]
    return mixed_x, mixed_y


# --------------------------------------------------------------------------------------------------------------
# SpecAugment
# --------------------------------------------------------------------------------------------------------------
def _band_mask(batch: int, length: int, max_width: int, n_masks: int, generator, device) -> torch.Tensor:
    """``[B, length]`` bool, True inside any of ``n_masks`` bands of width ``U{0..max_width}`` per example."""
    max_width = min(max_width, length)
    widths = (_uniform((batch, n_masks), generator, device) * (max_width + 1)).floor().long()
    starts = (_uniform((batch, n_masks), generator, device) * (length - widths + 1)).floor().long()
    pos = torch.arange(length, device=device)[None, None, :]
    inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
    return inside.any(dim=1)


def spec_augment(
    x: torch.Tensor,
    time_mask: int,
    freq_mask: int,
    n_masks: int = 1,
    *,
    fill: str = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment masking (Park et al., 2019) on ``[B, T, F]``.

    Each example independently gets ``n_masks`` time bands (axis 1) of width uniform in ``0..time_mask`` and
    ``n_masks`` frequency bands (axis 2) of width uniform in ``0..freq_mask``, at uniform positions. Masked cells are
    set to 0 (``fill="zero"``, right for mean-normalised inputs) or to the example's mean (``fill="mean"``).
    """
    _check_batch(x, "spec_augment")
    if time_mask < 0 or freq_mask < 0 or n_masks < 0:
        raise ValueError("spec_augment: time_mask, freq_mask and n_masks must be >= 0")
    if fill not in ("zero", "mean"):
        raise ValueError(f"spec_augment: fill must be 'zero' or 'mean', got {fill!r}")
    b, t, f = x.shape
    tmask = _band_mask(b, t, time_mask, n_masks, generator, x.device)  # [B, T]
    fmask = _band_mask(b, f, freq_mask, n_masks, generator, x.device)  # [B, F]
    mask = tmask[:, :, None] | fmask[:, None, :]
    value = torch.zeros((), dtype=x.dtype, device=x.device) if fill == "zero" else x.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask, value, x)


# --------------------------------------------------------------------------------------------------------------
# roll and magnitude
# --------------------------------------------------------------------------------------------------------------
def roll_and_magnitude(
    x: torch.Tensor,
    *,
    max_shift: int | None = None,
    gain_db: tuple[float, float] = (-6.0, 6.0),
    log_units_per_db: float = math.log(10.0) / 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random circular shift along time and random gain on a log spectrogram ``[B, T, F]``.

    Per example: shift ``s ~ U{-max_shift..max_shift}`` frames (default: the whole length ``T``) with
    ``torch.roll`` along axis 1, then add ``g * log_units_per_db`` with ``g ~ U[gain_db]`` dB. The default
    ``log_units_per_db = ln(10) / 10`` is right for natural-log power (Kaldi fbank); for a spectrogram normalised as
    ``(x - mean) / (2 std)`` pass ``ln(10) / 10 / (2 std)``.
    """
    _check_batch(x, "roll_and_magnitude")
    lo, hi = gain_db
    if lo > hi:
        raise ValueError(f"roll_and_magnitude: gain_db must be (low, high), got {gain_db}")
    b, t, _ = x.shape
    max_shift = t if max_shift is None else int(max_shift)
    if max_shift < 0:
        raise ValueError("roll_and_magnitude: max_shift must be >= 0")
    shifts = (_uniform((b,), generator, torch.device("cpu")) * (2 * max_shift + 1)).floor().long() - max_shift
    gains = lo + (hi - lo) * _uniform((b,), generator, torch.device("cpu"))
    # gather with per-example shift: out[b, i] = x[b, (i - s_b) mod T]   (same as torch.roll(x[b], s_b, 0))
    idx = (torch.arange(t)[None, :] - shifts[:, None]) % t
    rolled = torch.gather(x, 1, idx.to(x.device)[:, :, None].expand(-1, -1, x.shape[2]))
    return rolled + (gains * log_units_per_db).to(x.device, x.dtype)[:, None, None]


# --------------------------------------------------------------------------------------------------------------
# class-balanced sampling
# --------------------------------------------------------------------------------------------------------------
def class_balanced_weights(label_matrix: Any) -> torch.Tensor:
    """Sampling weight per clip for ``WeightedRandomSampler`` (AudioSet-2M balanced sampling).

    ``label_matrix``: binary ``[N, C]``. ``w_i = sum_c y_ic / n_c`` with ``n_c`` the number of clips labelled
    ``c``; rare classes thus get sampled about as often as common ones. Returns float64 ``[N]``. A clip without
    any label gets weight 0 (never drawn); classes that never occur contribute nothing.
    """
    y = label_matrix.detach().cpu().numpy() if isinstance(label_matrix, torch.Tensor) else np.asarray(label_matrix)
    if y.ndim != 2:
        raise ValueError(f"class_balanced_weights: expected a [N, C] label matrix, got shape {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("class_balanced_weights: label_matrix must be binary")
    counts = y.sum(axis=0)
    inv = np.divide(1.0, counts, out=np.zeros(counts.shape, dtype=np.float64), where=counts > 0)
    w = y.astype(np.float64) @ inv
    if not np.any(w > 0):
        raise ValueError("class_balanced_weights: no clip has a label")
    return torch.from_numpy(w)


# --------------------------------------------------------------------------------------------------------------
# layer-wise learning-rate decay
# --------------------------------------------------------------------------------------------------------------
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(patch_embed|patch_norm|norm_pre|cls_token|pos_embed|pos_table)(?:\.|$)")
_NO_DECAY_NAMES = re.compile(r"(?:^|\.)(cls_token|pos_embed|pos_table|mask_token|dist_token|query)$|(?:^|\.)bias$")


def _layer_id(name: str, num_layers: int) -> int:
    m = _BLOCK.search(name)
    if m:
        i = int(m.group(1))
        if i >= num_layers:
            raise ValueError(f"layerwise_lr_groups: parameter {name!r} is in block {i} but num_layers={num_layers}")
        return i + 1
    if _EMBED.search(name):
        return 0
    return num_layers + 1


def layerwise_lr_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    num_layers: int,
    base_lr: float,
    decay: float,
    weight_decay: float,
) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay (BEiT / MAE fine-tuning recipe).

    Layer ids: ``patch_embed*`` / ``patch_norm`` / ``norm_pre`` / ``cls_token`` / ``pos_embed`` / ``pos_table``
    -> 0; ``blocks.{i}.*`` -> ``i + 1``; anything else (final norm, head, ...) -> ``num_layers + 1``. A prefix such
    as ``encoder.`` is allowed. The learning rate of layer ``k`` is ``base_lr * decay ** (num_layers + 1 - k)`` (the
    head trains at ``base_lr``).

    No weight decay on 1-D parameters (biases, norm scales), on ``*.bias`` and on tokens / position embeddings.
    Parameters with ``requires_grad=False`` are left out.

    Returns a list of dicts usable by ``torch.optim.AdamW``: ``params``, ``lr``, ``weight_decay`` plus
    ``lr_scale`` (for schedulers that rescale a global LR), ``layer_id`` and ``group_name``.
    """
    if num_layers < 1:
        raise ValueError(f"layerwise_lr_groups: num_layers must be >= 1, got {num_layers}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layerwise_lr_groups: decay must be in (0, 1], got {decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        layer = _layer_id(name, num_layers)
        no_decay = p.ndim <= 1 or bool(_NO_DECAY_NAMES.search(name))
        key = (layer, no_decay)
        if key not in groups:
            scale = decay ** (num_layers + 1 - layer)
            groups[key] = {
                "params": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "layer_id": layer,
                "group_name": f"layer_{layer}_{'no_decay' if no_decay else 'decay'}",
            }
        groups[key]["params"].append(p)
    if not groups:
        raise ValueError("layerwise_lr_groups: no trainable parameters")
    return [groups[k] for k in sorted(groups)]
