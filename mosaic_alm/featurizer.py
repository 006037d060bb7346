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

Clips in WebDataset shards (:mod:`encoder.data.shards`) have no file: :meth:`AudioFeaturizer.precompute_shards`
streams the shards once (split over ranks), caches the tokens of the clips named by manifest id under the key of the
shard's FLAC member bytes (:func:`clip_key`, the same kind of key a file gets), and :meth:`AudioFeaturizer.alias`
then lets a name (an instruction record's ``audio_path``) stand for such a clip, so ``tokens``/``inputs`` serve it
from the cache without the file.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from encoder.data.shards import (
    FbankTransform,
    ShardDataset,
    ShardError,
    decode_record,
    resolve_shards,
)
from encoder.features import AudioError, FbankConfig, file_to_input, waveform_to_input
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


def clip_key(data: bytes) -> str:
    """The token-cache key of a clip's encoded bytes (a file's, or a shard's FLAC member): 32 hex digits of SHA-256."""
    return hashlib.sha256(data).hexdigest()[:32]


class _ShardTokenDecoder:
    """``ShardDataset`` decoder of the token pass: a clip whose id is not wanted is passed over undecoded
    (``{"id"}``), one whose FLAC bytes are cached already gives ``{"id", "key"}``, any other ``{"id", "key",
    "input"}`` (the normalised spectrogram, as ``AudioFeaturizer.spectrogram`` makes from the source file). A bad
    record raises ``AudioError`` (the dataset skips and quarantines it). A class, so loader workers can unpickle it."""

    def __init__(self, wanted: set[str], cached: set[str], fbank: FbankConfig):
        self.wanted, self.cached, self.fbank = wanted, cached, fbank

    def __call__(self, parts: dict[str, bytes], source: str, max_seconds: float) -> dict:
        try:
            rec = json.loads(parts["json"].decode("utf-8"))
            rid = rec.get("id") if isinstance(rec, dict) else None
        except (KeyError, UnicodeDecodeError, ValueError):
            rid = None  # decode_record names what is wrong with it
        if rid is not None and str(rid) not in self.wanted:
            return {"id": rid}
        key = clip_key(parts["flac"]) if "flac" in parts else None
        if rid is not None and key in self.cached:
            return {"id": rid, "key": key}
        sample = decode_record(parts, source, max_seconds)
        return {"id": sample["id"], "key": key, "input": FbankTransform(self.fbank)(sample)["input"]}


def _as_is(sample):
    return sample


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
        self._alias: dict[str, str] = {}  # a name (e.g. a record's audio_path) -> the key of a clip cached from shards
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
        if str(audio) in self._alias:
            return self._alias[str(audio)]
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
        lost = next((a for _, a in missing if str(a) in self._alias), None)
        if lost is not None:  # its audio was in a shard; there is no file to encode again
            raise AudioError(lost, f"its tokens (read from shards) are not in the token cache {self.cache_dir}; every "
                             "rank must see the same cache folder ($MOSAIC_ALM_TOKEN_CACHE); run again to re-read them")
        if not missing:
            return 0
        bar = progress_bar(total=len(missing), desc=f"{desc} ({len(missing)} clips to encode)", unit="clip",
                           disable=not progress)
        self._encode_store(((k, self.spectrogram(a)) for k, a in missing), batch_size, shard_size, bar)
        bar.close()
        return len(missing)

    def _encode_store(self, items: Iterable[tuple[str, torch.Tensor]], batch_size: int, shard_size: int,
                      bar=None) -> int:
        """Encode (clip key, spectrogram) pairs in batches into memory, writing a cache shard every ``shard_size``
        clips; returns the number encoded."""
        items, pending, n = iter(items), {}, 0
        while chunk := list(itertools.islice(items, batch_size)):
            toks = self.encode(torch.stack([x for _, x in chunk]).to(self.device))
            for (k, _), t in zip(chunk, toks):
                pending[k] = self._cache[k] = t.to("cpu").clone()
            if len(pending) >= shard_size:
                self._write(pending)
                pending = {}
            n += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if pending:
            self._write(pending)
        return n

    def alias(self, name: str | os.PathLike, key: str) -> None:
        """Let ``name`` (as records and batches carry it, e.g. an instruction's ``audio_path``) stand for the cached
        clip ``key`` (from :meth:`precompute_shards`): ``tokens``/``inputs`` then serve it without reading a file."""
        self._alias[str(name)] = key

    def precompute_shards(self, source, ids: Iterable[str], *, rank: int = 0, world: int = 1, num_workers: int = 0,
                          quarantine: str | os.PathLike | None = None,
                          gather: Callable[[object], list] = lambda x: [x], batch_size: int = 32,
                          shard_size: int = 512, desc: str = "audio tokens from shards",
                          progress: bool = True) -> tuple[dict[str, str], list[dict], int]:
        """One streaming pass over the WebDataset shards named by ``source`` (a folder written by ``write_shards``,
        a glob or a brace pattern) that caches the tokens of every clip whose manifest id (its JSON record's ``id``)
        is in ``ids``. Rank ``rank`` of ``world`` reads its share of the shards (as ``ShardDataset`` deals them; ranks
        beyond the number of shards read none) with ``num_workers`` loader workers; clips not named, or already
        cached, are not decoded. ``gather`` all-gathers a picklable object over the ranks (a list, one per rank);
        every rank must see the same cache folder.

        Returns, over all ranks: ``keys`` (clip id -> clip key, for :meth:`alias`), the bad records (skipped,
        appended to ``quarantine`` as JSON lines: ``shard``, ``key``, ``id``, ``error``) and the clips this rank
        encoded. Raises ``ShardError`` when one id names two different clips."""
        if not self.use_cache:
            raise ValueError("precompute_shards fills the token cache: it needs a frozen encoder with the cache on")
        paths = resolve_shards(source)
        readers = min(world, len(paths))
        keys: dict[str, str] = {}
        bad: list[dict] = []
        encoded = 0

        def keep(i: str, k: str, into: dict[str, str]) -> None:
            if into.setdefault(i, k) != k:
                raise ShardError(f"{source}: clip id {i!r} is in the shards twice, with different audio")

        if rank < readers:
            self._scan()
            decoder = _ShardTokenDecoder({str(i) for i in ids}, set(self._index) | set(self._cache), self.fbank)
            ds = ShardDataset(paths, rank=rank, world=readers, shuffle_buffer=0, shuffle_shards=False,
                              max_seconds=self.fbank.max_seconds, quarantine=quarantine, decoder=decoder)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                                                 persistent_workers=False)
            counts = ds.clips_per_rank()
            bar = progress_bar(total=counts[rank] if counts else None, desc=desc, unit="clip", disable=not progress)

            def fresh():
                for sample in loader:
                    bad.extend(ds.advance(sample))
                    bar.update(1)
                    if "key" in sample:
                        keep(str(sample["id"]), sample["key"], keys)
                        if "input" in sample:
                            yield sample["key"], sample["input"]

            encoded = self._encode_store(fresh(), batch_size, shard_size)
            bar.close()
        merged: dict[str, str] = {}
        all_bad: list[dict] = []
        for rank_keys, rank_bad in gather((keys, bad)):
            for i, k in rank_keys.items():
                keep(i, k, merged)
            all_bad += rank_bad
        return merged, all_bad, encoded

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
