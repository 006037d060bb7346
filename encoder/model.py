"""AudioMosaic ViT: 16x16 patches of a [T, 128] log-mel spectrogram on a (T/16 time) x (8 frequency) grid.

Token order is time-major (patch index = t * n_freq + f). The 2-D sin-cos position embedding is computed for the
actual (time, frequency) grid: the first half of the channels encodes the time index, the second half the
frequency index. Blocks are pre-norm and use ``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mosaic_core.config import PositiveFloat, PositiveInt, Probability, Ratio

from .features import AUDIOSET_MEAN, AUDIOSET_STD

PRESETS = {
    "tiny": dict(embed_dim=192, depth=6, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


@dataclass
class EncoderConfig:
    """Architecture and preprocessing constants; stored in every checkpoint."""

    size: str = "base"  # a preset name; embed_dim/depth/num_heads of 0 take the preset's value
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    mlp_ratio: PositiveFloat = 4.0
    patch_size: PositiveInt = 16
    num_mel_bins: PositiveInt = 128
    target_frames: PositiveInt = 1024
    qkv_bias: bool = True
    drop_path: Ratio = 0.0
    checkpoint_fraction: Probability = 0.0  # share of blocks (from the bottom) run with activation checkpointing
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD
    sample_rate: int = 16000

    def __post_init__(self):
        if self.size not in PRESETS:
            raise ValueError(f"unknown encoder size {self.size!r}; choose from {sorted(PRESETS)}")
        for k, v in PRESETS[self.size].items():
            if not getattr(self, k):
                setattr(self, k, v)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by 4 for 2-D sin-cos positions")
        if self.num_mel_bins % self.patch_size or self.target_frames % self.patch_size:
            raise ValueError(f"num_mel_bins ({self.num_mel_bins}) and target_frames ({self.target_frames}) must be "
                             f"multiples of patch_size ({self.patch_size})")
        if not 0.0 <= self.checkpoint_fraction <= 1.0:
            raise ValueError(f"checkpoint_fraction must be in [0, 1], got {self.checkpoint_fraction}")

    @property
    def n_freq(self) -> int:
        return self.num_mel_bins // self.patch_size

    def grid(self, frames: int | None = None) -> tuple[int, int]:
        """(n_time, n_freq) patch grid for an input of ``frames`` frames (default target_frames)."""
        return (frames or self.target_frames) // self.patch_size, self.n_freq


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, n_time: int, n_freq: int) -> torch.Tensor:
    """[n_time * n_freq, dim] time-major; channels [:dim/2] encode time, [dim/2:] encode frequency."""
    t = torch.arange(n_time).repeat_interleave(n_freq)  # t index of patch t * n_freq + f
    f = torch.arange(n_freq).repeat(n_time)
    return torch.cat([sincos_1d(dim // 2, t), sincos_1d(dim // 2, f)], dim=1).float()


def init_transformer_weights(modules) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorms (the MAE/ViT initialisation)."""
    for m in modules:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AudioMosaicViT(nn.Module):
    """The encoder. Inputs are normalised spectrograms [B, T, F] or [B, 1, T, F] with T a multiple of 16."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = nn.Conv2d(1, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(d, eps=1e-6)  # token outputs
        self.fc_norm = nn.LayerNorm(d, eps=1e-6)  # pooled (clip) output
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self):
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks.modules())

    def pos_embed(self, n_time: int, n_freq: int, device, dtype) -> torch.Tensor:
        key = (n_time, n_freq)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(self.cfg.embed_dim, n_time, n_freq)
        return self._pos_cache[key].to(device=device, dtype=dtype)

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, T, F] -> patch embeddings with positions [B, n_time * n_freq, D] (time-major) and the grid."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a spectrogram [B, T, F] or [B, 1, T, F], got {tuple(x.shape)}")
        p = self.cfg.patch_size
        if x.shape[-1] != self.cfg.num_mel_bins or x.shape[-2] % p:
            raise ValueError(f"spectrogram [.., T={x.shape[-2]}, F={x.shape[-1]}] needs F={self.cfg.num_mel_bins} "
                             f"and T a multiple of {p}")
        x = self.patch_embed(x)  # [B, D, n_time, n_freq]
        n_time, n_freq = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # index t * n_freq + f
        return x + self.pos_embed(n_time, n_freq, x.device, x.dtype), (n_time, n_freq)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None,
                         output_hidden_states: bool = False) -> dict:
        """Run the encoder.

        ``keep`` [B, K] holds indices (time-major) of the patches to keep (structured masking); None keeps all.
        Returns ``tokens`` [B, K, D] (final-normed patch tokens, time-major, no CLS), ``cls`` [B, D], ``pooled``
        [B, D] (fc_norm of the mean over patch tokens, CLS excluded), ``grid`` and, if asked, ``hidden_states``:
        the list of per-layer outputs [B, 1 + K, D] (index 0 = embeddings, CLS first).
        """
        tokens, grid = self.patchify(x)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        h = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        hidden = [h] if output_hidden_states else None
        n_ckpt = int(round(self.cfg.checkpoint_fraction * len(self.blocks)))
        for i, blk in enumerate(self.blocks):
            if i < n_ckpt and self.training and torch.is_grad_enabled():
                h = checkpoint(blk, h, use_reentrant=False)
            else:
                h = blk(h)
            if hidden is not None:
                hidden.append(h)
        out = {"tokens": self.norm(h[:, 1:]), "cls": self.norm(h[:, 0]),
               "pooled": self.fc_norm(h[:, 1:].mean(dim=1)), "grid": grid}
        if hidden is not None:
            out["hidden_states"] = hidden
        return out

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled clip embedding [B, D]."""
        return self.forward_features(x, keep)["pooled"]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose training statistics cover the whole global batch.

    Moments are all-reduced across ranks with ``torch.distributed.nn.functional.all_reduce`` (differentiable), so
    on one process it is plain BatchNorm over what it is given; in the projector it is given both views at once.
    ``torch.nn.SyncBatchNorm`` would do the same but refuses CPU tensors.
    """

    def forward(self, x):
        import torch.distributed as dist

        if not self.training or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n = torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum(0), (x * x).sum(0), n]))
        d = x.shape[1]
        total = stats[-1]
        mean = stats[:d] / total
        var = (stats[d:2 * d] / total - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * total / max(total.item() - 1, 1.0))
            self.num_batches_tracked += 1
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


class Projector(nn.Module):
    """Paper recipe head: Linear(D, 512) -> BN -> ReLU -> Linear(512, 128) -> BN (no affine).

    BatchNorm statistics are global: the trainer feeds both views in ONE call (and the BN all-reduces across
    ranks), so positives cannot find each other through per-view or per-rank statistics.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, batch_norm: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=not batch_norm)
        self.bn1 = GlobalBatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=not batch_norm)
        self.bn2 = GlobalBatchNorm1d(out_dim, affine=False) if batch_norm else nn.Identity()

    def forward(self, x):
        return self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x)))))


@dataclass
class PretrainProjectorConfig:
    hidden_dim: PositiveInt = 512
    out_dim: PositiveInt = 128
    batch_norm: bool = True


class AudioMosaicPretrainModel(nn.Module):
    """Encoder + projector used for contrastive pretraining (the projector is dropped afterwards)."""

    def __init__(self, enc: EncoderConfig, proj: PretrainProjectorConfig | None = None):
        super().__init__()
        proj = proj or PretrainProjectorConfig()
        self.encoder = AudioMosaicViT(enc)
        self.projector = Projector(enc.embed_dim, proj.hidden_dim, proj.out_dim, proj.batch_norm)

    def forward(self, x1, keep1, x2, keep2):
        """Both views through the encoder, pooled, then the projector on the concatenation (global BN stats)."""
        p1 = self.encoder(x1, keep1)
        p2 = self.encoder(x2, keep2)
        z = self.projector(torch.cat([p1, p2], dim=0))
        return z[: p1.shape[0]], z[p1.shape[0]:]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["EncoderConfig", "PretrainProjectorConfig", "AudioMosaicViT", "AudioMosaicPretrainModel", "Projector",
           "GlobalBatchNorm1d", "sincos_2d", "PRESETS", "count_parameters"]
