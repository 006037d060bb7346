"""The data side of an ALM stage: which records it trains on and evaluates with, the order it reads them in (a
permutation per epoch drawn from the seed alone, so a data position is just (epoch, batch index)), the clips that
order will read (so only those are encoded up front), tokens from WebDataset shards, and the held-out loss."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from encoder.data.shards import ShardError
from mosaic_alm.data import (
    Collator,
    InstructionDataConfig,
    InstructionDataset,
    balance_records,
    load_records,
)
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.stage_config import StageConfig, StageTrainConfig
from mosaic_core.config import ConfigError

log = logging.getLogger(__name__)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  lengths: Sequence[int] | None = None, group: int = 16) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation drawn from (seed, epoch) alone, padded to a multiple of
    ``world`` by wrapping (like DistributedSampler), this rank's share cut into batches (the last may be short).
    A data position is then just (epoch, batch index): a resumed run continues with exactly the same batches.

    With ``lengths`` (each record's token count): length-grouped batches. The share is cut into windows of
    ``group`` batches, each window sorted by length (longest first) before it is cut into batches, and the batches'
    order is drawn again from the same generator; a batch then pads to a length near its own examples' instead of
    the longest of a random draw (the embedded closed questions are 44 or 76-84 tokens: a random batch of 8 pads
    82 tokens an example on average for 66 real ones)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(n, generator=g).tolist()
    if world > 1:
        order = (order * world)[:n + (-n) % world][rank::world]
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window, batches = batch_size * group, []
    for w in range(0, len(order), window):
        part = sorted(order[w:w + window], key=lambda i: -lengths[i])  # stable: ties keep the drawn order
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def planned_records(n: int, batch_size: int, seed: int, micro_batches: int, world: int = 1,
                    lengths: Sequence[int] | None = None) -> set[int]:
    """The record indices that ``micro_batches`` micro-batches of every rank read from the start of the stream
    (epoch 0, batch 0, crossing epochs as ``train_stage`` does): a budget of 1,000 examples over 13,000 records
    encodes the ~1,000 clips it reads up front, not every clip of the split."""
    read: set[int] = set()
    epoch, left = 0, micro_batches
    while left > 0 and len(read) < n:
        plans = [epoch_batches(n, batch_size, seed, epoch, r, world, lengths) for r in range(world)]
        for plan in plans:
            read.update(i for b in plan[:left] for i in b)
        left -= len(plans[0])
        epoch += 1
    return read


def eval_records(dcfg: InstructionDataConfig, tcfg: StageTrainConfig, seed: int) -> list[dict]:
    """The records of the held-out loss: ``eval_batches`` batches of the eval split ([] without that file)."""
    if tcfg.eval_batches == 0:
        return []
    try:
        return load_records(dcfg.root, dcfg.eval_split, dcfg.tasks, dcfg.kind, tcfg.eval_batches * tcfg.batch_size,
                            seed, dcfg.qtypes)
    except FileNotFoundError:
        return []


def _all_gather(world: int):
    """A picklable object from every rank, as a list by rank."""
    def gather(obj):
        if world == 1:
            return [obj]
        out = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out
    return gather


def tokens_from_shards(featurizer: AudioFeaturizer, source: str, train_recs: list[dict], eval_recs: list[dict], *,
                       rank: int = 0, world: int = 1, num_workers: int = 0, quarantine: Path | None = None,
                       progress: bool = True) -> tuple[list[dict], list[dict], dict]:
    """``data.shards``: one streaming pass over the shards (split over ranks) caches the tokens of every clip the
    records name by ``audio_id`` (= the ``id`` of the clip's JSON record in the shards, the manifest id) and aliases
    each record's ``audio_path`` to it. Returns the training records less those whose clip is a bad record (skipped
    and quarantined), the eval records whose clip is in a shard or on disk, and the numbers for the summary.
    Raises ``ShardError`` (one line) when a training record has no ``audio_id`` or names a clip in no shard."""
    unnamed = next((r for r in train_recs if not r.get("audio_id")), None)
    if unnamed is not None:
        raise ShardError(f"data.shards: instruction {unnamed.get('id')!r} has no audio_id (shards are matched to "
                         f"instructions by the clip's manifest id)")
    train_ids = {str(r["audio_id"]) for r in train_recs}
    keys, bad, encoded = featurizer.precompute_shards(
        source, train_ids | {str(r["audio_id"]) for r in eval_recs if r.get("audio_id")}, rank=rank, world=world,
        num_workers=num_workers, quarantine=quarantine, gather=_all_gather(world), progress=progress)
    bad_ids = {str(b["id"]) for b in bad if b.get("id") is not None}
    missing = sorted(train_ids - set(keys) - bad_ids)
    if missing:
        raise ShardError(f"data.shards: {len(missing)} of the {len(train_ids)} clips the training instructions name "
                         f"are in no shard of {source} (e.g. audio_id {missing[0]!r})")
    for r in train_recs + eval_recs:
        if str(r.get("audio_id")) in keys:
            featurizer.alias(r["audio_path"], keys[str(r["audio_id"])])
    kept = [r for r in train_recs if str(r["audio_id"]) in keys]
    if not kept:
        raise ShardError(f"data.shards: every clip the training instructions name is a bad record in {source} "
                         f"(listed in {quarantine})")
    if len(kept) < len(train_recs):
        log.warning("data.shards: %d training instructions dropped: their clips are bad records (%s)",
                    len(train_recs) - len(kept), quarantine)
    evals = [r for r in eval_recs if str(r.get("audio_id")) in keys or Path(r["audio_path"]).is_file()]
    return kept, evals, {"source": source, "clips": len(keys), "encoded_rank0": encoded if rank == 0 else None,
                         "bad_records": len(bad), "dropped_records": len(train_recs) - len(kept)}


@torch.no_grad()
def evaluate_loss(model, dcfg: InstructionDataConfig, fmt, tcfg: StageTrainConfig, seed: int,
                  recs: list[dict] | None = None) -> float | None:
    """Mean answer-token loss over ``recs`` (default: :func:`eval_records`); None without records."""
    if recs is None:
        recs = eval_records(dcfg, tcfg, seed)
    if not recs:
        return None
    was = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(InstructionDataset(recs, fmt), batch_size=tcfg.batch_size,
                                         collate_fn=Collator(model.tokenizer.pad_token_id, "right"))
    featurizer = AudioFeaturizer.for_model(model)
    tot, n = 0.0, 0
    for batch in loader:
        audio = featurizer.inputs(batch.pop("audios")) if featurizer is not None else {}
        k = int((batch["labels"][:, 1:] != -100).sum())
        tot += float(model(**batch, **audio).loss) * k
        n += k
    model.train(was)
    return tot / max(1, n)


def training_records(cfg: StageConfig) -> list[dict]:
    """The stage's training records (``data``: split, tasks, kind, question types, cap, balance); a ConfigError
    when there are none (checked before the model loads: a wrong data root costs no waiting)."""
    d = cfg.data
    recs = load_records(d.root, d.train_split, d.tasks, d.kind, d.max_train, cfg.seed, d.qtypes)
    if not recs:
        raise ConfigError(f"stage {cfg.stage}: no training records in {d.root} for tasks={d.tasks} "
                          f"qtypes={d.qtypes} kind={d.kind}")
    return balance_records(recs, d.balance, cfg.seed) if d.balance else recs


def micro_batches(ds, collate, batch_size: int, num_workers: int, seed: int, position: tuple[int, int],
                  rank: int = 0, world: int = 1, lengths: Sequence[int] | None = None):
    """Micro-batches from data position (epoch, batch index) on, crossing epochs: yields (epoch, next, batch)."""
    epoch, start = position
    while True:
        plan = epoch_batches(len(ds), batch_size, seed, epoch, rank, world, lengths)
        # its own generator: a DataLoader iterator otherwise draws its base seed from the global torch RNG,
        # one draw more in a resumed run than in an uninterrupted one (LoRA dropout would then differ)
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=plan[start:], collate_fn=collate,
                                             num_workers=num_workers, generator=generator)
        for i, batch in enumerate(loader, start + 1):
            yield epoch, i, batch
        epoch, start = epoch + 1, 0
