"""Hugging Face classes: ``AudioMosaicConfig``, ``AudioMosaicModel``, ``AudioMosaicFeatureExtractor``.

They wrap the plain modules of :mod:`encoder.model` and :mod:`encoder.features`, save as safetensors with
``save_pretrained`` and load with ``from_pretrained`` (or the Auto classes, registered on import). The feature
extractor's constants (mel bins, frames, normalisation) come from the same config, so a checkpoint folder is
self-contained.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    BatchFeature,
    PretrainedConfig,
    PreTrainedModel,
    SequenceFeatureExtractor,
)

from .features import AudioError, FbankConfig, prepare_waveform, waveform_to_input
from .model import AudioMosaicViT, EncoderConfig


class AudioMosaicConfig(PretrainedConfig):
    model_type = "audiomosaic"

    def __init__(self, **kwargs):
        fields = {f.name for f in dataclasses.fields(EncoderConfig)}
        enc_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        super().__init__(**kwargs)
        enc = EncoderConfig(**enc_kwargs)
        for k, v in dataclasses.asdict(enc).items():
            setattr(self, k, v)

    def to_encoder_config(self) -> EncoderConfig:
        return EncoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EncoderConfig)})

    def fbank_config(self, target_frames: int | None = None) -> FbankConfig:
        return FbankConfig(sample_rate=self.sample_rate, num_mel_bins=self.num_mel_bins,
                           target_frames=target_frames or self.target_frames, mean=self.norm_mean,
                           std=self.norm_std)


class AudioMosaicModel(PreTrainedModel):
    """The AudioMosaic encoder with an embedding API.

    ``forward(input_values)`` returns ``last_hidden_state`` [B, 1 + n_time * n_freq, D] (CLS first, then patch
    tokens in time-major order), ``pooler_output`` [B, D] and, if asked, all ``hidden_states``.
    """

    config_class = AudioMosaicConfig
    base_model_prefix = "audiomosaic"
    main_input_name = "input_values"

    def __init__(self, config: AudioMosaicConfig):
        super().__init__(config)
        self.encoder = AudioMosaicViT(config.to_encoder_config())
        self.post_init()

    def _init_weights(self, module):  # modules initialise themselves (encoder.model.reset_parameters)
        return

    def forward(self, input_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True,
                **_):
        out = self.encoder.forward_features(input_values, output_hidden_states=output_hidden_states)
        last = torch.cat([out["cls"].unsqueeze(1), out["tokens"]], dim=1)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=out["pooled"],
                                          hidden_states=tuple(out["hidden_states"]) if output_hidden_states else None)

    @torch.no_grad()
    def embed(self, input_values: torch.Tensor, layer: int = -1, kind: str = "clip") -> torch.Tensor:
        """Embeddings from any layer (0 = patch embeddings, -1 = last; the last layer is final-normed).

        ``kind="clip"``: mean over patch tokens (CLS excluded) -> [B, D] (fc_norm applied for the last layer);
        ``kind="frames"``: mean over the 8 frequency patches of each time step -> [B, n_time, D] (one frame per
        16 input frames = 160 ms); ``kind="tokens"``: [B, n_time * n_freq, D], time-major.
        """
        enc = self.encoder
        out = enc.forward_features(input_values, output_hidden_states=True)
        n_layers = len(out["hidden_states"])
        idx = layer if layer >= 0 else n_layers + layer
        if not 0 <= idx < n_layers:
            raise ValueError(f"layer {layer} out of range for {n_layers} hidden states (0..{n_layers - 1})")
        last = idx == n_layers - 1
        tokens = out["tokens"] if last else out["hidden_states"][idx][:, 1:]
        n_time, n_freq = out["grid"]
        if kind == "tokens":
            return tokens
        if kind == "frames":
            return tokens.reshape(tokens.shape[0], n_time, n_freq, -1).mean(2)
        if kind == "clip":
            return out["pooled"] if last else tokens.mean(1)
        raise ValueError(f"unknown embedding kind {kind!r}; choose clip, frames or tokens")


class AudioMosaicFeatureExtractor(SequenceFeatureExtractor):
    """Waveforms (any rate; mono or [channels, samples]) -> normalised fbank ``input_values`` [B, T, 128]."""

    model_input_names = ["input_values"]

    def __init__(self, feature_size: int = 128, sampling_rate: int = 16000, padding_value: float = 0.0,
                 target_frames: int = 1024, norm_mean: float = -4.2677393, norm_std: float = 4.5689974, **kwargs):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         **kwargs)
        self.target_frames = target_frames
        self.norm_mean = norm_mean
        self.norm_std = norm_std

    @classmethod
    def from_model_config(cls, config: AudioMosaicConfig) -> "AudioMosaicFeatureExtractor":
        return cls(feature_size=config.num_mel_bins, sampling_rate=config.sample_rate,
                   target_frames=config.target_frames, norm_mean=config.norm_mean, norm_std=config.norm_std)

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors: str | None = "pt",
                 target_frames: int | None = None, **kwargs) -> BatchFeature:
        if sampling_rate is None:
            raise ValueError("pass sampling_rate= so the waveform can be resampled to "
                             f"{self.sampling_rate} Hz when needed")
        single = isinstance(raw_speech, (np.ndarray, torch.Tensor)) and np.ndim(raw_speech) == 1
        batch = [raw_speech] if single else list(raw_speech)
        cfg = FbankConfig(sample_rate=self.sampling_rate, num_mel_bins=self.feature_size,
                          target_frames=target_frames or self.target_frames, mean=self.norm_mean, std=self.norm_std)
        feats = []
        for i, wave in enumerate(batch):
            w = prepare_waveform(np.asarray(wave, dtype=np.float32), sampling_rate, self.sampling_rate,
                                 source=f"waveform {i}")
            feats.append(waveform_to_input(w, cfg, source=f"waveform {i}"))
        values = torch.stack(feats)
        return BatchFeature({"input_values": values if return_tensors == "pt" else values.numpy()},
                            tensor_type=return_tensors)


def register_auto_classes() -> None:
    AutoConfig.register("audiomosaic", AudioMosaicConfig, exist_ok=True)
    AutoModel.register(AudioMosaicConfig, AudioMosaicModel, exist_ok=True)
    AutoFeatureExtractor.register(AudioMosaicConfig, AudioMosaicFeatureExtractor, exist_ok=True)


register_auto_classes()

def resolve_encoder(spec: str, *, reference: str | None = None, **overrides) -> AudioMosaicModel:
    """The one way to name an encoder: a folder written by pretraining (``config.json`` + ``model.safetensors``),
    ``random:<size>`` (a randomly initialised preset: tiny, small, base, large), or ``random`` (the architecture of
    the ``reference`` folder, else tiny). ``overrides`` change architecture fields (e.g. ``drop_path``); a random
    encoder is initialised from torch's current seed, so seed before calling. Bad specs raise ConfigError."""
    from mosaic_core.config import ConfigError

    spec = str(spec)
    if spec == "random" or spec.startswith("random:"):
        try:
            if ":" in spec or reference is None:
                enc = EncoderConfig(size=spec.partition(":")[2] or "tiny", **overrides)
            else:
                enc = dataclasses.replace(AudioMosaicConfig.from_pretrained(str(reference)).to_encoder_config(),
                                          **overrides)
            return AudioMosaicModel(AudioMosaicConfig(**dataclasses.asdict(enc)))
        except ValueError as exc:
            raise ConfigError(f"encoder {spec!r}: {exc}") from None
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder {spec!r}: not a folder written by pretraining (config.json + "
                          f"model.safetensors, e.g. runs/pretrain-tiny/encoder) and not random[:<size>]")
    model = AudioMosaicModel.from_pretrained(str(path), **overrides)
    return model


__all__ = ["AudioMosaicConfig", "AudioMosaicModel", "AudioMosaicFeatureExtractor", "AudioError", "resolve_encoder"]
