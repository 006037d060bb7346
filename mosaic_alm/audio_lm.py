"""The audio-language model: frozen AudioMosaic encoder + projector + any Hugging Face causal LM (LoRA via peft).

Text is laid out by the tokenizer's own chat template (see :mod:`mosaic_alm.data`). The prompt holds ``n_audio``
*slots* -- token positions whose word embeddings are replaced by the projected audio embeddings. With
``audio.position: placeholder`` the slots sit where the ``<audio>`` placeholder is in the user turn (it is put in
front of the question when the question has none); with ``prepend`` they come before the whole templated text.
``audio.enabled: false`` is the no-audio baseline: the same LLM (+ LoRA) sees only the text.

The model takes tensors only: audio arrives as frozen-encoder tokens (or spectrograms when the encoder trains) made
by :class:`mosaic_alm.featurizer.AudioFeaturizer` on the data side.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig

from encoder.hf import resolve_encoder
from mosaic_core.config import ConfigError, NonNegInt, from_dict

from .llm import LLMConfig, LoRAConfig, add_lora, load_llm
from .projector import AudioProjector, AudioProjectorConfig, num_audio_tokens

log = logging.getLogger(__name__)


@dataclass
class AudioConfig:
    enabled: bool = True  # false: the no-audio baseline (no encoder, no projector, no audio slots)
    encoder: str = "random:tiny"  # an AudioMosaic HF folder, or "random:<size>" for a randomly initialised encoder
    # every clip is padded/cropped to this many frames (256 -> 8 audio tokens); 0: the encoder's own input length
    # (what it was trained at: 1,024 for the paper's AudioSet encoders, whose learned positions are resized otherwise)
    target_frames: NonNegInt = 256
    position: Literal["placeholder", "prepend"] = "placeholder"
    placeholder: str = "<audio>"
    cache_features: bool = True  # cache frozen-encoder tokens per clip (on disk, see mosaic_alm.featurizer)

    def __post_init__(self):
        if self.position not in ("placeholder", "prepend"):
            raise ValueError(f"audio.position must be placeholder or prepend, got {self.position!r}")
        if self.target_frames < 0 or self.target_frames % 32:
            raise ValueError(f"audio.target_frames must be a multiple of 32 (16-frame patches, pooled by 2), "
                             f"got {self.target_frames}")


@dataclass
class TrainableConfig:
    projector: bool = True
    lora: bool = False
    encoder: bool = False


@dataclass
class PromptConfig:
    system: str | None = None  # None: the chat template's own default system turn (if any)
    loss_on: Literal["answer", "all"] = "answer"  # all: every text token (audio slots never carry loss)

    def __post_init__(self):
        if self.loss_on not in ("answer", "all"):
            raise ValueError(f"prompt.loss_on must be answer or all, got {self.loss_on!r}")


@dataclass
class ALMConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    projector: AudioProjectorConfig = field(default_factory=AudioProjectorConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


MODEL_SECTIONS = {"llm": LLMConfig, "lora": LoRAConfig, "audio": AudioConfig, "projector": AudioProjectorConfig,
                  "trainable": TrainableConfig, "prompt": PromptConfig}


def alm_config_from_dict(cfg: dict) -> ALMConfig:
    return ALMConfig(**{k: from_dict(cls, cfg.get(k), k) for k, cls in MODEL_SECTIONS.items()})


class ALMArtifactConfig(PretrainedConfig):
    """The ``config.json`` of an ALM artifact, so that transformers' ``AutoConfig`` / ``AutoModel`` recognise the
    folder (``model_type: mosaic-alm``, registered by ``register_alm_auto_classes``, which loading and saving a
    folder call; no ``trust_remote_code``). It
    records the model sections, the encoder's preprocessing constants and the audio token count; the loader reads
    the artifact's ``alm_config.yaml``."""

    model_type = "mosaic-alm"

    def __init__(self, alm: dict | None = None, preprocessing: dict | None = None, n_audio_tokens: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.alm = alm or {}
        self.preprocessing = preprocessing or {}
        self.n_audio_tokens = n_audio_tokens


class AudioLanguageModel(nn.Module):
    config_class = ALMArtifactConfig  # what AutoModel.register checks

    def __init__(self, cfg: ALMConfig, llm, tokenizer, encoder=None):
        super().__init__()
        self.cfg = cfg
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoder = encoder if cfg.audio.enabled else None
        self.projector = None
        if cfg.audio.enabled:
            if encoder is None:
                raise ConfigError("audio.enabled is true but no encoder was given")
            if not cfg.audio.target_frames:  # 0: the encoder's own input length
                frames = int(encoder.config.target_frames)
                if frames % 32:
                    raise ConfigError(f"audio.target_frames=0: the encoder's input length {frames} is not a multiple "
                                      "of 32; set audio.target_frames")
                cfg.audio.target_frames = frames
            emb = self.base_llm().get_input_embeddings().weight
            rms = float(emb.detach().float().pow(2).mean().sqrt())
            self.projector = AudioProjector(encoder.config.embed_dim, emb.shape[1],
                                            n_freq=encoder.config.num_mel_bins // encoder.config.patch_size,
                                            cfg=cfg.projector, target_rms=rms, n_audio=self.n_audio_tokens)
            self.projector.to(emb.device)

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, cfg: ALMConfig, device="cpu", encoder=None, llm_and_tokenizer=None) -> "AudioLanguageModel":
        llm, tok = llm_and_tokenizer or load_llm(cfg.llm, device)
        if cfg.lora.enabled:
            llm = add_lora(llm, cfg.lora)
        if cfg.audio.enabled and encoder is None:
            encoder = resolve_encoder(cfg.audio.encoder).to(device)
        return cls(cfg, llm, tok, encoder)

    def base_llm(self):
        """The ``transformers`` model under any peft wrapper."""
        from peft import PeftModel

        return self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm

    @property
    def device(self) -> torch.device:
        return self.base_llm().get_input_embeddings().weight.device

    @property
    def n_audio_tokens(self) -> int:
        if not self.cfg.audio.enabled:
            return 0
        return num_audio_tokens(self.cfg.audio.target_frames, self.encoder.config.patch_size, self.cfg.projector.pool)

    def fbank_config(self):
        return self.encoder.config.fbank_config(self.cfg.audio.target_frames)

    # ------------------------------------------------------------------------------------------- trainability
    def apply_trainable(self, verbose: bool = True) -> dict:
        """Set ``requires_grad`` from ``cfg.trainable`` (checked), return the counts per module (logged at INFO
        with ``verbose``; :func:`format_parameter_counts` renders them)."""
        t = self.cfg.trainable
        if not self.cfg.audio.enabled and (t.projector or t.encoder):
            raise ConfigError("trainable.projector/encoder must be false when audio.enabled is false")
        if t.lora and not self.cfg.lora.enabled:
            raise ConfigError("trainable.lora is true but lora.enabled is false")
        for p in self.parameters():
            p.requires_grad_(False)
        if self.projector is not None and t.projector:
            for p in self.projector.parameters():
                p.requires_grad_(True)
        if self.encoder is not None and t.encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(True)
        if t.lora:
            for n, p in self.llm.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
        counts = self.parameter_counts()
        if not any(c["trainable"] for c in counts.values()):
            raise ConfigError("nothing to train: trainable.projector, .lora and .encoder are all false")
        # the encoder runs in eval mode (no dropout/drop-path) unless it trains
        if self.encoder is not None:
            self.encoder.train(t.encoder and self.training)
        if verbose:
            log.info("%s", format_parameter_counts(counts))
        return counts

    def parameter_counts(self) -> dict:
        def count(params):
            params = list(params)
            return {"trainable": sum(p.numel() for p in params if p.requires_grad),
                    "total": sum(p.numel() for p in params)}

        lora = [p for n, p in self.llm.named_parameters() if "lora_" in n]
        llm = [p for n, p in self.llm.named_parameters() if "lora_" not in n]
        return {"encoder": count(self.encoder.parameters() if self.encoder is not None else []),
                "projector": count(self.projector.parameters() if self.projector is not None else []),
                "lora": count(lora), "llm": count(llm)}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.cfg.trainable.encoder:
            self.encoder.eval()
        return self

    # ---------------------------------------------------------------------------------------------- audio side
    def encode_spectrograms(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, T, 128] -> encoder tokens [B, n_time * 8, D] (time-major); gradients only if the encoder trains."""
        with torch.set_grad_enabled(self.cfg.trainable.encoder and torch.is_grad_enabled()):
            return self.encoder.encoder.forward_features(spec.to(self.device))["tokens"]

    @torch.no_grad()
    def calibrate_projector(self, audio_tokens: torch.Tensor) -> int:
        """Measure the projector's feature statistics on encoder tokens [N, K, D] of training clips; returns N."""
        if self.projector is None:
            raise ConfigError("calibrate_projector: this model has no audio projector (audio.enabled is false)")
        pooled = self.projector.features(audio_tokens.float().to(self.device))
        self.projector.set_feature_stats(pooled, len(audio_tokens))
        return len(audio_tokens)

    # ----------------------------------------------------------------------------------------------- LLM side
    def embed(self, input_ids, audio_mask=None, audio_tokens=None, spectrograms=None, copy_slots=None,
              copy_weight=0.0) -> torch.Tensor:
        """Word embeddings with the audio slots (``audio_mask``) replaced by projected audio embeddings of
        ``audio_tokens`` (frozen-encoder tokens from :class:`~mosaic_alm.featurizer.AudioFeaturizer`) or of
        ``spectrograms`` run through the encoder here (when it trains). Training's copy warm-up
        (:mod:`mosaic_alm.align`): with ``copy_slots`` [B, H] and ``copy_weight`` alpha (a number, or one per row
        [B]) each row's slots are ``alpha * copy_slots + (1 - alpha) * projected``."""
        emb = self.base_llm().get_input_embeddings()(input_ids.to(self.device))
        if not self.cfg.audio.enabled:
            return emb
        if audio_tokens is None:
            if spectrograms is None:
                raise ValueError("an audio model needs audio_tokens or spectrograms (see AudioFeaturizer.inputs)")
            audio_tokens = self.encode_spectrograms(spectrograms)
        proj = self.projector(audio_tokens.to(self.device)).to(emb.dtype)  # [B, A, H]
        if copy_slots is not None:
            w = torch.as_tensor(copy_weight, dtype=proj.dtype, device=proj.device).reshape(-1, 1, 1)
            proj = proj + w * (copy_slots.to(self.device, proj.dtype)[:, None, :] - proj)
        mask = audio_mask.to(self.device)
        if proj.shape[0] != emb.shape[0] or (mask.sum(1) != proj.shape[1]).any():
            raise ValueError(f"each sequence needs exactly {proj.shape[1]} audio slots, got {mask.sum(1).tolist()}")
        return emb.masked_scatter(mask.unsqueeze(-1), proj)

    def forward(self, input_ids, attention_mask, labels=None, audio_mask=None, audio_tokens=None, spectrograms=None,
                copy_slots=None, copy_weight=0.0, **_):
        """Without labels: the LLM's output (full logits). With labels: the mean next-token cross-entropy over the
        labelled positions, computing the vocabulary projection ONLY at those positions (for answer-only labels
        that is a few tokens per row instead of the whole sequence: ~20% less compute for SmolLM2's 49k vocab).
        ``logits`` then holds the logits of the labelled positions, flattened [n_labelled, vocab]."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        emb = self.embed(input_ids, audio_mask, audio_tokens, spectrograms, copy_slots, copy_weight)
        am = attention_mask.to(self.device)
        if labels is None:
            return self.llm(inputs_embeds=emb, attention_mask=am, use_cache=False)
        base = self.base_llm()  # peft injects LoRA into the base model's modules, so this path runs the adapter
        hidden = base.model(inputs_embeds=emb, attention_mask=am, use_cache=False).last_hidden_state
        target = labels[:, 1:].to(self.device)
        keep = target != -100
        logits = base.lm_head(hidden[:, :-1][keep]).float()
        loss = torch.nn.functional.cross_entropy(logits, target[keep])
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, audio_mask=None, audio_tokens=None, spectrograms=None,
                 max_new_tokens: int = 32, **gen_kwargs) -> torch.Tensor:
        """Greedy by default; inputs must be LEFT-padded. Returns only the new token ids [B, <= max_new_tokens]."""
        emb = self.embed(input_ids, audio_mask, audio_tokens, spectrograms)
        attention_mask = attention_mask.to(self.device)
        # explicit positions so a left-padded row sees the same positions as it would alone
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_token_ids())
        kwargs.update(gen_kwargs)
        return self.llm.generate(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                                 **kwargs)

    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = self.base_llm().generation_config.eos_token_id
        if gen_eos is not None:
            ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return sorted(i for i in ids if i is not None)


def format_parameter_counts(counts: dict) -> str:
    """``apply_trainable``'s counts as lines: ``trainable parameters:`` then ``  module  trainable / total``."""
    return "\n".join(["trainable parameters:"] + [f"  {name:<10} {c['trainable']:>12,} / {c['total']:>12,}"
                                                   for name, c in counts.items()])

__all__ = ["ALMArtifactConfig", "ALMConfig", "AudioConfig", "TrainableConfig", "PromptConfig", "AudioLanguageModel",
           "alm_config_from_dict", "format_parameter_counts", "MODEL_SECTIONS"]
