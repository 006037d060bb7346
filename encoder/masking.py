"""Structured time-frequency masking on the patch grid.

Token order is time-major everywhere: the patch at (time column ``t``, frequency row ``f``) of a
``(n_time, n_freq)`` grid has index ``t * n_freq + f`` (what ``Conv2d`` + ``flatten(2)`` on a [B, 1, T, F]
spectrogram yields). A mask ratio is the fraction DROPPED; the kept count is ``floor(n * (1 - ratio))``, at least 1.

* time view: keep a random subset of time columns, every frequency row of each kept column;
* frequency view: keep a random subset of frequency rows, every time column of each kept row.
"""
from __future__ import annotations

import math

import torch


def kept_count(n: int, mask_ratio: float) -> int:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    return max(1, int(math.floor(n * (1.0 - mask_ratio) + 1e-9)))


def _random_subsets(batch: int, n: int, k: int, generator: torch.Generator | None, device) -> torch.Tensor:
    scores = torch.rand(batch, n, generator=generator, device="cpu" if generator is not None else device)
    return scores.argsort(dim=1)[:, :k].sort(dim=1).values.to(device)


def time_view_indices(batch: int, n_time: int, n_freq: int, mask_ratio: float,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Indices [B, k_t * n_freq] (sorted, time-major) of the patches the time view keeps."""
    cols = _random_subsets(batch, n_time, kept_count(n_time, mask_ratio), generator, device)  # [B, k_t]
    f = torch.arange(n_freq, device=cols.device)
    return (cols.unsqueeze(-1) * n_freq + f).reshape(batch, -1)


def freq_view_indices(batch: int, n_time: int, n_freq: int, mask_ratio: float,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Indices [B, n_time * k_f] (sorted, time-major) of the patches the frequency view keeps."""
    rows = _random_subsets(batch, n_freq, kept_count(n_freq, mask_ratio), generator, device)  # [B, k_f]
    t = torch.arange(n_time, device=rows.device)
    return (t.view(1, -1, 1) * n_freq + rows.unsqueeze(1)).reshape(batch, -1)


def random_view_indices(batch: int, n_time: int, n_freq: int, mask_ratio: float,
                        generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Unstructured baseline: a random subset of individual patches (sorted)."""
    return _random_subsets(batch, n_time * n_freq, kept_count(n_time * n_freq, mask_ratio), generator, device)


def indices_to_grid(indices: torch.Tensor, n_time: int, n_freq: int) -> torch.Tensor:
    """Boolean [B, n_time, n_freq] map of kept patches (for tests and plots)."""
    grid = torch.zeros(indices.shape[0], n_time * n_freq, dtype=torch.bool, device=indices.device)
    grid.scatter_(1, indices, True)
    return grid.view(-1, n_time, n_freq)


VIEWS = {"time": time_view_indices, "freq": freq_view_indices, "random": random_view_indices}


def view_indices(kind: str, batch: int, n_time: int, n_freq: int, mask_ratio: float,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor | None:
    """Dispatch by view name; ``kind="none"`` (or ratio 0 on "random") returns None = keep everything."""
    if kind == "none":
        return None
    if kind not in VIEWS:
        raise ValueError(f"unknown mask view {kind!r}; choose from {sorted(VIEWS) + ['none']}")
    return VIEWS[kind](batch, n_time, n_freq, mask_ratio, generator, device)
