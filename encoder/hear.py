"""The HEAR 2021 common API for any saved AudioMosaic encoder (https://hearbenchmark.com/hear-api.html).

    import encoder.hear as hear                 # hear-eval-kit / hear-validator take the module name "encoder.hear"
    model = hear.load_model("runs/pretrain-tiny/encoder")    # a folder written by pretraining (or random[:<size>])
    scene = hear.get_scene_embeddings(audio, model)          # audio: float32 [n_sounds, n_samples] at 16 kHz
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # [n_sounds, n_stamps, D], [n_sounds, n_stamps] in ms

The audio goes through the encoder's own front end (DC removed, Kaldi fbank, its normalisation; the constants come
from the folder's ``config.json``). Audio longer than the encoder's ``target_frames`` is cut into consecutive chunks
of that many frames (the last one padded the way training pads), each chunk runs through the encoder, and the patch
columns of the chunks are put back in order.

* Scene embedding: the encoder's clip embedding (``fc_norm`` of the mean last-layer patch token, the feature the
  kit's linear probe reads), averaged over the patch columns that hold audio only (padding excluded) -> [n, D].
* Timestamp embeddings: one per patch column (16 frames = 160 ms) = the mean of its 8 frequency tokens -> [.., D].
  A finer ``hop_ms`` (80, 40 (default), 20 or 10 ms) runs the encoder ``160 / hop_ms`` times on the spectrogram
  shifted by ``hop_ms / 10`` frames and interleaves the columns. A timestamp is the centre, in milliseconds, of the
  16 fbank frames its column covers; the spectrogram is padded in front by one column so stamps start before one
  hop, and only stamps inside the audio are returned.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .features import AudioError, fbank, normalise
from .hf import AudioMosaicModel, resolve_encoder

HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)  # what the HEAR API allows


class HearEncoder(torch.nn.Module):
    """An AudioMosaic encoder with the attributes HEAR asks for (``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``) and the chunking / hop settings."""

    def __init__(self, encoder: AudioMosaicModel, hop_ms: float = 40.0, batch_size: int = 16):
        super().__init__()
        self.encoder = encoder.eval()
        cfg = encoder.config
        self.fbank_cfg = cfg.fbank_config()
        self.sample_rate = int(cfg.sample_rate)
        self.scene_embedding_size = self.timestamp_embedding_size = int(cfg.embed_dim)
        self.patch = int(cfg.patch_size)
        self.chunk_frames = int(cfg.target_frames)
        column_ms = self.patch * self.fbank_cfg.frame_shift_ms
        shifts = column_ms / hop_ms
        if hop_ms <= 0 or shifts != int(shifts) or self.patch % int(shifts):
            choices = [column_ms / s for s in range(1, self.patch + 1) if self.patch % s == 0]
            raise ValueError(f"hop_ms={hop_ms:g}: choose one of {choices} (a patch column is {column_ms:g} ms)")
        self.hop_ms, self.shifts, self.batch_size = float(hop_ms), int(shifts), int(batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def log_fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """[n, samples] -> un-normalised log-mel [n, frames, F] on the encoder's device, after the checks."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
            got = f"{audio.dtype} tensor of shape {tuple(audio.shape)}" if isinstance(audio, torch.Tensor) \
                else type(audio).__name__
            raise AudioError("audio", f"HEAR audio must be a float tensor [n_sounds, n_samples], got {got}")
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise AudioError("audio", f"holds no audio (shape {tuple(audio.shape)})")
        if not torch.isfinite(audio).all():
            raise AudioError("audio", "contains NaN/inf samples")
        wave = audio.to(self.device, torch.float32)
        return fbank(wave - wave.mean(-1, keepdim=True), self.fbank_cfg)  # DC removed, as waveform_to_input does

    @torch.no_grad()
    def columns(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel [n, frames, F] -> per patch column: final-normed tokens averaged over frequency [n, C, D] and the
        pre-norm last-layer tokens [n, C, n_freq, D] (C = ceil(frames / 16)), in chunks of ``chunk_frames``."""
        n, frames, n_mel = spec.shape
        n_chunks = -(-frames // self.chunk_frames)
        spec = torch.nn.functional.pad(spec, (0, 0, 0, n_chunks * self.chunk_frames - frames))  # pad_or_crop's zeros
        x = normalise(spec, self.fbank_cfg.mean, self.fbank_cfg.std).reshape(n * n_chunks, self.chunk_frames, n_mel)
        tokens, hidden = [], []
        for s in range(0, len(x), self.batch_size):
            out = self.encoder.encoder.forward_features(x[s:s + self.batch_size], output_hidden_states=True)
            n_time, n_freq = out["grid"]
            tokens.append(out["tokens"].reshape(-1, n_time, n_freq, out["tokens"].shape[-1]).mean(2))
            hidden.append(out["hidden_states"][-1][:, 1:].reshape(-1, n_time, n_freq, out["tokens"].shape[-1]))
        n_cols = -(-frames // self.patch)
        tokens = torch.cat(tokens).reshape(n, n_chunks * n_time, -1)[:, :n_cols]
        hidden = torch.cat(hidden).reshape(n, n_chunks * n_time, n_freq, -1)[:, :n_cols]
        return tokens, hidden

    def column_centre_ms(self, first_frame: float) -> float:
        """Centre (ms) of the 16 fbank frames starting at ``first_frame`` (frame i spans [i*shift, i*shift+win))."""
        f = self.fbank_cfg
        return first_frame * f.frame_shift_ms + ((self.patch - 1) * f.frame_shift_ms + f.frame_length_ms) / 2


def load_model(model_file_path: str = "", hop_ms: float = 40.0) -> HearEncoder:
    """An encoder folder (or a file inside one, e.g. its ``model.safetensors``), or ``random[:<size>]``; "" is a
    random-init tiny encoder (seed 0), an untrained baseline."""
    spec = str(model_file_path or "random:tiny")
    path = Path(spec).expanduser()
    if path.is_file():
        spec = str(path.parent)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = resolve_encoder(spec)
    return HearEncoder(encoder, hop_ms=hop_ms)


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearEncoder) -> torch.Tensor:
    """[n_sounds, n_samples] -> float32 [n_sounds, scene_embedding_size]."""
    _, hidden = model.columns(model.log_fbank(audio))
    return model.encoder.encoder.fc_norm(hidden.mean((1, 2))).float()


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_sounds, n_samples] -> float32 embeddings [n_sounds, n_stamps, D] and timestamps [n_sounds, n_stamps] (ms,
    the centre of each embedding's frames, evenly ``model.hop_ms`` apart, all inside the audio)."""
    spec = model.log_fbank(audio)
    spec = torch.nn.functional.pad(spec, (0, 0, model.patch, 0))  # one column in front: stamps start before a hop
    step = model.patch // model.shifts
    views = [model.columns(spec[:, j * step:])[0] for j in range(model.shifts)]
    n_cols = views[0].shape[1]
    views = [torch.nn.functional.pad(v, (0, 0, 0, n_cols - v.shape[1])) for v in views]  # a shifted view may be short
    emb = torch.stack(views, 2).flatten(1, 2)  # stamp k = column k // shifts of view k % shifts
    centres = [model.column_centre_ms(k * step - model.patch) for k in range(emb.shape[1])]
    duration_ms = audio.shape[1] / model.sample_rate * 1000.0
    keep = [k for k, c in enumerate(centres) if 0.0 <= c <= duration_ms]
    if not keep:  # audio shorter than the first centre: its first column, stamped at the end of the audio
        keep = [model.shifts]
        centres[model.shifts] = duration_ms
    ts = torch.tensor([centres[k] for k in keep], dtype=torch.float32, device=emb.device)
    return emb[:, keep].float().contiguous(), ts.expand(audio.shape[0], -1).contiguous()


__all__ = ["HEAR_SAMPLE_RATES", "HearEncoder", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
