"""The audio side of an ALM batch, outside the model: a clip (file path or 16 kHz waveform) -> normalised fbank
spectrogram -> frozen-encoder tokens, with a per-clip cache, as LLaVA-style processors hand their model tensors.

    feats = AudioFeaturizer.for_model(model)
    out = model(**text_batch, **feats.inputs(paths))    # audio_tokens (frozen encoder) or spectrograms (trained)

While the encoder is frozen (the default), tokens are cached per clip, keyed by the resolved path, its size and
modification time and the preprocessing (target frames), so a clip asked several questions, or seen in several
epochs, is decoded and encoded once. With ``trainable.encoder`` the featurizer hands the model spectrograms and the
encoder runs inside the model's graph.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from encoder.features import AudioError, file_to_input, waveform_to_input


class AudioFeaturizer:
    def __init__(self, encoder, target_frames: int, *, frozen: bool = True, cache: bool = True,
                 device: torch.device | str = "cpu"):
        self.encoder = encoder  # an AudioMosaicModel (Hugging Face class)
        self.fbank = encoder.config.fbank_config(target_frames)
        self.target_frames = target_frames
        self.frozen = frozen
        self.use_cache = cache and frozen
        self.device = torch.device(device)
        self._cache: dict[tuple, torch.Tensor] = {}
        self.hits = 0

    @classmethod
    def for_model(cls, model) -> "AudioFeaturizer | None":
        """The featurizer of an AudioLanguageModel (None for the no-audio baseline); one per model, kept on it."""
        if not model.cfg.audio.enabled:
            return None
        feats = getattr(model, "_featurizer", None)
        if feats is None or feats.encoder is not model.encoder:
            feats = cls(model.encoder, model.cfg.audio.target_frames, frozen=not model.cfg.trainable.encoder,
                        cache=model.cfg.audio.cache_features, device=model.device)
            model._featurizer = feats
        return feats

    # ------------------------------------------------------------------------------------------------ pieces
    def spectrogram(self, audio) -> torch.Tensor:
        """A file path or a 1-D 16 kHz waveform -> normalised [target_frames, num_mel_bins]."""
        if isinstance(audio, (str, os.PathLike)):
            return file_to_input(audio, self.fbank)
        return waveform_to_input(torch.as_tensor(audio), self.fbank)

    def spectrograms(self, audios: Sequence) -> torch.Tensor:
        return torch.stack([self.spectrogram(a) for a in audios]).to(self.device)

    @torch.no_grad()
    def encode(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """[B, T, F] -> frozen encoder tokens [B, n_time * n_freq, D] (time-major)."""
        return self.encoder.encoder.forward_features(spectrograms.to(self.device))["tokens"]

    def _key(self, audio) -> tuple | None:
        if not self.use_cache or not isinstance(audio, (str, os.PathLike)):
            return None
        p = Path(audio).resolve()
        try:
            st = p.stat()
        except OSError as exc:
            raise AudioError(audio, "file does not exist" if isinstance(exc, FileNotFoundError) else
                             f"cannot read it ({exc.strerror})") from None
        return (str(p), st.st_size, st.st_mtime_ns, self.target_frames)

    def tokens(self, audios: Sequence, batch_size: int = 32) -> torch.Tensor:
        """Frozen-encoder tokens [B, N, D] for paths / waveforms, encoding only clips not in the cache."""
        audios = list(audios)
        keys = [self._key(a) for a in audios]
        missing = [i for i, k in enumerate(keys) if k is None or k not in self._cache]
        self.hits += len(audios) - len(missing)
        fresh: dict[int, torch.Tensor] = {}
        for s in range(0, len(missing), batch_size):
            idx = missing[s:s + batch_size]
            toks = self.encode(self.spectrograms([audios[i] for i in idx]))
            for j, i in enumerate(idx):
                fresh[i] = toks[j]
                if keys[i] is not None:
                    self._cache[keys[i]] = toks[j]
        return torch.stack([fresh[i] if i in fresh else self._cache[keys[i]] for i in range(len(audios))])

    def inputs(self, audios: Sequence | None) -> dict[str, torch.Tensor]:
        """The audio keyword arguments of the model's ``forward``/``generate`` for a batch of clips."""
        if audios is None:
            return {}
        if self.frozen:
            return {"audio_tokens": self.tokens(audios)}
        return {"spectrograms": self.spectrograms(audios)}

    def clear(self) -> None:
        self._cache.clear()
