"""The audio side of an ALM batch, outside the model: a clip (file path or 16 kHz waveform) -> normalised fbank
spectrogram -> frozen-encoder tokens, cached on disk, as LLaVA-style processors hand their model tensors.

    feats = AudioFeaturizer.for_model(model)
    feats.precompute(all_paths)                         # one batched pass (tqdm) over clips not yet cached
    out = model(**text_batch, **feats.inputs(paths))    # audio_tokens (frozen encoder) or spectrograms (trained)

While the encoder is frozen (the default), its tokens for a clip file are computed once and kept on disk, so every
ALM stage, every variant of the ablation, evaluation and ``ask`` reuse them and a training step costs only the LLM.
The cache folder is ``{root}/{weights}-{preprocessing}/`` under :func:`token_cache_root`:

* ``weights``: SHA-256 of the encoder's tensors (name, dtype, shape, bytes, sorted by name) and its architecture
  config -- the checksum of its safetensors content, also for a random or in-memory encoder;
* ``preprocessing``: SHA-256 of the fbank config (target frames, normalisation, ...) and the precision (bf16
  autocast, :func:`mosaic_core.runtime.use_bf16` with ``auto``). The tokens are the encoder's output before the
  projector's pooling, so a pooling change reuses them;
* a clip: SHA-256 of the file's bytes (memoised per path, size and mtime), so a rewritten but identical file (the
  instruction builder rewrites its mixtures) still hits.

Tokens are stored as safetensors shards (``<hash>.safetensors``, tensor name = clip hash) written atomically; several
processes may fill one folder (each writes its own shards). A shard that does not load as safetensors or holds a
tensor of the wrong shape is refused (never unpickled), deleted, and its clips are encoded again.
With ``trainable.encoder`` the featurizer hands the model spectrograms and the encoder runs inside the model's graph.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from encoder.features import AudioError, file_to_input, waveform_to_input
from mosaic_core.io import atomic_write_json, atomic_write_with, sha256_file
from mosaic_core.progress import progress_bar
from mosaic_core.runtime import autocast, use_bf16

from .llm import llm_cache_dir

log = logging.getLogger(__name__)
# config keys that do not change what the frozen encoder computes for a spectrogram (bookkeeping, training-only)
_NOT_IN_KEY = {"transformers_version", "_name_or_path", "architectures", "dtype", "drop_path",
               "checkpoint_fraction", "target_frames", "output_hidden_states", "output_attentions", "return_dict"}


def token_cache_root() -> Path:
    """``$MOSAIC_ALM_TOKEN_CACHE``, else ``$MOSAIC_ALM_CACHE/audio-tokens`` (default ``~/.cache/mosaic-alm``)."""
    env = os.environ.get("MOSAIC_ALM_TOKEN_CACHE")
    return Path(env) if env else llm_cache_dir() / "audio-tokens"


def encoder_checksum(encoder) -> str:
    """SHA-256 over an encoder's architecture config and its tensors (what its safetensors file holds)."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in encoder.config.to_dict().items() if k not in _NOT_IN_KEY}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class AudioFeaturizer:
    def __init__(self, encoder, target_frames: int, *, frozen: bool = True, cache: bool = True,
                 device: torch.device | str = "cpu", precision: str = "auto",
                 cache_dir: str | os.PathLike | None = None):
        self.encoder = encoder  # an AudioMosaicModel (Hugging Face class)
        self.fbank = encoder.config.fbank_config(target_frames)
        self.target_frames = target_frames
        self.frozen = frozen
        self.use_cache = cache and frozen
        self.device = torch.device(device)
        self.bf16 = use_bf16(precision, self.device)
        self._root = Path(cache_dir) if cache_dir is not None else None
        self._dir: Path | None = None  # resolved lazily (hashing the weights costs a moment)
        self._cache: dict[str, torch.Tensor] = {}  # clip hash -> tokens (as stored)
        self._index: dict[str, Path] = {}  # clip hash -> shard on disk
        self._scanned: set[Path] = set()
        self._clip_hash: dict[tuple, str] = {}
        c = encoder.config
        self._shape = ((target_frames // c.patch_size) * (c.num_mel_bins // c.patch_size), c.embed_dim)
        self.hits = 0  # clips served from the cache (memory or disk)
        self.encoded = 0  # clips run through the encoder

    @classmethod
    def for_model(cls, model) -> AudioFeaturizer | None:
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
        """[B, T, F] -> frozen encoder tokens [B, n_time * n_freq, D] (time-major), under bf16 autocast if chosen."""
        self.encoded += len(spectrograms)
        with autocast(self.bf16, self.device):
            return self.encoder.encoder.forward_features(spectrograms.to(self.device))["tokens"]

    # ------------------------------------------------------------------------------------------------ cache
    @property
    def cache_dir(self) -> Path:
        """This encoder's and preprocessing's folder of token shards."""
        if self._dir is None:
            prep = {"fbank": asdict(self.fbank), "bf16": self.bf16, "tokens": "forward_features"}
            p = hashlib.sha256(json.dumps(prep, sort_keys=True).encode()).hexdigest()
            w = encoder_checksum(self.encoder)
            self._dir = (self._root or token_cache_root()) / f"{w[:16]}-{p[:12]}"
            if not (self._dir / "key.json").is_file():
                atomic_write_json(self._dir / "key.json", {"encoder_sha256": w, "preprocessing": prep})
        return self._dir

    def _key(self, audio) -> str | None:
        if not self.use_cache or not isinstance(audio, (str, os.PathLike)):
            return None
        p = Path(audio).resolve()
        try:
            st = p.stat()
        except OSError as exc:
            raise AudioError(audio, "file does not exist" if isinstance(exc, FileNotFoundError) else
                             f"cannot read it ({exc.strerror})") from None
        memo = (str(p), st.st_size, st.st_mtime_ns)
        if memo not in self._clip_hash:
            self._clip_hash[memo] = sha256_file(p)[:32]
        return self._clip_hash[memo]

    def _refuse(self, shard: Path, why: str) -> None:
        log.warning("token cache %s refused (%s); deleting it, its clips are encoded again", shard, why)
        for k in [k for k, f in self._index.items() if f == shard]:
            del self._index[k]
        shard.unlink(missing_ok=True)

    def _scan(self) -> None:
        """Index shards on disk not seen yet (another process may have written some)."""
        from safetensors import safe_open

        for shard in sorted(self.cache_dir.glob("*.safetensors")):
            if shard in self._scanned or shard.name.startswith("."):  # .name.tmp: another process is writing it
                continue
            self._scanned.add(shard)
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = list(f.keys())
            except Exception as exc:  # noqa: BLE001 -- safetensors raises its own types; a pickle is never loaded
                self._refuse(shard, f"{type(exc).__name__}: {exc}")
                continue
            for k in keys:
                self._index.setdefault(k, shard)

    def _load(self, keys: Sequence[str]) -> None:
        """Disk -> memory for the given clip hashes that are indexed."""
        from safetensors import safe_open

        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            if k in self._index:
                by_shard.setdefault(self._index[k], []).append(k)
        for shard, ks in by_shard.items():
            try:
                with safe_open(str(shard), framework="pt") as f:
                    got = {k: f.get_tensor(k) for k in ks}
                bad = next((k for k, t in got.items() if tuple(t.shape) != self._shape or not t.is_floating_point()),
                           None)
                if bad is not None:
                    raise ValueError(f"tensor {bad} has shape {tuple(got[bad].shape)} {got[bad].dtype}, "
                                     f"expected {self._shape} floating point")
            except Exception as exc:  # noqa: BLE001 -- any failure to read the shard means: rebuild it
                self._refuse(shard, f"{type(exc).__name__}: {exc}")
                continue
            self._cache.update(got)

    def _write(self, fresh: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = hashlib.sha256("".join(sorted(fresh)).encode()).hexdigest()[:24]
        shard = self.cache_dir / f"{name}.safetensors"
        tensors = {k: t.detach().to("cpu").clone().contiguous() for k, t in fresh.items()}
        atomic_write_with(shard, lambda tmp: save_file(tensors, str(tmp)))
        self._scanned.add(shard)
        for k in fresh:
            self._index.setdefault(k, shard)

    def precompute(self, audios: Sequence, batch_size: int = 32, shard_size: int = 512, desc: str = "audio tokens",
                   progress: bool = True) -> int:
        """Make sure every clip file in ``audios`` has its tokens cached: load what is on disk, encode the rest in
        batches (one bar), writing a shard every ``shard_size`` clips. Returns the number of clips encoded."""
        if not self.use_cache:
            return 0
        todo: dict[str, str | os.PathLike] = {}
        for a in audios:
            k = self._key(a)
            if k is not None and k not in self._cache:
                todo.setdefault(k, a)
        if not todo:
            return 0
        self._scan()
        self._load(list(todo))
        missing = [(k, a) for k, a in todo.items() if k not in self._cache]
        if not missing:
            return 0
        bar = progress_bar(total=len(missing), desc=f"{desc} ({len(missing)} clips to encode)", unit="clip",
                           disable=not progress)
        pending: dict[str, torch.Tensor] = {}
        for s in range(0, len(missing), batch_size):
            chunk = missing[s:s + batch_size]
            toks = self.encode(self.spectrograms([a for _, a in chunk]))
            for (k, _), t in zip(chunk, toks):
                pending[k] = self._cache[k] = t.to("cpu").clone()
            if len(pending) >= shard_size:
                self._write(pending)
                pending = {}
            bar.update(len(chunk))
        if pending:
            self._write(pending)
        bar.close()
        return len(missing)

    def tokens(self, audios: Sequence, batch_size: int = 32) -> torch.Tensor:
        """Frozen-encoder tokens [B, N, D] (float32) for paths / waveforms; clip files come from the cache
        (encoded and stored first if missing), waveforms are encoded each time."""
        audios = list(audios)
        keys = [self._key(a) for a in audios]
        encoded = self.precompute([a for a, k in zip(audios, keys) if k is not None], batch_size,
                                  progress=len(audios) > batch_size)
        self.hits += sum(k is not None for k in keys) - encoded
        out: dict[int, torch.Tensor] = {}
        loose = [i for i, k in enumerate(keys) if k is None]
        for s in range(0, len(loose), batch_size):
            idx = loose[s:s + batch_size]
            for i, t in zip(idx, self.encode(self.spectrograms([audios[i] for i in idx]))):
                out[i] = t
        return torch.stack([out[i] if k is None else self._cache[k] for i, k in enumerate(keys)]).float() \
            .to(self.device)

    def inputs(self, audios: Sequence | None) -> dict[str, torch.Tensor]:
        """The audio keyword arguments of the model's ``forward``/``generate`` for a batch of clips."""
        if audios is None:
            return {}
        if self.frozen:
            return {"audio_tokens": self.tokens(audios)}
        return {"spectrograms": self.spectrograms(audios)}

    def clear(self) -> None:
        """Forget the tokens held in memory (the disk cache stays)."""
        self._cache.clear()
