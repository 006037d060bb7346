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


def preprocessing_constants(config: AudioMosaicConfig, target_frames: int | None = None) -> dict:
    """What turns audio into this encoder's input: the fbank settings, normalisation and input frames. Two
    encoders are interchangeable for a model trained on one of them only if these agree."""
    fb = config.fbank_config(target_frames)
    return {"sample_rate": fb.sample_rate, "num_mel_bins": fb.num_mel_bins, "frame_length_ms": fb.frame_length_ms,
            "frame_shift_ms": fb.frame_shift_ms, "preemphasis": fb.preemphasis, "low_freq": fb.low_freq,
            "high_freq": fb.high_freq, "norm_mean": fb.mean, "norm_std": fb.std, "target_frames": fb.target_frames,
            "patch_size": config.patch_size}


def preprocessing_facts(pre: dict) -> dict:
    """The preprocessing constants as card facts (one line each)."""
    return {"audio": f"mono, resampled to {pre['sample_rate']} Hz (libsoxr), DC removed",
            "features": f"Kaldi log-mel fbank: {pre['num_mel_bins']} mel bins, {pre['frame_length_ms']:g} ms "
                        f"Hann window, {pre['frame_shift_ms']:g} ms shift, pre-emphasis {pre['preemphasis']}, "
                        f"{pre['low_freq']:g} Hz to Nyquist, no dither",
            "normalisation": f"(x - ({pre['norm_mean']})) / (2 x {pre['norm_std']})",
            "input length": f"{pre['target_frames']} frames = {pre['target_frames'] * pre['frame_shift_ms'] / 1000:g}"
                            " s (longer clips cropped, shorter zero-padded in the log-mel domain)",
            "patches": f"{pre['patch_size']} x {pre['patch_size']} on a (frames/{pre['patch_size']} time) x "
                       f"({pre['num_mel_bins'] // pre['patch_size']} frequency) grid, time-major"}


def write_encoder_card(folder: str | Path, config: AudioMosaicConfig, training: dict | None = None,
                       n_params: int | None = None, shown: str | None = None) -> Path:
    """The encoder folder's README.md model card (architecture, preprocessing, training, use, limits); ``shown`` is
    the folder's name in the usage examples (default: ``folder``; a temporary folder passes its final path)."""
    from mosaic_core.cards import facts_list, write_model_card

    objective = (training or {}).get("objective", "none recorded (random initialisation, or saved outside a "
                                                  "pretraining run)")
    size = f"{config.size}, {n_params / 1e6:.1f} M parameters" if n_params else config.size
    arch = {"type": "ViT encoder over 16 x 16 spectrogram patches (pre-norm blocks, 2-D sin-cos positions "
                    "computed for the actual grid)", "size": size, "embed_dim": config.embed_dim,
            "depth": config.depth, "num_heads": config.num_heads, "mlp_ratio": config.mlp_ratio,
            "outputs": "last_hidden_state [B, 1 + patches, D] (CLS first), pooler_output [B, D] (fc_norm of the "
                       "mean patch token); `embed(x, layer, kind)` for any layer"}
    shown = shown or str(folder)
    usage = f"""```python
import encoder.hf  # registers the classes with transformers' Auto* (no trust_remote_code)
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{shown}")
features = AutoFeatureExtractor.from_pretrained("{shown}")
inputs = features(waveform, sampling_rate=16000)            # any rate; resampled
clip_embedding = model(**inputs).pooler_output               # [1, {config.embed_dim}]
```
HEAR 2021 API: `import encoder.hear as hear; m = hear.load_model("{shown}")`, then
`hear.get_scene_embeddings(audio, m)` / `hear.get_timestamp_embeddings(audio, m)`.
Probe it: `mosaic-alm eval-encoder --config configs/eval/encoder_embedded.yaml "encoders={{mine: {shown}}}"`."""
    limits = ("An audio representation for research: probing, fine-tuning, HEAR evaluation and as the frozen audio "
              "encoder of an audio-language model. It is only as good as its pretraining data and steps (see "
              "Training and Measured results): a tiny encoder pretrained on the kit's embedded benchmark (20 "
              "synthesised spoken words, fluidsynth-rendered notes, game sound effects) is a pipeline check, not a general "
              "audio model. It hears 16 kHz mono only, one clip of the input length at a time (longer audio: "
              "chunk it, as the HEAR module does), and was not evaluated for fairness, speech privacy or "
              "safety-critical use.")
    meta = {"library_name": "mosaic-alm", "license": "apache-2.0", "pipeline_tag": "feature-extraction",
            "tags": ["audio", "audio-encoder", "audiomosaic", "self-supervised", "mosaic-alm"]}
    return write_model_card(folder, title=f"AudioMosaic encoder ({config.size})",
                            summary=f"An AudioMosaic audio encoder saved by mosaic-alm. Pretraining objective: "
                                    f"{objective}.",
                            sections={"Architecture": facts_list(arch),
                                      "Preprocessing": facts_list(preprocessing_facts(preprocessing_constants(config))),
                                      "Training": facts_list(training or {}), "Use": usage,
                                      "Intended use and limits": limits}, metadata=meta)


def save_encoder_folder(model: AudioMosaicModel, folder: str | Path, state_dict: dict | None = None,
                        training: dict | None = None, shown: str | None = None) -> Path:
    """Write an encoder folder: ``config.json`` + ``model.safetensors`` + the feature extractor + the model card."""
    model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
    AudioMosaicFeatureExtractor.from_model_config(model.config).save_pretrained(str(folder))
    n = sum(v.numel() for v in (state_dict or model.state_dict()).values())
    return write_encoder_card(folder, model.config, training, n, shown)


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
    from safetensors import SafetensorError

    from .checkpoint import CheckpointError, require_safetensors

    require_safetensors(path / "model.safetensors", f"encoder {spec!r}")
    try:
        return AudioMosaicModel.from_pretrained(str(path), use_safetensors=True, **overrides)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"encoder {spec!r}: cannot read its weights: {exc}") from None


__all__ = ["AudioMosaicConfig", "AudioMosaicModel", "AudioMosaicFeatureExtractor", "AudioError", "resolve_encoder",
           "preprocessing_constants", "preprocessing_facts", "write_encoder_card", "save_encoder_folder"]
