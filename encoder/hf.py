"""Hugging Face classes: ``AudioMosaicConfig``, ``AudioMosaicModel``, ``AudioMosaicForAudioClassification``,
``AudioMosaicFeatureExtractor``.

They wrap the plain modules of :mod:`encoder.vit`, :mod:`encoder.heads` and :mod:`encoder.features`, save as
safetensors with ``save_pretrained`` and load with ``from_pretrained`` (or the Auto classes, registered on import).
The feature extractor's constants (mel bins, frames, normalisation) come from the same config, so a checkpoint folder
is self-contained. ``from_pretrained`` also recognises the paper's released checkpoints (a Hub repo folder or id, or
a reference training checkpoint) and converts them in memory (:mod:`encoder.release`); :func:`import_release` writes
one as a kit folder.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    BatchFeature,
    PretrainedConfig,
    PreTrainedModel,
    SequenceFeatureExtractor,
)

from .features import AudioError, FbankConfig, prepare_waveform, waveform_to_input
from .heads import ClassificationHead, HeadConfig
from .vit import AudioMosaicViT, EncoderConfig


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
        return EncoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EncoderConfig)
                                if hasattr(self, f.name)})

    def head_config(self) -> HeadConfig | None:
        """The classification head of an imported classifier or probe (None for an encoder)."""
        head = getattr(self, "head", None)
        return HeadConfig(**head) if head else None

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
    # a classifier's head or a kept contrastive projector in the same file: not part of the encoder
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^projector\."]

    def __init__(self, config: AudioMosaicConfig):
        super().__init__(config)
        self.encoder = AudioMosaicViT(config.to_encoder_config())
        self.post_init()

    def _init_weights(self, module):  # modules initialise themselves (encoder.vit.reset_parameters)
        return

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A kit folder, or one of the paper's released checkpoints (converted in memory, see
        :func:`load_release`; keyword options of :func:`encoder.release.convert` apply)."""
        from .release import is_release

        if is_release(pretrained_model_name_or_path):
            return load_release(pretrained_model_name_or_path, cls=cls, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

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


class AudioMosaicForAudioClassification(PreTrainedModel):
    """The encoder with a classification head (the released fine-tuned classifiers and probes, imported).

    ``forward(input_values)`` returns ``logits`` [B, num_labels]; :meth:`scores` turns them into sigmoid (multi-label,
    AudioSet) or softmax scores; ``config.id2label`` names the labels."""

    config_class = AudioMosaicConfig
    base_model_prefix = "audiomosaic"
    main_input_name = "input_values"
    _keys_to_ignore_on_load_unexpected = [r"^projector\."]

    def __init__(self, config: AudioMosaicConfig):
        super().__init__(config)
        head = config.head_config()
        if head is None:
            raise ValueError("this AudioMosaic folder has no classification head (an encoder: use AudioMosaicModel)")
        self.encoder = AudioMosaicViT(config.to_encoder_config())
        self.head = ClassificationHead(head, self.encoder.cfg.embed_dim, self.encoder.cfg.depth)
        self.post_init()

    def _init_weights(self, module):
        return

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from .release import is_release

        if is_release(pretrained_model_name_or_path):
            return load_release(pretrained_model_name_or_path, cls=cls, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def forward(self, input_values: torch.Tensor, return_dict: bool = True, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        out = self.encoder.forward_features(input_values, output_hidden_states=self.head.cfg.kind != "linear")
        return SequenceClassifierOutput(logits=self.head(out, self.encoder.pool))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        from .heads import scores

        return scores(logits, self.head.cfg.multi_label)


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
    the folder's name in the usage examples (default: ``folder``; a temporary folder passes its final path). An
    imported release (``config.source``) gets its own card (:func:`write_release_card`)."""
    from mosaic_core.cards import facts_list, write_model_card

    if getattr(config, "source", None):
        return write_release_card(folder, config, n_params, shown)

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
              "synthesised spoken words, fluidsynth-rendered notes, game sound effects) is a pipeline check, "
              "not a general audio model. It hears 16 kHz mono only, one clip of the input length at a time "
              "(longer audio: chunk it, as the HEAR module does), and was not evaluated for fairness, speech "
              "privacy or safety-critical use.")
    meta = {"library_name": "mosaic-alm", "license": "apache-2.0", "pipeline_tag": "feature-extraction",
            "tags": ["audio", "audio-encoder", "audiomosaic", "self-supervised", "mosaic-alm"]}
    return write_model_card(folder, title=f"AudioMosaic encoder ({config.size})",
                            summary=f"An AudioMosaic audio encoder saved by mosaic-alm. Pretraining objective: "
                                    f"{objective}.",
                            sections={"Architecture": facts_list(arch),
                                      "Preprocessing": facts_list(preprocessing_facts(preprocessing_constants(config))),
                                      "Training": facts_list(training or {}), "Use": usage,
                                      "Intended use and limits": limits}, metadata=meta)


def write_release_card(folder: str | Path, config: AudioMosaicConfig, n_params: int | None = None,
                       shown: str | None = None) -> Path:
    """The model card of an imported release: its source repo and class, licence, architecture, preprocessing (with
    the 2 x std note), head and labels, and how to use it with the kit."""
    from mosaic_core.cards import facts_list, write_model_card

    src, head = config.source, config.head_config()
    shown = shown or str(folder)
    enc = config.to_encoder_config()
    arch = {"type": "ViT-{} over {p} x {p} spectrogram patches: LayerNorm after the patch projection, pre-norm on "
                    "[CLS; patches], learned positions [1, 1 + N, D] with a CLS slot".format(
                        "B/16" if config.size == "base" else config.size, p=config.patch_size),
            "parameters": f"{n_params / 1e6:.1f} M" if n_params else None,
            "embed_dim / depth / heads": f"{config.embed_dim} / {config.depth} / {config.num_heads}",
            "outputs": ("tokens un-normalised" if not enc.token_norm else "tokens after the final LayerNorm") +
                       f"; pooled feature = {'fc_norm of ' if enc.fc_norm else ''}the mean over "
                       f"{'CLS and patch tokens' if enc.pooling == 'all' else enc.pooling} "
                       "(the reference's semantics for this class)",
            "head": (f"{head.kind}, {head.num_labels} labels, "
                     f"{'sigmoid per label' if head.multi_label else 'softmax'} scores") if head else "none (encoder)",
            "contrastive projector": "kept (projector.* in model.safetensors)" if getattr(config, "projector", None)
                                     else None}
    pre = preprocessing_facts(preprocessing_constants(config))
    pre["normalisation"] += (" - the reference's training pipeline divided by 2 x std; the preprocess() shipped in "
                             "the Hub repo divides by std alone, which feeds the weights inputs twice as large")
    if src.get("trained_frames") and src["trained_frames"] != config.target_frames:
        pre["input length"] += (f"; trained at {src['trained_frames']} frames, the learned positions resized as the "
                                "reference's loaders do")
    use = f"""```bash
mosaic-alm tag clip.wav --model {shown}                     # {'top labels' if head else 'needs a classifier'}
mosaic-alm eval-encoder --config configs/eval/encoder_embedded.yaml "encoders={{paper: {shown}}}"
mosaic-alm train-alm --config configs/alm/stage1.yaml audio.encoder={shown}
```
```python
from encoder.hf import AudioMosaicModel{', AudioMosaicForAudioClassification' if head else ''}
encoder = AudioMosaicModel.from_pretrained("{shown}")      # the encoder of any imported class
```"""
    meta = {"library_name": "mosaic-alm", "license": "mit", "pipeline_tag": "audio-classification" if head else
            "feature-extraction", "tags": ["audio", "audiomosaic", "mosaic-alm", "imported"]}
    source = {"repository": src.get("repo"), "read from": src.get("path"), "reference class": src.get("class"),
              "licence": "MIT (the AudioMosaic code and release; see the source repo's card for its weights' terms)",
              "reference code": src.get("reference"), "converted by": "mosaic-alm import (encoder/release.py), "
              "checked against the reference code on golden fixtures (tests/test_release.py)"}
    return write_model_card(folder, title=f"AudioMosaic {src.get('repo') or 'checkpoint'} (imported)",
                            summary=f"The paper's released {src.get('class')} converted to a mosaic-alm folder. "
                                    f"{src.get('what') or ''}",
                            sections={"Source": facts_list(source), "Architecture": facts_list(arch),
                                      "Preprocessing": facts_list(pre), "Use": use,
                                      "Intended use and limits": "As released by the authors: trained on AudioSet / "
                                      "ESC-50 / Speech Commands / EnvSDD as named above; 16 kHz mono; one window of "
                                      "the input length at a time (longer audio is scored in windows)."},
                            metadata=meta)


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
    AutoModelForAudioClassification.register(AudioMosaicConfig, AudioMosaicForAudioClassification, exist_ok=True)
    AutoFeatureExtractor.register(AudioMosaicConfig, AudioMosaicFeatureExtractor, exist_ok=True)


def load_release(spec, cls=None, **options):
    """One of the paper's released checkpoints as a kit model, in memory: ``cls`` AudioMosaicModel (the encoder of
    any class), AudioMosaicForAudioClassification (classifiers and probes) or None (whichever fits). ``options``:
    :func:`encoder.release.convert`'s (pooling, multi_label, keep_projector, probe_layer, num_heads, target_frames,
    preset, model_class). The converted state must fill the model exactly (strict)."""
    from .release import ReleaseError, convert, read_release

    options = {k: v for k, v in options.items() if k in ("pooling", "multi_label", "keep_projector", "probe_layer",
                                                         "num_heads", "target_frames", "preset", "model_class")}
    conv = convert(read_release(spec), **options)
    config = release_config(conv)
    if cls is None:
        cls = AudioMosaicForAudioClassification if conv["head"] else AudioMosaicModel
    if cls is AudioMosaicForAudioClassification and conv["head"] is None:
        raise ReleaseError(f"{spec}: a {conv['model_class']} has no classification head (use it as an encoder)")
    model = cls(config)
    want = model.state_dict()
    state = {k: v for k, v in conv["state"].items() if k in want or not k.startswith(("head.", "projector."))}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ReleaseError(f"{spec}: {conv['model_class']} does not convert cleanly: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ReleaseError(f"{spec}: shape mismatch for {bad[0]}: {tuple(state[bad[0]].shape)} vs "
                           f"{tuple(want[bad[0]].shape)}")
    model.load_state_dict(state, strict=True)
    model.release = conv  # what was converted (projector, LTU audio projection, dropped keys)
    return model.eval()


def release_config(conv: dict) -> AudioMosaicConfig:
    from .release import REFERENCE, RELEASES

    repo = conv.get("repo")
    what = RELEASES.get(str(repo).split("/")[-1], (None, None, None))[2]
    extra = {"source": {"repo": repo, "path": conv["source"], "class": conv["model_class"], "reference": REFERENCE,
                        "what": what, "trained_frames": conv["trained_frames"], "preset": conv["preset"],
                        "dropped": conv["dropped"]}}
    if conv["head"] is not None:
        extra["head"] = dataclasses.asdict(conv["head"])
        extra["id2label"] = {i: name for i, name in enumerate(conv["labels"])}
    if conv["projector"]:
        extra["projector"] = conv["projector"]
    return AudioMosaicConfig(**dataclasses.asdict(conv["encoder"]), **extra)


def import_release(spec, out: str | Path, **options) -> Path:
    """Write one of the paper's released checkpoints as a kit folder every command accepts: ``model.safetensors``
    (encoder, head, kept projector), ``config.json``, the feature extractor (its preprocessing constants), a model
    card naming the source, and for the LTU repo ``audio_projector.safetensors`` + ``audio_projector.json`` (the
    kit projector kind ``ltu``)."""
    import json
    import shutil
    import tempfile

    from safetensors.torch import save_file

    model = load_release(spec, None, **options)
    conv = model.release
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        state = dict(model.state_dict())
        state.update({k: v for k, v in conv["state"].items() if k.startswith("projector.") and conv["projector"]})
        model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        AudioMosaicFeatureExtractor.from_model_config(model.config).save_pretrained(str(tmp))
        if conv["audio_projector"] is not None:
            proj = {k.split(".", 1)[-1]: v.contiguous() for k, v in conv["audio_projector"].items()}
            save_file({"linear.weight": proj["weight"], "linear.bias": proj["bias"]},
                      str(tmp / "audio_projector.safetensors"))
            (tmp / "audio_projector.json").write_text(json.dumps(
                {"kind": "ltu", "pool": 2, "scale": 0.02, "standardize": False, "in_dim": proj["weight"].shape[1],
                 "out_dim": proj["weight"].shape[0], "note": "LTU stage-4 audio projection: tokens viewed as "
                 "[8, N/8] and averaged over the 8, time pairs averaged, divided by 50, LayerNorm without affine, "
                 "Linear to the LLaMA width"}, indent=2))
        write_encoder_card(tmp, model.config, n_params=sum(v.numel() for v in state.values()), shown=str(out))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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
    from .release import is_release

    if is_release(spec):  # the paper's released checkpoints, converted in memory
        return load_release(spec, cls=AudioMosaicModel, **overrides)
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder {spec!r}: not a folder written by pretraining (config.json + "
                          f"model.safetensors, e.g. runs/pretrain-tiny/encoder), not a released AudioMosaic "
                          f"checkpoint and not random[:<size>]")
    from safetensors import SafetensorError

    from .checkpoint import CheckpointError, require_safetensors

    require_safetensors(path / "model.safetensors", f"encoder {spec!r}")
    try:
        return AudioMosaicModel.from_pretrained(str(path), use_safetensors=True, **overrides)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"encoder {spec!r}: cannot read its weights: {exc}") from None


__all__ = ["AudioMosaicConfig", "AudioMosaicModel", "AudioMosaicForAudioClassification", "AudioMosaicFeatureExtractor",
           "AudioError", "resolve_encoder", "load_release", "import_release", "release_config",
           "preprocessing_constants", "preprocessing_facts", "write_encoder_card", "save_encoder_folder"]
