"""WebDataset tar shards for any manifest: a writer with an index, and a resumable reader split over ranks and workers.

Layout written by :func:`write_shards` (``prefix`` defaults to ``shard``)::

    out_dir/shard-000000.tar    clip k = two members "{key}.flac" (audio) and "{key}.json" (the manifest row)
    out_dir/shard-000001.tar    ...
    out_dir/index.json          shard names, clip counts, byte sizes and sha256 checksums, skipped source clips

Keys are the clip's running number (``000000000``, ...), so manifest ids with dots or slashes cannot break the
WebDataset ``{key}.{ext}`` grouping; the id lives in the JSON record. The shards are plain WebDataset tars
(``webdataset.WebDataset(urls)`` reads them) and are byte-for-byte reproducible for the same rows and audio.

Reading: :class:`ShardDataset` (an ``IterableDataset``). Split policy, per epoch:

* rank ``r`` of ``world`` owns the shards whose position in the shard list is ``≡ r (mod world)`` -- the same shards
  every epoch, so :meth:`ShardDataset.clips_per_rank` is fixed. When shards do not divide evenly (or the last shard
  is smaller) ranks hold different clip counts: a DDP trainer must stop every rank after
  ``min(clips_per_rank()) // local_batch`` steps (or all-reduce an "exhausted" flag), otherwise one rank waits
  forever in a collective. Ranks with no shard at all (``world > shards``) are refused.
* inside a rank the shards are permuted with (seed, epoch, rank) and dealt round-robin to the ``num_workers``
  data-loader workers (worker ``w`` gets permuted shards ``w, w + W, ...``); a worker with no shard yields nothing.
* each worker streams its shards through a shuffle buffer seeded by (seed, epoch, rank, worker, num_workers).

So every clip is read exactly once per epoch over all ranks x workers, and the order each rank sees (through a
``DataLoader`` with ``in_order=True``, the default) depends only on (seed, epoch, world, rank, num_workers, batch
size). Audio is decoded after the shuffle buffer, which holds raw bytes only.
"""
from __future__ import annotations

import glob as globlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mosaic_core.io import sha256_file

from ..features import AudioError, FbankConfig, prepare_waveform, read_sound, waveform_to_input
from .dataset import derive_seed

log = logging.getLogger(__name__)

FORMAT = "mosaic-alm-shards"
VERSION = 1
INDEX_NAME = "index.json"
# libsndfile subtypes FLAC stores exactly; anything else (float, 32-bit PCM, lossy codecs) is stored as 24-bit PCM.
_EXACT_FLAC = {"PCM_S8": "PCM_S8", "PCM_U8": "PCM_S8", "PCM_16": "PCM_16", "PCM_24": "PCM_24"}
_LOCAL_FIELDS = ("path", "rel_path")


class ShardError(ValueError):
    """Shards that cannot be written or found; the message is one line naming the folder, pattern or file."""


