"""Same-budget masked-reconstruction baseline (MAE / AudioMAE style): the generative pretraining objective.

The encoder is the SAME :class:`~encoder.vit.AudioMosaicViT` the contrastive objective trains, so a checkpoint's
``encoder.*`` weights export and evaluate exactly like the contrastive one. On top sits a real decoder that
reconstructs the dropped patches:

    spectrogram [B, T, F] --mask (view_indices)--> encoder on the kept patches --> tokens [B, K, D] (time-major)
    --Linear(D, d)--> scatter into a full [B, N, d] sequence, mask token at every dropped position
    --+ 2-D sin-cos positions of the actual (n_time, n_freq) grid--> decoder Blocks --> LayerNorm
    --Linear(d, p*p)--> predicted pixels of every patch [B, N, p*p]

The loss is the mean squared error over the MASKED patches only (``mask == 1``), against per-patch normalised
pixels when ``norm_pix_loss`` (mean and variance over the p*p pixels of each patch, eps 1e-6), as in MAE and
AudioMAE. Token and target order is time-major everywhere: patch index = t * n_freq + f. The decoder sees no CLS
token. A mask ratio is the fraction DROPPED (``encoder.masking``); AudioMAE uses 0.8 unstructured ("random").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mosaic_core.config import PositiveInt, Ratio

from .masking import VIEWS, view_indices
from .vit import AudioMosaicViT, Block, EncoderConfig, init_transformer_weights, sincos_2d


@dataclass
class MAEConfig:
    """Decoder and masking of the MAE baseline (the encoder is configured by :class:`EncoderConfig`)."""

    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 2
    decoder_heads: PositiveInt = 4
    mask_ratio: Ratio = 0.8  # fraction of patches DROPPED (and reconstructed)
    mask_kind: str = "random"  # "random" (AudioMAE, unstructured), "time" or "freq" (structured views)
    norm_pix_loss: bool = True

    def __post_init__(self):
        if self.mask_kind not in VIEWS:
            raise ValueError(f"unknown MAE mask_kind {self.mask_kind!r}; choose from {sorted(VIEWS)}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"MAE mask_ratio must be in (0, 1) (fraction dropped), got {self.mask_ratio}")
        if self.decoder_dim <= 0 or self.decoder_depth < 0 or self.decoder_heads <= 0:
            raise ValueError(f"decoder_dim/decoder_heads must be > 0 and decoder_depth >= 0, got "
                             f"{self.decoder_dim}/{self.decoder_heads}/{self.decoder_depth}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} not divisible by decoder_heads {self.decoder_heads}")
        if self.decoder_dim % 4:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be divisible by 4 for 2-D sin-cos positions")


def patchify_pixels(x: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """[B, T, F] or [B, 1, T, F] -> [B, n_time * n_freq, p * p] pixels, time-major (index t * n_freq + f).

    Patch ``t * n_freq + f`` is ``x[b, t*p:(t+1)*p, f*p:(f+1)*p].flatten()`` (row-major within the patch), the same
    order as the encoder's tokens (``Conv2d`` + ``flatten(2)``).
    """
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected a spectrogram [B, T, F] or [B, 1, T, F], got {tuple(x.shape)}")
    b, t, f = x.shape
    p = patch_size
    if t % p or f % p:
        raise ValueError(f"spectrogram [.., T={t}, F={f}] must have T and F multiples of {p}")
    return x.reshape(b, t // p, p, f // p, p).permute(0, 1, 3, 2, 4).reshape(b, (t // p) * (f // p), p * p)


def unpatchify_pixels(patches: torch.Tensor, n_time: int, n_freq: int, patch_size: int = 16) -> torch.Tensor:
    """Inverse of :func:`patchify_pixels`: [B, n_time * n_freq, p * p] -> [B, n_time * p, n_freq * p]."""
    b = patches.shape[0]
    p = patch_size
    return (patches.reshape(b, n_time, n_freq, p, p).permute(0, 1, 3, 2, 4).reshape(b, n_time * p, n_freq * p))


class MAEPretrainModel(nn.Module):
    """AudioMosaic encoder + lightweight transformer decoder trained to reconstruct the dropped patches."""

    def __init__(self, enc: EncoderConfig, cfg: MAEConfig | None = None):
        super().__init__()
        cfg = cfg or MAEConfig()
        self.cfg = cfg
        self.enc_cfg = enc
        self.encoder = AudioMosaicViT(enc)
        d = cfg.decoder_dim
        self.decoder_embed = nn.Linear(enc.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_blocks = nn.ModuleList(
            Block(d, cfg.decoder_heads, enc.mlp_ratio, enc.qkv_bias, 0.0) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, enc.patch_size * enc.patch_size)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._reset_decoder()

    def _reset_decoder(self):
        nn.init.normal_(self.mask_token, std=0.02)
        # the encoder initialises itself
        init_transformer_weights(m for name, m in self.named_modules() if not name.startswith("encoder"))

    def decoder_pos_embed(self, n_time: int, n_freq: int, device, dtype) -> torch.Tensor:
        """[n_time * n_freq, decoder_dim] fixed 2-D sin-cos positions of the actual grid (time-major)."""
        key = (n_time, n_freq)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(self.cfg.decoder_dim, n_time, n_freq)
        return self._pos_cache[key].to(device=device, dtype=dtype)

    def patchify_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction target [B, n_time * n_freq, p * p], time-major like the encoder's tokens."""
        return patchify_pixels(x, self.enc_cfg.patch_size)

    def draw_keep(self, batch: int, n_time: int, n_freq: int, generator: torch.Generator | None = None,
                  device=None) -> torch.Tensor:
        """Kept patch indices [B, K] (sorted, time-major) for ``cfg.mask_kind`` / ``cfg.mask_ratio``."""
        return view_indices(self.cfg.mask_kind, batch, n_time, n_freq, self.cfg.mask_ratio, generator, device)

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoder tokens [B, K, D] at ``keep`` [B, K] -> predicted pixels [B, n_time * n_freq, p * p]."""
        n_time, n_freq = grid
        n = n_time * n_freq
        y = self.decoder_embed(tokens)  # [B, K, d]
        b, _, d = y.shape
        full = self.mask_token.to(y.dtype).expand(b, n, d).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), y)
        h = full + self.decoder_pos_embed(n_time, n_freq, y.device, y.dtype)
        for blk in self.decoder_blocks:
            h = blk(h)
        return self.decoder_pred(self.decoder_norm(h))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels per patch, normalised per patch (mean/var over its p*p pixels, eps 1e-6) if ``norm_pix_loss``."""
        target = self.patchify_pixels(x).float()
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, unbiased=False, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                keep: torch.Tensor | None = None) -> dict:
        """Mask, encode the kept patches, decode every patch, score the dropped ones.

        Returns ``loss`` (scalar, MSE over masked patches only), ``pred`` [B, N, p*p] (in normalised-target space
        when ``norm_pix_loss``), ``mask`` [B, N] (1 = dropped and scored, 0 = kept; time-major), ``keep`` [B, K]
        and ``target`` [B, N, p*p]. ``keep`` may be given to override the drawn mask (tests, replay).
        """
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        p = self.enc_cfg.patch_size
        if x.dim() != 3 or x.shape[-1] != self.enc_cfg.num_mel_bins or x.shape[-2] % p or x.shape[-2] == 0:
            raise ValueError(f"expected a spectrogram [B, T, F={self.enc_cfg.num_mel_bins}] (or [B, 1, T, F]) with "
                             f"T a positive multiple of {p}, got {tuple(x.shape)}")
        n_time, n_freq = self.enc_cfg.grid(x.shape[-2])
        if keep is None:
            keep = self.draw_keep(x.shape[0], n_time, n_freq, generator, x.device)
        out = self.encoder.forward_features(x, keep)  # validates the input shape
        grid = out["grid"]
        n = grid[0] * grid[1]
        mask = torch.ones(x.shape[0], n, device=x.device)
        mask.scatter_(1, keep, 0.0)
        if not bool((mask.sum(dim=1) > 0).all()):
            raise ValueError(f"MAE mask ({self.cfg.mask_kind}, ratio {self.cfg.mask_ratio}) drops no patch of the "
                             f"{grid[0]}x{grid[1]} grid: nothing to reconstruct")
        pred = self.decode(out["tokens"], keep, grid)
        target = self.target(x)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # [B, N]
        loss = (per_patch * mask).sum() / mask.sum()
        return {"loss": loss, "pred": pred, "mask": mask, "keep": keep, "target": target}


__all__ = ["MAEConfig", "MAEPretrainModel", "patchify_pixels", "unpatchify_pixels"]
