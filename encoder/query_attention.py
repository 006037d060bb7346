"""Cross-attention of a few learned queries over many tokens, computed from the query side.

The attentive pooler of :class:`eval.probes.AttentiveProbe` (one query) and of the ALM's attentive projector
(:class:`mosaic_alm.projector.AudioProjector`, one query per audio slot) is ``nn.MultiheadAttention(q, kv, kv)``
with ``kv = LayerNorm(tokens)``. Written as such it projects every token to keys and values: O(T * D^2) per example,
and on CPU the fused attention kernel's backward for this shape (a handful of queries, a hundred keys) costs more
than the projections. With queries that are the same for every example the projections fold into the queries:
head h's score of token t is ``q_h . (W_k,h (g * xn_t + b) + c_h)`` = ``u_h . xn_t`` plus a constant that the
softmax removes (``u_h = g * W_k,h^T q_h / sqrt(d_h)``, ``xn`` the token normalised without the LayerNorm's affine
``g``, ``b``), and its output is ``W_v,h (g * sum_t a_ht xn_t + b) + c_v,h`` because the weights sum to one:
O(T * D * queries * heads) per example. The same function and gradients (to rounding) as the module, with its
parameters (state dicts are unchanged).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalise_tokens(tokens: torch.Tensor, norm_kv: nn.LayerNorm) -> torch.Tensor:
    """``norm_kv``'s normalisation without its affine (which :func:`query_attention` applies on the query side)."""
    return F.layer_norm(tokens, norm_kv.normalized_shape, eps=norm_kv.eps)


def query_attention(attn: nn.MultiheadAttention, norm_kv: nn.LayerNorm, queries: torch.Tensor, xn: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn(queries, norm_kv(x), norm_kv(x))[0]`` for queries shared by every example.

    ``queries``: ``[Q, D]`` (already through their own norm); ``xn``: ``[N, T, D]`` = :func:`normalise_tokens` of
    the tokens; ``mask``: ``[N, T]``, True where a token is valid (None: all). Returns ``[N, Q, D]``. The module's
    dropout is not applied (the poolers here use none)."""
    if attn.dropout:
        raise ValueError("query_attention computes attention without dropout; the module has dropout "
                         f"{attn.dropout}")
    d, heads = attn.embed_dim, attn.num_heads
    hd = d // heads
    n, t, _ = xn.shape
    w_q, w_k, w_v = attn.in_proj_weight.split(d)
    b_q, _, b_v = attn.in_proj_bias.split(d)  # the key bias adds a per-head constant: softmax drops it
    qh = F.linear(queries, w_q, b_q).view(-1, heads, hd)  # [Q, H, hd]
    nq = qh.shape[0]
    u = torch.einsum("qhc,hcd->qhd", qh, w_k.view(heads, hd, d)) * (norm_kv.weight / math.sqrt(hd))  # [Q, H, D]
    scores = (xn @ u.reshape(nq * heads, d).T.to(xn.dtype)).transpose(1, 2)  # [N, Q*H, T]
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(xn.dtype)
    pooled = (weights @ xn).view(n, nq, heads, d) * norm_kv.weight + norm_kv.bias  # [N, Q, H, D]
    values = torch.einsum("nqhd,hcd->nqhc", pooled, w_v.view(heads, hd, d)) + b_v.view(heads, hd)
    return attn.out_proj(values.reshape(n, nq, d))


__all__ = ["normalise_tokens", "query_attention"]