# ---------------------------------------------------------------------------------------------------------- writing
def _encode_flac(path: str, max_seconds: float) -> bytes:
    """Source audio file -> FLAC bytes. Integer PCM up to 24 bit is stored sample-exactly (all
    channels, original rate); other encodings are quantised to 24-bit PCM. Raises :class:`AudioError`."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(path, "file does not exist")
    try:
        with sf.SoundFile(path) as f:
            sr, frames, subtype = f.samplerate, f.frames, f.subtype
            if sr <= 0 or f.channels <= 0:
                raise AudioError(path, f"invalid header (sample rate {sr}, {f.channels} channels)")
            if frames > max_seconds * sr:
                raise AudioError(path, f"declares {frames / sr:.1f} s of audio, above the {max_seconds:g} s maximum")
            exact = subtype in _EXACT_FLAC  # integers are read left-aligned in int32 and written back exactly
            data = f.read(frames=int(max_seconds * sr) + 1, dtype="int32" if exact else "float64", always_2d=True)
        if data.shape[0] == 0:
            raise AudioError(path, "holds no audio samples (zero length)")
        if not exact:
            if not np.isfinite(data).all():
                raise AudioError(path, "contains NaN/inf samples")
            data = np.clip(data, -1.0, 1.0 - 2.0 ** -23)
        buf = io.BytesIO()
        sf.write(buf, data, sr, format="FLAC", subtype=_EXACT_FLAC.get(subtype, "PCM_24"))
    except AudioError:
        raise
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError, OSError) as exc:
        raise AudioError(path, f"cannot decode: {exc}") from None
    return buf.getvalue()


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _ShardFile:
    """One shard being written under a temporary name; :meth:`finish` renames it into place."""

    def __init__(self, out_dir: Path, name: str):
        import webdataset as wds

        self.final, self.tmp = out_dir / name, out_dir / f".{name}.tmp"
        self.file = open(self.tmp, "wb")
        # fixed mtime/owner: the same rows and audio give byte-identical shards (and checksums)
        self.writer = wds.TarWriter(self.file, user="mosaic", group="mosaic", mtime=0.0)
        self.clips = 0

    def add(self, key: str, flac: bytes, record: dict) -> None:
        self.writer.write({"__key__": key, "flac": flac,
                           "json": json.dumps(record, ensure_ascii=False).encode("utf-8")})
        self.clips += 1

    def finish(self) -> dict:
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        entry = {"name": self.final.name, "clips": self.clips, "bytes": self.tmp.stat().st_size,
                 "sha256": sha256_file(self.tmp)}
        os.replace(self.tmp, self.final)
        return entry

    def abort(self) -> None:
        self.writer.close()
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def write_shards(rows: Iterable[dict], out_dir: str | os.PathLike, *, shard_size: int, prefix: str = "shard",
                 max_seconds: float = 600.0, overwrite: bool = False) -> dict:
    """Write manifest ``rows`` (as returned by :func:`~encoder.data.manifest.read_manifest`) to WebDataset shards.

    Each clip becomes ``{key}.flac`` (soundfile FLAC, original sample rate and channels; integer PCM up to 24 bit is
    sample-exact, float or 32-bit sources are quantised to 24 bit) and ``{key}.json`` (the row without its local
    ``path``/``rel_path``). Shards hold at most ``shard_size`` clips, in row order, and are named
    ``{prefix}-{n:06d}.tar``. Every shard and then ``index.json`` is written under a temporary name and renamed, so
    a crash never leaves a half-written file under a final name. A row whose audio cannot be read is not written;
    it is listed under ``skipped`` in the index (``id``, ``path``, ``error``).

    Refuses (``ShardError``) a folder that already holds ``index.json`` or ``{prefix}-*.tar`` unless ``overwrite``;
    with ``overwrite``, shards of that prefix that the new index does not list are deleted at the end.
    Returns the index dict: ``format``, ``version``, ``prefix``, ``shard_size``, ``num_clips``, ``shards`` (list of
    ``name``, ``clips``, ``bytes``, ``sha256``) and ``skipped``.
    """
    if shard_size < 1:
        raise ShardError(f"shard_size must be >= 1, got {shard_size}")
    if not prefix or any(c in prefix for c in "/\\.{}*?[]"):
        raise ShardError(f"prefix {prefix!r} must be a plain name (no path separators, dots, braces or globs)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if not overwrite and (old or (out / INDEX_NAME).exists()):
        raise ShardError(f"{out}: already holds shards or {INDEX_NAME} (pass overwrite=True to replace them)")
    shards: list[dict] = []
    skipped: list[dict] = []
    current: _ShardFile | None = None
    n = 0
    try:
        for row in rows:
            try:
                flac = _encode_flac(str(row["path"]), max_seconds)
            except AudioError as exc:
                skipped.append({"id": row.get("id"), "path": str(row["path"]), "error": str(exc)})
                continue
            if current is None:
                current = _ShardFile(out, f"{prefix}-{len(shards):06d}.tar")
            current.add(f"{n:09d}", flac, {k: v for k, v in row.items() if k not in _LOCAL_FIELDS})
            n += 1
            if current.clips == shard_size:
                shards.append(current.finish())
                current = None
        if current is not None:
            shards.append(current.finish())
            current = None
    finally:
        if current is not None:
            current.abort()
    index = {"format": FORMAT, "version": VERSION, "prefix": prefix, "shard_size": shard_size, "num_clips": n,
             "shards": shards, "skipped": skipped}
    _atomic_json(index, out / INDEX_NAME)
    keep = {s["name"] for s in shards}
    for p in old:
        if p.name not in keep:
            p.unlink()
    return index


def read_index(folder: str | os.PathLike) -> dict:
    """The ``index.json`` of a shard folder, checked for format. Raises :class:`ShardError` (one line)."""
    path = Path(folder) / INDEX_NAME
    if not Path(folder).is_dir():
        raise ShardError(f"shard folder not found: {folder}")
    if not path.is_file():
        raise ShardError(f"{folder}: no {INDEX_NAME} (not a folder written by write_shards)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("shards"), list):
        raise ShardError(f"{path}: not a {FORMAT} index")
    return index


def verify_shards(folder: str | os.PathLike) -> list[str]:
    """Check every shard listed in ``folder``'s index against its size and sha256; returns one line per problem
    (an empty list means every shard is present and intact)."""
    index = read_index(folder)
    problems = []
    for s in index["shards"]:
        p = Path(folder) / s["name"]
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != s["bytes"] or sha256_file(p) != s["sha256"]:
            problems.append(f"{p}: checksum mismatch (file changed or damaged)")
    return problems


# ------------------------------------------------------------------------------------------------ shard resolution
def resolve_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths named by ``source``, in a fixed order: a folder written by :func:`write_shards` (its index
    order), a single ``.tar`` file, a glob (``data/shard-*.tar``, sorted), a brace pattern
    (``data/shard-{000000..000009}.tar``, expansion order) or a list of paths. Raises :class:`ShardError` with one
    line when the folder is missing or has no index, a pattern matches nothing, or a named shard does not exist."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        label = f"{len(paths)} listed shards"
    else:
        text = str(source)
        label = repr(text)
        if os.path.isdir(text):
            paths = [Path(text) / s["name"] for s in read_index(text)["shards"]]
        elif "{" in text:
            import braceexpand

            paths = [Path(p) for p in braceexpand.braceexpand(text)]
        elif any(c in text for c in "*?["):
            paths = [Path(p) for p in sorted(globlib.glob(text))]
            if not paths:
                raise ShardError(f"no shard files match {text!r}")
        elif text.endswith(".tar"):
            paths = [Path(text)]
        else:
            raise ShardError(f"shard folder not found: {text}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ShardError(f"{len(missing)} of {len(paths)} shards named by {label} do not exist "
                         f"(first missing: {missing[0]})")
    if not paths:
        raise ShardError(f"no shards named by {label}")
    return paths


def _known_counts(paths: Sequence[Path]) -> list[int] | None:
    """Clip count of each shard from the ``index.json`` beside it, or None if any shard is not in an index."""
    by_folder: dict[Path, dict[str, int]] = {}
    counts = []
    for p in paths:
        folder = p.parent
        if folder not in by_folder:
            try:
                by_folder[folder] = {s["name"]: int(s["clips"]) for s in read_index(folder)["shards"]}
            except ShardError:
                by_folder[folder] = {}
        if p.name not in by_folder[folder]:
            return None
        counts.append(by_folder[folder][p.name])
    return counts


# --------------------------------------------------------------------------------------------------------- reading
def _iter_tar(path: Path) -> Iterator[tuple[str | None, dict[str, bytes] | None, str | None]]:
    """``(key, {ext: bytes}, None)`` per clip in tar order; a damaged tar ends with ``(None, None, error)``."""
    from webdataset.tariterators import base_plus_ext

    key, parts = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                base, ext = base_plus_ext(info.name)
                if base is None:
                    continue
                data = tar.extractfile(info).read()
                if base != key:
                    if key is not None:
                        yield key, parts, None
                    key, parts = base, {}
                parts[ext.lower()] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        if key is not None:
            yield key, parts, None
        yield None, None, f"unreadable tar after {key or 'its start'}: {type(exc).__name__}: {exc}"
        return
    if key is not None:
        yield key, parts, None


def decode_record(parts: dict[str, bytes], source: str, max_seconds: float = 600.0) -> dict:
    """One clip's tar members -> ``{"id", "record", "audio", "sample_rate"}``: ``record`` is the JSON row, ``audio``
    float32 ``[channels, samples]`` at the stored rate (samples scaled exactly as ``soundfile`` float reads, so the
    same as reading the source WAV/FLAC). Raises :class:`AudioError` naming ``source`` for a missing member, bad
    JSON, or audio that cannot be decoded or is longer than ``max_seconds``."""

    for ext in ("json", "flac"):
        if ext not in parts:
            raise AudioError(source, f"no .{ext} member")
    try:
        record = json.loads(parts["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AudioError(source, f"bad JSON record: {exc}") from None
    if not isinstance(record, dict) or "id" not in record:
        raise AudioError(source, "JSON record is not an object with an id")
    data, sr = read_sound(io.BytesIO(parts["flac"]), source, max_seconds, " FLAC")
    return {"id": record["id"], "record": record, "audio": torch.from_numpy(np.ascontiguousarray(data.T)),
            "sample_rate": sr}


class FbankTransform:
    """A ``transform`` for :class:`ShardDataset` giving ``{"id", "record", "input"}`` with ``input`` the normalised
    [target_frames, num_mel_bins] model input -- identical to ``encoder.features.file_to_input(path, cfg)`` on the
    source file for integer PCM (channels averaged, resampled to ``cfg.sample_rate``, DC removed, crop at 0).
    Raises :class:`AudioError` (the clip is then skipped as a bad record) for empty, over-long or non-finite audio.
    A class, not a closure, so spawned data-loader workers can unpickle it."""

    def __init__(self, cfg: FbankConfig = FbankConfig()):
        self.cfg = cfg

    def __call__(self, sample: dict) -> dict:
        source, cfg = str(sample["id"]), self.cfg
        mono = torch.from_numpy(np.ascontiguousarray(sample["audio"].numpy().T.mean(axis=1)))  # as load_audio
        wave = prepare_waveform(mono, sample["sample_rate"], cfg.sample_rate, source=source,
                                max_seconds=cfg.max_seconds)
        return {"id": sample["id"], "record": sample["record"], "input": waveform_to_input(wave, cfg, source=source)}


def collate_clips(items: list[dict]) -> dict:
    """Batch samples from :class:`ShardDataset`: tensors of one shape are stacked, anything else becomes a list;
    ``bad`` is flattened over the batch and ``pos`` kept as a list (pass the batch to :meth:`ShardDataset.advance`)."""
    out: dict[str, Any] = {"bad": [b for it in items for b in it["bad"]], "pos": [it["pos"] for it in items]}
    for k in items[0]:
        if k in ("bad", "pos"):
            continue
        vals = [it[k] for it in items]
        same = all(isinstance(v, torch.Tensor) and v.shape == vals[0].shape for v in vals)
        out[k] = torch.stack(vals) if same else vals
    return out


def _shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir shuffle: keep ``size`` items, emit a random one as each new one arrives, then the rest permuted.
    ``size`` <= 1 passes the items through in order."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    for j in rng.permutation(len(buf)):
        yield buf[j]


class ShardDataset(IterableDataset):
    """Clips from WebDataset shards for one rank, split over data-loader workers, shuffled and resumable.

    Guarantees (see the module docstring for the split policy):

    * one epoch over all ranks x workers yields every good clip exactly once;
    * the order is a function of (seed, epoch, world, rank, num_workers, batch size) only; another epoch gives
      another order (``shuffle_buffer=0`` and ``shuffle_shards=False`` give shard order);
    * resume: call :meth:`advance` with every batch the trainer has used; :meth:`state_dict` then records, per
      worker, how far it was consumed and which worker the loader must serve next. A fresh dataset given that state
      with :meth:`load_state_dict`, iterated by a ``DataLoader`` with the same ``num_workers`` and batch size,
      yields exactly the clips not yet consumed, in the order the uninterrupted run would have (skipped clips are
      read but not decoded);
    * a bad record (missing member, bad JSON, undecodable or over-long FLAC, transform raising ``AudioError``, a
      damaged tar) is skipped, never raised: it is reported in the ``bad`` list of the next good sample of the same
      worker (of the last one, for bad records after it), so it reaches the trainer through the batch exactly once
      per epoch, also across resumes; :meth:`advance` counts it and appends it to ``quarantine``. Only a worker whose
      shards hold no good clip at all writes its bad records to ``quarantine`` itself (and logs a warning).

    Each sample is ``{"id", "record", "audio" [channels, samples] float32, "sample_rate", "epoch"}`` (``epoch``: the
    epoch being read, so a transform can derive its random draws from (seed, epoch, id)), or what ``transform``
    (see :class:`FbankTransform`) makes of it, plus ``bad`` (list of dicts: ``shard``, ``key``, ``id``,
    ``error``, ``epoch``, ``rank``) and ``pos`` (progress marker for :meth:`advance`).

    ``decoder(parts, source, max_seconds)`` turns a clip's raw tar members (``{ext: bytes}``) into the sample dict
    (default :func:`decode_record`; it must give an ``id`` and raise :class:`AudioError` for a bad record): a reader
    that needs only some clips can pass the others over without decoding their audio (a picklable callable).

    Workers get a copy of the dataset when a ``DataLoader`` iterator starts: call :meth:`set_epoch` and
    :meth:`load_state_dict` before ``iter(loader)`` and use ``persistent_workers=False`` (a persistent worker would
    keep the old epoch; iterating twice in one worker process raises ``RuntimeError``).
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *, rank: int = 0, world: int = 1,
                 seed: int = 0, shuffle_buffer: int = 512, shuffle_shards: bool = True,
                 transform: Callable[[dict], dict] | None = None, max_seconds: float = 600.0,
                 quarantine: str | os.PathLike | None = None,
                 decoder: Callable[[dict[str, bytes], str, float], dict] = decode_record):
        super().__init__()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        self.shards = resolve_shards(source)
        if world > len(self.shards):
            raise ShardError(f"{len(self.shards)} shards cannot feed {world} ranks (every rank needs one; write "
                             f"smaller shards)")
        self.counts = _known_counts(self.shards)
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.transform, self.max_seconds, self.decoder = transform, max_seconds, decoder
        self.quarantine = Path(quarantine) if quarantine is not None else None
        self.epoch = 0
        self.bad_records = 0
        self._reset_progress()
        self._iterated_in_worker = False

    # -- plan
    def rank_shards(self, rank: int | None = None) -> list[Path]:
        """The shards rank ``rank`` (default: this rank) owns, every epoch."""
        r = self.rank if rank is None else rank
        return self.shards[r::self.world]

    def clips_per_rank(self) -> list[int] | None:
        """Clips each rank reads per epoch (bad records included), from the index; None when a shard is not
        listed in an ``index.json`` beside it."""
        if self.counts is None:
            return None
        return [sum(self.counts[r::self.world]) for r in range(self.world)]

    def worker_shards(self, worker: int, num_workers: int, epoch: int | None = None) -> list[Path]:
        """The shards worker ``worker`` of ``num_workers`` reads in ``epoch`` (default: the current one), in order."""
        mine = self.rank_shards()
        if self.shuffle_shards:
            rng = np.random.default_rng(derive_seed(self.seed, self.epoch if epoch is None else epoch, self.rank,
                                                    "shards"))
            mine = [mine[i] for i in rng.permutation(len(mine))]
        return mine[worker::num_workers]

    # -- epoch and resume
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate next. A different epoch clears the resume progress; the same one keeps it
        (so ``load_state_dict`` then ``set_epoch(state epoch)`` resumes)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._reset_progress()

    def _reset_progress(self) -> None:
        self._workers: int | None = None
        self._consumed: list[int] = []
        self._next_worker = 0
        self.batches = 0  # advance() calls this epoch (a trainer's steps into the epoch)

    def advance(self, batch: dict) -> list[dict]:
        """Mark a batch (from :func:`collate_clips`) or a single sample as consumed by the trainer; count its bad
        records, append them to ``quarantine`` (JSON lines) and return them. Call it for every batch, in order."""
        positions = batch["pos"] if isinstance(batch["pos"], list) else [batch["pos"]]
        for epoch, slot, workers, end in positions:
            if epoch != self.epoch:
                raise ValueError(f"batch is from epoch {epoch}, the dataset is at epoch {self.epoch}")
            if self._workers is None:
                self._workers, self._consumed = workers, [0] * workers
            elif workers != self._workers:
                raise ValueError(f"batch came from a loader with {workers} workers, earlier ones from "
                                 f"{self._workers}")
            self._consumed[slot] = max(self._consumed[slot], end)
            self._next_worker = (slot + 1) % workers
        self.batches += 1
        bad = list(batch["bad"])
        if bad:
            self.bad_records += len(bad)
            self._write_quarantine(bad)
        return bad

    def state_dict(self) -> dict:
        """JSON-serialisable progress: epoch, per-worker consumed positions, next worker, bad-record count, and the
        settings a resume must match (seed, rank, world, number of shards)."""
        return {"version": VERSION, "seed": self.seed, "rank": self.rank, "world": self.world,
                "num_shards": len(self.shards), "epoch": self.epoch, "workers": self._workers,
                "consumed": list(self._consumed), "next_worker": self._next_worker, "batches": self.batches,
                "bad_records": self.bad_records}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; raises ``ValueError`` if seed, rank, world or shard count differ."""
        for k in ("seed", "rank", "world", "num_shards"):
            mine = len(self.shards) if k == "num_shards" else getattr(self, k)
            if state.get(k) != mine:
                raise ValueError(f"resume state has {k}={state.get(k)!r}, this dataset {mine!r}")
        self.epoch = int(state["epoch"])
        self._workers = state["workers"]
        self._consumed = [int(c) for c in state["consumed"]]
        self._next_worker = int(state["next_worker"])
        self.batches = int(state.get("batches", 0))
        self.bad_records = int(state["bad_records"])

    # -- iteration
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker_id, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            if self._iterated_in_worker:
                raise RuntimeError("ShardDataset iterated twice in one worker process: persistent_workers=True "
                                   "would ignore set_epoch/load_state_dict; use persistent_workers=False")
            self._iterated_in_worker = True
        slot, start = worker_id, 0
        if any(self._consumed):  # resuming: worker 0 serves the worker after the last consumed batch's, so the
            if workers != self._workers:  # loader's round-robin continues where the interrupted one stopped
                raise RuntimeError(f"resume state was taken with {self._workers} data-loader worker(s), this "
                                   f"loader has {workers}: use the same num_workers to resume")
            slot = (worker_id + self._next_worker) % workers
            start = self._consumed[slot]
        yield from self._slot_stream(slot, workers, start)

    def _raw(self, slot: int, workers: int) -> Iterator[tuple[str, str | None, dict | None, str | None]]:
        for path in self.worker_shards(slot, workers):
            for key, parts, error in _iter_tar(path):
                yield path.name, key, parts, error

    def _slot_stream(self, slot: int, workers: int, start: int) -> Iterator[dict]:
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, self.rank, slot, workers, "buffer"))
        held, pending = None, []
        end = start
        for pos, (shard, key, parts, error) in enumerate(_shuffle_buffer(self._raw(slot, workers),
                                                                           self.shuffle_buffer, rng)):
            end = pos + 1
            if pos < start:
                continue
            source = f"{shard}:{key}"
            rid = None
            try:
                if error is not None:
                    raise AudioError(shard, error)
                sample = self.decoder(parts, source, self.max_seconds)
                rid, sample["epoch"] = sample["id"], self.epoch
                if self.transform is not None:
                    sample = self.transform(sample)
            except AudioError as exc:
                if rid is None and parts is not None and "json" in parts:
                    rid = _peek_id(parts["json"])
                pending.append({"shard": shard, "key": key, "id": rid, "error": str(exc), "epoch": self.epoch,
                                "rank": self.rank})
                continue
            if held is not None:
                yield held
            sample["bad"], sample["pos"] = pending, (self.epoch, slot, workers, end)
            held, pending = sample, []
        if held is not None:
            held["bad"] = held["bad"] + pending
            held["pos"] = (self.epoch, slot, workers, end)
            yield held
        elif pending:
            log.warning("shards: worker %d/%d of rank %d has no decodable clip; %d bad records (first: %s)", slot,
                        workers, self.rank, len(pending), pending[0]["error"])
            self._write_quarantine(pending)

    def _write_quarantine(self, bad: list[dict]) -> None:
        if self.quarantine is None:
            return
        self.quarantine.parent.mkdir(parents=True, exist_ok=True)
        with open(self.quarantine, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bad))


def _peek_id(raw: bytes):
    try:
        rec = json.loads(raw.decode("utf-8"))
        return rec.get("id") if isinstance(rec, dict) else None
    except (UnicodeDecodeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- trainer helpers
def shard_steps_per_epoch(ds: ShardDataset, local_batch: int, drop_last: bool = True) -> int:
    """Batches every rank can take per epoch: ``min(clips_per_rank) // local_batch`` (``ceil`` without
    ``drop_last``, for one rank). Raises :class:`ShardError` when the shards carry no index (counts unknown) or a
    rank holds fewer clips than one batch."""
    counts = ds.clips_per_rank()
    if counts is None:
        raise ShardError(f"{ds.shards[0].parent}: shards without an {INDEX_NAME} beside them; their clip counts "
                         f"(and so the epoch length) are unknown (write them with write_shards)")
    fewest = min(counts)
    steps = fewest // local_batch if drop_last else -(-fewest // local_batch)
    if steps < 1:
        raise ShardError(f"{ds.shards[0].parent}: a rank holds {fewest} clips, fewer than one batch of {local_batch}")
    return steps


def shard_epoch(ds: ShardDataset, batch_size: int, *, num_workers: int = 0, steps: int | None = None,
                drop_last: bool = True, any_rank: Callable[[bool], bool] = bool) -> Iterator[dict]:
    """The batches of ``ds``'s current epoch from its current progress on (a fresh epoch or a resumed one), each
    passed to :meth:`ShardDataset.advance` before it is yielded, so ``ds.state_dict()`` taken after a training step
    resumes at the next unseen clip. Ends after ``steps`` batches of the epoch (``ds.batches``) or when the loader
    runs dry; with several ranks ``any_rank(flag)`` must all-reduce "this rank has no batch" so every rank ends the
    epoch at the same step. The caller then moves on with ``ds.set_epoch(ds.epoch + 1)``. The loader has its own
    generator (seeded from (seed, epoch)): creating it takes no draw from the global torch RNG."""
    if steps is not None and ds.batches >= steps:
        return
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips, drop_last=drop_last,
        persistent_workers=False, generator=torch.Generator().manual_seed(derive_seed(ds.seed, ds.epoch, "loader")))
    it = iter(loader)
    while steps is None or ds.batches < steps:
        batch = next(it, None)
        if any_rank(batch is None):
            return
        ds.advance(batch)
        yield batch


def shard_batches(ds: ShardDataset, batch_size: int, **kwargs) -> Iterator[dict]:
    """:func:`shard_epoch` (same arguments) over epoch after epoch, without end: the stream a step-counted trainer
    reads. An epoch that yields no batch at all raises :class:`ShardError` (it would loop forever)."""
    while True:
        n = 0
        for batch in shard_epoch(ds, batch_size, **kwargs):
            n += 1
            yield batch
        if n == 0 and ds.batches == 0:
            raise ShardError(f"{ds.shards[0].parent}: epoch {ds.epoch} gave no batch of {batch_size} good clips "
                             f"on rank {ds.rank} ({ds.bad_records} bad records so far)")
        ds.set_epoch(ds.epoch + 1)


__all__ = ["ShardError", "ShardDataset", "write_shards", "read_index", "verify_shards", "resolve_shards",
           "decode_record", "FbankTransform", "collate_clips", "shard_epoch", "shard_batches", "shard_steps_per_epoch",
           "FORMAT", "VERSION", "INDEX_NAME"]
