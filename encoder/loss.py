"""NT-Xent (SimCLR) with negatives gathered across ranks.

Each rank scores its LOCAL anchors (both views) against the GLOBAL candidate set (both views of every rank's
clips). Features are gathered with ``torch.distributed.nn.functional.all_gather`` so gradients flow back to the
rank that produced them; with gradients averaged across ranks (DDP / DeepSpeed), the update equals the
single-process update on the concatenated batch. A single process never calls a collective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mosaic_core.runtime import rank_world


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; identity on one process."""
    rank, world = rank_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> dict:
    """Loss over the 2B local anchors of views ``z1``, ``z2`` [B, d] (row i of each is the same clip).

    Candidates for each anchor: every other embedding of both views across all ranks; the positive is the same
    clip's other view. Returns ``loss`` (mean over local anchors) and ``accuracy`` (share of anchors whose most
    similar candidate is the positive).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"views must both be [B, d], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    rank, world = rank_world() if gather else (0, 1)
    a1, a2 = (gather_with_grad(z1), gather_with_grad(z2)) if world > 1 else (z1, z2)
    n = a1.shape[0]  # global clip count
    candidates = torch.cat([a1, a2], dim=0)  # [2N, d]: view 1 of all clips, then view 2
    anchors = torch.cat([z1, z2], dim=0)  # [2B, d]
    logits = anchors @ candidates.T / temperature
    local = torch.arange(b, device=z1.device) + rank * b  # global clip index of each local clip
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * n).bool(), float("-inf"))
    loss = F.cross_entropy(logits, pos_idx)
    with torch.no_grad():
        acc = (logits.argmax(dim=1) == pos_idx).float().mean()
    return {"loss": loss, "accuracy": acc, "logits": logits}
