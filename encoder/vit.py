"""AudioMosaic ViT: 16x16 patches of a [T, 128] log-mel spectrogram on a (T/16 time) x (8 frequency) grid.

Token order is time-major (patch index = t * n_freq + f). The 2-D sin-cos position embedding is computed for the
actual (time, frequency) grid: the first half of the channels encodes the time index, the second half the
frequency index. Blocks are pre-norm and use ``torch.nn.functional.scaled_dot_product_attention``.

The same module is also the paper's released architecture (``EncoderConfig`` fields, all off by default):
``patch_norm`` (LayerNorm after the patch projection), ``pre_norm`` (LayerNorm on [CLS; patches] before the first
block), ``positions="learned"`` (a trained table [1, 1 + N, D] with a CLS slot, initialised from sin-cos), and the
output semantics of each released class: ``pooling`` ("all" averages the CLS token together with the patch tokens,
as the reference's ``avg``), ``token_norm`` (the pretrain model with ``use_fc_norm`` and the classifier leave the
output tokens un-normalised), ``pool_normed`` (pool before or after that final norm) and ``fc_norm`` (the norm of
the pooled feature). :func:`resize_learned_positions` adapts a learned table to another input length the way the
reference's loaders do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mosaic_core.config import PositiveFloat, PositiveInt, Probability, Ratio
from mosaic_core.runtime import rank_world

from .features import AUDIOSET_MEAN, AUDIOSET_STD

PRESETS = {
    "tiny": dict(embed_dim=192, depth=6, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "custom": {},  # embed_dim, depth and num_heads given explicitly (imported checkpoints of other sizes)
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
    # architecture variants; the defaults are the kit's own ViT, the released AudioMosaic models set them on import
    patch_norm: bool = False  # LayerNorm after the patch projection
    pre_norm: bool = False  # LayerNorm on [CLS; patches] before the first block
    positions: Literal["sincos", "learned"] = "sincos"  # learned: a table [1, 1 + N, D] with a CLS slot
    proj_bias: bool = True  # biases of the attention output projection and the MLP layers
    pooling: Literal["patches", "all", "cls"] = "patches"  # patches: mean without CLS; all: mean with CLS
    pool_normed: bool = False  # pool the final-normed sequence instead of the last block's output
    token_norm: bool = True  # final LayerNorm on the output sequence (tokens, CLS)
    fc_norm: bool = True  # LayerNorm on the pooled feature

    def __post_init__(self):
        if self.size not in PRESETS:
            raise ValueError(f"unknown encoder size {self.size!r}; choose from {sorted(PRESETS)}")
        for k, v in PRESETS[self.size].items():
            if not getattr(self, k):
                setattr(self, k, v)
        if not (self.embed_dim and self.depth and self.num_heads):
            raise ValueError(f"encoder size {self.size!r} needs embed_dim, depth and num_heads")
        if self.positions not in ("sincos", "learned"):
            raise ValueError(f"positions must be sincos or learned, got {self.positions!r}")
        if self.pooling not in ("patches", "all", "cls"):
            raise ValueError(f"pooling must be patches, all or cls, got {self.pooling!r}")
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


def resize_learned_positions(table: torch.Tensor, n_time: int, n_freq: int) -> torch.Tensor:
    """A learned position table [1, 1 + N_old, D] (CLS slot first, patches time-major) for a (n_time, n_freq) grid.

    Where the reference's loaders can resize (``N_old`` divisible by ``n_time``), this is their rule exactly: their
    patch grid is recorded as (mel bins / 16, frames / 16), so they view the old patch rows as an
    (N_old / n_time) x n_time image, resize it bilinearly (align_corners=False) to n_freq x n_time and flatten it
    back; a checkpoint fine-tuned from a resized table was trained with these values. For AudioSet's 1,024 frames
    to Speech Commands' 128 this is a resize along time of the true (time, frequency) grid; for other lengths it
    mixes neighbouring rows as the reference does. Where their rule cannot apply (they skip the table), the true
    grid is resized along time. The CLS slot is kept."""
    n_old = table.shape[1] - 1
    if n_old == n_time * n_freq:
        return table
    d = table.shape[-1]
    cls, patches = table[:, :1], table[:, 1:]
    if n_old % n_time == 0:
        rows, size = n_old // n_time, (n_freq, n_time)
        grid = patches.reshape(1, rows, n_time, d)
    elif n_old % n_freq == 0:
        rows, size = n_old // n_freq, (n_time, n_freq)
        grid = patches.reshape(1, rows, n_freq, d)
    else:
        raise ValueError(f"a learned position table of {n_old} patches fits no grid with {n_freq} frequency rows")
    grid = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(table.dtype)], dim=1)


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
    def __init__(self, dim: int, heads: int, qkv_bias: bool, proj_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 proj_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, proj_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=proj_bias), nn.GELU(),
                                 nn.Linear(hidden, dim, bias=proj_bias))
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
        if cfg.patch_norm:
            self.patch_norm = nn.LayerNorm(d, eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.positions == "learned":
            n_time, n_freq = cfg.grid()
            self.pos_table = nn.Parameter(torch.zeros(1, 1 + n_time * n_freq, d))
        if cfg.pre_norm:
            self.norm_pre = nn.LayerNorm(d, eps=1e-6)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, r, cfg.proj_bias)
                                    for r in rates)
        self.norm = nn.LayerNorm(d, eps=1e-6) if cfg.token_norm else nn.Identity()  # token outputs
        self.fc_norm = nn.LayerNorm(d, eps=1e-6) if cfg.fc_norm else nn.Identity()  # pooled (clip) output
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self):
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.cfg.positions == "learned":  # trained from sin-cos, CLS slot zero
            with torch.no_grad():
                self.pos_table.zero_()
                self.pos_table[0, 1:] = sincos_2d(self.cfg.embed_dim, *self.cfg.grid())
        init_transformer_weights(self.blocks.modules())

    def pos_embed(self, n_time: int, n_freq: int, device, dtype) -> torch.Tensor:
        """Positions of the patch tokens [N, D] (sin-cos, or the learned table resized to the grid)."""
        return self.positions(n_time, n_freq, device, dtype)[1:]

    def positions(self, n_time: int, n_freq: int, device, dtype) -> torch.Tensor:
        """[1 + N, D]: the CLS slot (zero for sin-cos) and the patch positions of a (n_time, n_freq) grid."""
        if self.cfg.positions == "learned":
            return resize_learned_positions(self.pos_table, n_time, n_freq)[0].to(device=device, dtype=dtype)
        key = (n_time, n_freq)
        if key not in self._pos_cache:
            table = sincos_2d(self.cfg.embed_dim, n_time, n_freq)
            self._pos_cache[key] = torch.cat([table.new_zeros(1, table.shape[1]), table])
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
        if self.cfg.patch_norm:
            x = self.patch_norm(x)
        return x + self.pos_embed(n_time, n_freq, x.device, x.dtype), (n_time, n_freq)

    def pool(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K, D] (CLS first) -> [B, D] by the configured pooling (no norm)."""
        if self.cfg.pooling == "cls":
            return seq[:, 0]
        return seq.mean(dim=1) if self.cfg.pooling == "all" else seq[:, 1:].mean(dim=1)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None,
                         output_hidden_states: bool = False) -> dict:
        """Run the encoder.

        ``keep`` [B, K] holds indices (time-major) of the patches to keep (structured masking); None keeps all.
        Returns ``tokens`` [B, K, D] (patch tokens after the final norm, if the encoder has one; time-major, no
        CLS), ``cls`` [B, D], ``pooled`` [B, D] (by default fc_norm of the mean over patch tokens, CLS excluded;
        see ``EncoderConfig.pooling``), ``grid`` and, if asked, ``hidden_states``: the list of per-layer outputs
        [B, 1 + K, D] (index 0 = embeddings after ``pre_norm``, CLS first).
        """
        tokens, grid = self.patchify(x)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = self.cls_token.to(tokens.dtype)
        if self.cfg.positions == "learned":
            cls = cls + self.pos_table[:, :1].to(tokens.dtype)
        h = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.cfg.pre_norm:
            h = self.norm_pre(h)
        hidden = [h] if output_hidden_states else None
        n_ckpt = int(round(self.cfg.checkpoint_fraction * len(self.blocks)))
        for i, blk in enumerate(self.blocks):
            if i < n_ckpt and self.training and torch.is_grad_enabled():
                h = checkpoint(blk, h, use_reentrant=False)
            else:
                h = blk(h)
            if hidden is not None:
                hidden.append(h)
        seq = self.norm(h)
        out = {"tokens": seq[:, 1:], "cls": seq[:, 0],
               "pooled": self.fc_norm(self.pool(seq if self.cfg.pool_normed else h)), "grid": grid}
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
        if not self.training or rank_world()[1] == 1:
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

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, batch_norm: bool = True,
                 out_affine: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=not batch_norm)
        self.bn1 = GlobalBatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=not batch_norm)
        # out_affine: the released pretrain model's last BatchNorm has a trained scale (and a bias kept at zero)
        self.bn2 = GlobalBatchNorm1d(out_dim, affine=out_affine) if batch_norm else nn.Identity()

    def forward(self, x):
        return self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x)))))


