"""Audio projector: frozen encoder tokens -> LLM input embeddings.

``tokens`` [B, n_time * n_freq, D] (time-major, index = t * n_freq + f, as the encoder returns them)
  -> mean over the n_freq (8) frequency patches      [B, n_time, D]
  -> average-pool time by ``pool`` (2)               [B, n_time // pool, D]   (1024 frames: 64 -> 32 tokens)
  -> multiply by ``scale``                           (a fixed constant from the config)
  -> standardise per feature (``standardize``)       (x - mean) / std, frozen statistics of the training clips
  -> LayerNorm(D) + Linear(D, llm_hidden)            [B, n_audio, H]

Why standardise: a frozen encoder's pooled tokens share one dominant direction. For the tiny AudioMosaic encoder
the mean cosine similarity between clips is 0.9996 (99.96 % of the energy is the common mean), so LayerNorm, which
works per token, passes along inputs that are nearly identical for every clip, and a Linear trained through a frozen
LLM learns the answer prior long before the small differences between clips (a stage-1 run at 250 steps answered
"synth effects" to every instrument). A linear probe on the same features goes from 0.30 to 0.68 keyword accuracy
once the features are standardised. The mean and std are measured once, on training clips, when a stage starts
without an artifact (:meth:`AudioProjector.set_feature_stats`); they are buffers, saved in the artifact and never
trained.

A trailing odd time step is dropped (floor), so ``n_audio = (frames // 16) // pool``.

``kind: attentive`` reads every patch token instead of the frequency mean: ``n_audio`` learned queries (one per
audio slot, the same count as above) cross-attend over the standardised tokens ``[B, n_time * n_freq, D]`` (one
pre-norm block as in the attentive probe: ``q = query + MHA(LN(q), LN(x))``, ``q = q + MLP(LN(q))``), then
LayerNorm + Linear to the LLM width. The frequency mean throws away what separates keywords (a standardised logistic
regression on the pooled tokens of the tiny encoder: 0.76 keywords test; an attentive probe on all tokens: 0.9);
the attentive projector keeps it, for ~0.5 M parameters.
``kind: ltu`` is the audio projection of the paper's LTU stage-4 model, reproduced exactly so its released weights
(``mosaic-alm import`` of ``AudioMosaic-vit-b16-ltu-stage4`` writes them) give the reference's audio embeddings:
the time-major tokens are viewed as [B, 8, N / 8, D] and averaged over the 8 (for 1,024 frames each output step
mixes 8 time steps x 8 frequency patches, not one time step: the reference's reshape, kept as trained), time pairs
averaged (``pool``), multiplied by ``scale`` (the reference divides by 50), then LayerNorm without affine parameters
and Linear(D, llm_hidden); it does not standardise. :meth:`AudioProjector.from_ltu_folder` loads it.
The Linear is initialised so its output RMS matches ``target_rms`` (the LLM's text-embedding RMS when the ALM builds
it); otherwise the audio embeddings start ~10x louder than SmolLM2's word embeddings and the first steps are spent
shrinking them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from encoder.query_attention import normalise_tokens, query_attention
from mosaic_core.config import PositiveFloat, PositiveInt


@dataclass
class AudioProjectorConfig:
    kind: Literal["linear", "attentive", "ltu"] = "linear"  # per pooled time step | learned queries | LTU's pooling
    pool: PositiveInt = 2  # average-pool factor over time (attentive: sets the number of queries the same way)
    heads: PositiveInt = 8  # attentive: attention heads (must divide the encoder width)
    scale: PositiveFloat = 1.0  # multiplies the pooled encoder features before the LayerNorm
    match_embedding_rms: bool = True  # initialise the Linear so outputs have the LLM's word-embedding RMS
    standardize: bool = True  # per-feature (x - mean) / std with statistics measured on training clips
    stats_clips: PositiveInt = 256  # training clips the statistics are measured on (stage start, fresh projector only)

    def __post_init__(self):
        if self.pool < 1:
            raise ValueError(f"projector.pool must be >= 1, got {self.pool}")
        if self.stats_clips < 1:
            raise ValueError(f"projector.stats_clips must be >= 1, got {self.stats_clips}")


def num_audio_tokens(frames: int, patch_size: int = 16, pool: int = 2) -> int:
    return (frames // patch_size) // pool


class AudioProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, n_freq: int = 8, cfg: AudioProjectorConfig | None = None,
                 target_rms: float | None = None, n_audio: int | None = None):
        """``n_audio``: the audio slots of a clip (attentive kind: one learned query each; the model knows it)."""
        super().__init__()
        self.cfg = cfg or AudioProjectorConfig()
        self.in_dim, self.out_dim, self.n_freq = in_dim, out_dim, n_freq
        if self.cfg.kind == "attentive":
            if in_dim % self.cfg.heads:
                raise ValueError(f"projector.heads {self.cfg.heads} does not divide the encoder width {in_dim}")
            if not n_audio or n_audio < 1:
                raise ValueError("an attentive projector needs n_audio (its number of queries)")
            g = torch.Generator().manual_seed(n_audio)
            self.query = nn.Parameter(torch.randn(1, n_audio, in_dim, generator=g).mul_(0.02))
            self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(in_dim), nn.LayerNorm(in_dim), nn.LayerNorm(in_dim)
            self.attn = nn.MultiheadAttention(in_dim, self.cfg.heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(in_dim, 4 * in_dim), nn.GELU(), nn.Linear(4 * in_dim, in_dim))
        self.norm = nn.LayerNorm(in_dim, elementwise_affine=self.cfg.kind != "ltu")
        self.linear = nn.Linear(in_dim, out_dim)
        # feature statistics (identity until measured; stats_count = clips they were measured on)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.register_buffer("stats_count", torch.zeros((), dtype=torch.long))
        self.reset_parameters(target_rms)

    STATS_KEYS = ("feat_mean", "feat_std", "stats_count")

    @torch.no_grad()
    def set_feature_stats(self, pooled: torch.Tensor, n_clips: int | None = None) -> None:
        """Measure the per-feature mean and std from pooled features [N, n_audio, D] (or [M, D])."""
        x = pooled.reshape(-1, self.in_dim).double()
        if x.shape[0] < 2:
            raise ValueError("projector statistics need at least two pooled feature vectors")
        std = x.std(0)
        floor = max(float(std.max()) * 1e-6, 1e-12)  # a constant feature stays finite (and carries nothing)
        self.feat_mean.copy_(x.mean(0).to(self.feat_mean.dtype))
        self.feat_std.copy_(std.clamp_min(floor).to(self.feat_std.dtype))
        self.stats_count.fill_(int(n_clips if n_clips is not None else pooled.shape[0]))

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
        if self.cfg.kind == "ltu":  # the reference's view: [B, 8, N / 8, D], mean over the 8
            x = tokens.reshape(b, self.n_freq, n // self.n_freq, d).mean(1)
        else:
            x = tokens.reshape(b, n // self.n_freq, self.n_freq, d).mean(2)  # [B, n_time, D]
        p = self.cfg.pool
        if p > 1:
            if x.shape[1] < p:
                raise ValueError(f"projector: {x.shape[1]} time steps cannot be pooled by {p}")
            x = F.avg_pool1d(x.transpose(1, 2), kernel_size=p, stride=p).transpose(1, 2)
        return x * self.cfg.scale

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the statistics are measured on and the trained part reads: pooled tokens (linear) or every patch
        token (attentive), times ``scale``."""
        if self.cfg.kind in ("linear", "ltu"):
            return self.pool_tokens(tokens)
        if tokens.dim() != 3 or tokens.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects encoder tokens [B, N, {self.in_dim}], got {tuple(tokens.shape)}")
        return tokens * self.cfg.scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.features(tokens)
        if self.cfg.standardize:
            x = (x - self.feat_mean.to(x.dtype)) / self.feat_std.to(x.dtype)
        x = x.to(self.linear.weight.dtype)
        if self.cfg.kind == "attentive":  # MultiheadAttention(norm_q(query), norm_kv(x)), from the query side
            q = self.query[0]
            q = q + query_attention(self.attn, self.norm_kv, self.norm_q(q), normalise_tokens(x, self.norm_kv))
            x = q + self.mlp(self.norm_mlp(q))
        return self.linear(self.norm(x))

    def external_parameters(self) -> list[nn.Parameter]:
        """Parameters :meth:`forward` reads outside their own module's forward (the query-side attention reads the
        attention's input projection and ``norm_kv``'s affine): a ZeRO-3 engine must gather them for the projector
        (``deepspeed.zero.register_external_parameter``)."""
        if self.cfg.kind != "attentive":
            return []
        return [self.attn.in_proj_weight, self.attn.in_proj_bias, self.norm_kv.weight, self.norm_kv.bias]

    @classmethod
    def from_ltu_folder(cls, folder) -> "AudioProjector":
        """The LTU audio projection an imported ``AudioMosaic-vit-b16-ltu-stage4`` folder holds
        (``audio_projector.json`` + ``audio_projector.safetensors``)."""
        import json
        from pathlib import Path

        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "audio_projector.json").read_text())
        cfg = AudioProjectorConfig(kind="ltu", pool=int(meta["pool"]), scale=float(meta["scale"]),
                                   standardize=bool(meta["standardize"]), match_embedding_rms=False)
        proj = cls(int(meta["in_dim"]), int(meta["out_dim"]), cfg=cfg)
        state = load_file(str(folder / "audio_projector.safetensors"))
        proj.load_state_dict({**{k: v for k, v in proj.state_dict().items() if k in proj.STATS_KEYS}, **state})
        return proj.eval()


__all__ = ["AudioProjector", "AudioProjectorConfig", "num_audio_tokens"]
