"""Audio projector: frozen encoder tokens -> LLM input embeddings.

``tokens`` [B, n_time * n_freq, D] (time-major, index = t * n_freq + f, as the encoder returns them)
  -> mean over the n_freq (8) frequency patches      [B, n_time, D]
  -> average-pool time by ``pool`` (2)               [B, n_time // pool, D]   (1024 frames: 64 -> 32 tokens)
  -> multiply by ``scale``                           (a fixed constant from the config)
  -> LayerNorm(D) + Linear(D, llm_hidden)            [B, n_audio, H]

A trailing odd time step is dropped (floor), so ``n_audio = (frames // 16) // pool``.
The Linear is initialised so its output RMS matches ``target_rms`` (the LLM's text-embedding RMS when the ALM builds
it); otherwise the audio embeddings start ~10x louder than SmolLM2's word embeddings and the first steps are spent
shrinking them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProjectorConfig:
    pool: int = 2  # average-pool factor over time
    scale: float = 1.0  # multiplies the pooled encoder features before the LayerNorm
    match_embedding_rms: bool = True  # initialise the Linear so outputs have the LLM's word-embedding RMS

    def __post_init__(self):
        if self.pool < 1:
            raise ValueError(f"projector.pool must be >= 1, got {self.pool}")


def num_audio_tokens(frames: int, patch_size: int = 16, pool: int = 2) -> int:
    return (frames // patch_size) // pool


class AudioProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, n_freq: int = 8, cfg: ProjectorConfig | None = None,
                 target_rms: float | None = None):
        super().__init__()
        self.cfg = cfg or ProjectorConfig()
        self.in_dim, self.out_dim, self.n_freq = in_dim, out_dim, n_freq
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.reset_parameters(target_rms)

    def reset_parameters(self, target_rms: float | None = None):
        self.norm.reset_parameters()
        if target_rms is not None and self.cfg.match_embedding_rms:
            # LayerNorm output has unit variance per feature: std_out = std_w * sqrt(in_dim)
            nn.init.normal_(self.linear.weight, std=target_rms / math.sqrt(self.in_dim))
            nn.init.zeros_(self.linear.bias)
        else:
            self.linear.reset_parameters()

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, n_time * n_freq, D] time-major -> [B, n_time // pool, D] (parameter-free part)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.in_dim or tokens.shape[1] % self.n_freq:
            raise ValueError(f"projector expects encoder tokens [B, n_time*{self.n_freq}, {self.in_dim}], "
                             f"got {tuple(tokens.shape)}")
        b, n, d = tokens.shape
        x = tokens.reshape(b, n // self.n_freq, self.n_freq, d).mean(2)  # [B, n_time, D]
        p = self.cfg.pool
        if p > 1:
            if x.shape[1] < p:
                raise ValueError(f"projector: {x.shape[1]} time steps cannot be pooled by {p}")
            x = F.avg_pool1d(x.transpose(1, 2), kernel_size=p, stride=p).transpose(1, 2)
        return x * self.cfg.scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pool_tokens(tokens)
        return self.linear(self.norm(x.to(self.linear.weight.dtype)))


__all__ = ["ProjectorConfig", "AudioProjector", "num_audio_tokens"]