@dataclass
class PretrainProjectorConfig:
    hidden_dim: PositiveInt = 512
    out_dim: PositiveInt = 128
    batch_norm: bool = True
    out_affine: bool = False


class AudioMosaicPretrainModel(nn.Module):
    """Encoder + projector used for contrastive pretraining (the projector is dropped afterwards)."""

    def __init__(self, enc: EncoderConfig, proj: PretrainProjectorConfig | None = None):
        super().__init__()
        proj = proj or PretrainProjectorConfig()
        self.encoder = AudioMosaicViT(enc)
        self.projector = Projector(enc.embed_dim, proj.hidden_dim, proj.out_dim, proj.batch_norm, proj.out_affine)

    def forward(self, x1, keep1, x2, keep2):
        """Both views through the encoder, pooled, then the projector on the concatenation (global BN stats)."""
        p1 = self.encoder(x1, keep1)
        p2 = self.encoder(x2, keep2)
        z = self.projector(torch.cat([p1, p2], dim=0))
        return z[: p1.shape[0]], z[p1.shape[0]:]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["EncoderConfig", "PretrainProjectorConfig", "AudioMosaicViT", "AudioMosaicPretrainModel", "Projector",
           "GlobalBatchNorm1d", "sincos_2d", "resize_learned_positions", "PRESETS", "count_parameters"]
