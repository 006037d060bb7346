"""Frozen-encoder features for probing: per-layer mean-pooled patch tokens (CLS excluded) and the last layer's
tokens, extracted once per clip; and the probe that reads each kind of feature."""
from __future__ import annotations

import torch

from encoder.features import AudioError, FbankConfig, load_audio, waveform_to_input
from mosaic_core.config import ConfigError
from mosaic_core.runtime import autocast

from . import probes as P


def load_waves(rows) -> tuple[list[torch.Tensor | None], list[dict]]:
    """Decoded waveforms of manifest rows (None where a clip cannot be decoded) and the list of bad clips."""
    waves, bad = [], []
    for r in rows:
        try:
            waves.append(load_audio(r["path"]))
        except AudioError as exc:
            waves.append(None)
            bad.append({"id": r["id"], "error": str(exc)})
    return waves, bad


def split_waves(task) -> dict[str, tuple[list[torch.Tensor], torch.Tensor]]:
    """Each split of a loaded :class:`encoder.data.tasks.Task`: its decodable waveforms and their class indices
    (clips that cannot be decoded are left out)."""
    out = {}
    for role, idx in task.splits.items():
        rows = [task.rows[i] for i in idx.tolist()]
        waves, _ = load_waves(rows)
        keep = [i for i, w in enumerate(waves) if w is not None]
        out[role] = ([waves[i] for i in keep], torch.tensor([task.classes.index(rows[i]["label"]) for i in keep]))
    return out


def spectrogram_inputs(waves, fb: FbankConfig) -> torch.Tensor:
    """Normalised model inputs [N, T, F] of decoded waveforms (compute once, share between encoders whose
    preprocessing is the same)."""
    return torch.stack([waveform_to_input(w, fb) for w in waves])


@torch.no_grad()
def extract_features(model, waves, fb: FbankConfig, batch_size: int, bf16: bool = False) -> dict:
    """Per-layer pooled features [N, L+1, D] and last-layer tokens [N, K, D] (time-major), float32; the encoder
    runs under bf16 autocast when ``bf16``. ``waves``: decoded waveforms, or their :func:`spectrogram_inputs`."""
    layers, tokens = [], []
    device = next(model.parameters()).device
    for i in range(0, len(waves), batch_size):
        x = (waves[i:i + batch_size] if isinstance(waves, torch.Tensor) else
             torch.stack([waveform_to_input(w, fb) for w in waves[i:i + batch_size]])).to(device)
        with autocast(bf16, device):
            out = model.encoder.forward_features(x, output_hidden_states=True)
        pooled = [h[:, 1:].mean(1) for h in out["hidden_states"][:-1]] + [out["pooled"]]
        layers.append(torch.stack(pooled, dim=1).float().cpu())
        tokens.append(out["tokens"].float().cpu())
    layers = torch.cat(layers)
    return {"layers": layers, "last": layers[:, -1], "tokens": torch.cat(tokens)}


def make_probe(kind: str, train_feats: dict, n_cls: int):
    layers = train_feats["layers"]
    if kind == "linear":
        return P.LinearProbe(layers.shape[2], n_cls), "last"
    if kind == "weighted":
        return P.WeightedLayerProbe(layers.shape[1], layers.shape[2], n_cls), "layers"
    if kind == "attentive":
        return P.AttentiveProbe(layers.shape[2], n_cls, num_heads=_heads(layers.shape[2])), "tokens"
    raise ConfigError(f"unknown probe {kind!r}; choose linear, weighted or attentive")


def _heads(dim: int) -> int:
    for h in (8, 6, 4, 3, 2, 1):
        if dim % h == 0:
            return h
    return 1
