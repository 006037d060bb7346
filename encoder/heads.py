"""Classification heads on the AudioMosaic encoder: the read-outs of the paper's released classifiers and probes.

Each head reads :meth:`encoder.vit.AudioMosaicViT.forward_features` output (with ``hidden_states``) and returns
logits [B, num_labels]:

- ``linear``: ``Linear(pooled)``; the encoder's pooling and ``fc_norm`` make the pooled feature (the released
  fine-tuned classifiers and the AS-20K linear probe: mean over CLS + patch tokens of the last block, no final norm,
  ``fc_norm``, ``head``).
- ``layer``: one block's output, pooled, its own LayerNorm, Linear (the reference's layer-wise probe).
- ``weighted_sum``: a softmax-weighted sum over the block outputs plus the final sequence, pooled, LayerNorm, Linear
  (SUPERB-style).
- ``attentive``: every block output plus the final sequence, each through its own LayerNorm and pooled, then one
  learned query attends over these ``depth + 1`` layer vectors (``attn_heads`` heads, bias-free key and value
  projections), LayerNorm, Linear (the released AS-20K attentive probe).

The pooling is the encoder's (``EncoderConfig.pooling``: ``all`` averages the CLS token with the patch tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("linear", "layer", "weighted_sum", "attentive")


@dataclass
class HeadConfig:
    kind: Literal["linear", "layer", "weighted_sum", "attentive"] = "linear"
    num_labels: int = 2
    layer: int = -1  # layer: the block whose output is read (0-based; -1 = last)
    attn_heads: int = 1  # attentive: heads of the query over layers
    multi_label: bool = False  # scores: sigmoid per label (AudioSet) instead of a softmax over labels

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; choose from {', '.join(HEAD_KINDS)}")
        if self.num_labels < 1:
            raise ValueError(f"a head needs at least one label, got num_labels={self.num_labels}")


class ClassificationHead(nn.Module):
    def __init__(self, cfg: HeadConfig, embed_dim: int, depth: int):
        super().__init__()
        self.cfg, self.depth = cfg, depth
        if cfg.kind == "layer" and not -depth <= cfg.layer < depth:
            raise ValueError(f"head layer {cfg.layer} out of range for {depth} blocks")
        if cfg.kind == "attentive" and embed_dim % cfg.attn_heads:
            raise ValueError(f"head attn_heads {cfg.attn_heads} does not divide embed_dim {embed_dim}")
        if cfg.kind != "linear":
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if cfg.kind == "weighted_sum":
            self.layer_weights = nn.Parameter(torch.zeros(depth + 1))
        if cfg.kind == "attentive":
            h = cfg.attn_heads
            self.attn_query = nn.Parameter(torch.randn(1, h, 1, embed_dim // h) * 0.02)
            self.attn_key = nn.Linear(embed_dim, embed_dim, bias=False)
            self.attn_value = nn.Linear(embed_dim, embed_dim, bias=False)
            self.layer_norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(depth + 1))
        self.linear = nn.Linear(embed_dim, cfg.num_labels)
        nn.init.normal_(self.linear.weight, std=2.5e-5)
        nn.init.zeros_(self.linear.bias)

    def forward(self, out: dict, pool) -> torch.Tensor:
        """``out``: the encoder's ``forward_features`` (with ``hidden_states`` unless kind is linear); ``pool``:
        the encoder's pooling of a [B, 1 + K, D] sequence."""
        kind = self.cfg.kind
        if kind == "linear":
            return self.linear(out["pooled"])
        blocks = list(out["hidden_states"][1:])  # block outputs (index 0 is the embedding)
        if kind == "layer":
            return self.linear(self.norm(pool(blocks[self.cfg.layer])))
        layers = blocks + [torch.cat([out["cls"].unsqueeze(1), out["tokens"]], dim=1)]  # + the final sequence
        if kind == "weighted_sum":
            w = F.softmax(self.layer_weights, dim=0)
            return self.linear(self.norm(pool(sum(w[i] * x for i, x in enumerate(layers)))))
        stacked = torch.stack([pool(ln(x)) for ln, x in zip(self.layer_norms, layers)], dim=1)  # [B, L, D]
        b, n, d = stacked.shape
        h = self.cfg.attn_heads
        k = self.attn_key(stacked).view(b, n, h, d // h).transpose(1, 2)
        v = self.attn_value(stacked).view(b, n, h, d // h).transpose(1, 2)
        attn = F.softmax((self.attn_query.expand(b, -1, -1, -1) @ k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        return self.linear(self.norm((attn @ v).squeeze(2).reshape(b, d)))


def scores(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Label scores: sigmoid per label (multi-label heads) or a softmax over labels."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


__all__ = ["HeadConfig", "ClassificationHead", "HEAD_KINDS", "scores"]
