"""Recipe: AudioMosaic pretraining for one process, torch.distributed, or the ``deepspeed`` launcher.

    mosaic-alm pretrain --config configs/pretrain/tiny.yaml [key=value ...]
    mosaic-alm pretrain-mae --config configs/pretrain/tiny.yaml run_dir=runs/pretrain-mae   # the MAE baseline
    deepspeed --num_gpus 8 -m recipes.pretrain --config configs/pretrain/vit_base.yaml distributed.backend=deepspeed
    deepspeed --hostfile hosts -m recipes.pretrain --config ... distributed.backend=deepspeed   # several nodes

The loop: resume from the newest valid checkpoint, then per step draw the masks, run the objective's step
(:mod:`encoder.pretraining`), skip a step whose loss is non-finite on any rank (restoring BatchNorm statistics),
step the optimizer, log, checkpoint. At the end the encoder alone is exported as a Hugging Face folder.

:func:`train` reads top to bottom: setup (``_setup_data``, ``_setup_model``, ``_resume``, ``_setup_loader``), the
loop (``_train_step`` per batch, then record, log and checkpoint), save (``_save_encoder``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from encoder import checkpoint as ckpt
from encoder.data.dataset import (
    EpochBatchSampler,
    PretrainDataset,
    ShardViews,
    cache_features,
    collate_views,
    derive_seed,
)
from encoder.data.shards import ShardDataset, shard_batches, shard_steps_per_epoch
from encoder.features import FbankConfig
from encoder.pretraining import (
    PretrainConfig,
    TrainingError,
    all_reduce_mean_grads,
    any_rank,
    autocast_ctx,
    build_pretrain_model,
    contrastive_step,
    decay_param_groups,
    export_encoder,
    finite_loss,
    init_distributed,
    load_rows,
    lr_at,
    mae_step,
    memory_mb,
    parameter_summary,
    save_pretrain_checkpoint,
    training_facts,
)
from mosaic_core.config import ConfigError, load_recipe, save_yaml
from mosaic_core.io import atomic_write_json
from mosaic_core.runtime import precision_note, rank_world, set_threads, use_bf16

log = logging.getLogger("recipes.pretrain")


@dataclass
class _Data:
    """What the loop reads: manifests' rows (``dataset``) or WebDataset ``shards``, and the epoch size."""
    steps_per_epoch: int
    n_clips: int
    shards: ShardDataset | None = None
    rows: list | None = None
    dataset: PretrainDataset | None = None


@dataclass
class _Tally:
    """The loop's running state: step, history and the bad-clip / skipped-step counts."""
    step: int
    history: list
    skipped_steps: int = 0
    bad_steps: int = 0
    bad_clips: int = 0
    last_finite: float | None = None
    t_last: float = 0.0
    t_origin: float = 0.0


# ------------------------------------------------------------------------------------------------------ setup
def _setup_data(cfg: PretrainConfig, rank: int, world: int) -> _Data:
    """Data first: a wrong path or shard folder fails before the model is built."""
    fb = FbankConfig(sample_rate=cfg.model.sample_rate, num_mel_bins=cfg.model.num_mel_bins,
                     target_frames=cfg.data.target_frames, mean=cfg.model.norm_mean, std=cfg.model.norm_std,
                     max_seconds=cfg.data.max_seconds)
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {world} processes")
    if cfg.data.shards and cfg.data.group_by:
        raise ConfigError("data.group_by groups the manifests' rows; shards stream in their own order: unset one")
    if cfg.data.shards:  # WebDataset shards: split over ranks and workers, resumable (encoder/data/shards.py)
        maker = PretrainDataset([], fb, cfg.augment, cfg.seed, None, cfg.views)
        shards = ShardDataset(cfg.data.shards, rank=rank, world=world, seed=cfg.seed,
                              shuffle_buffer=cfg.data.shuffle_buffer, max_seconds=cfg.data.max_seconds,
                              transform=ShardViews(maker, spectrogram=cfg.data.cached_features))
        return _Data(shard_steps_per_epoch(shards, cfg.train.batch_size // world), sum(shards.clips_per_rank()),
                     shards=shards)
    rows = load_rows(cfg)
    features = None
    if cfg.data.cached_features:
        cache = Path(cfg.data.root) / "cache" / f"fbank_{derive_seed(*[r['id'] for r in rows]):x}.safetensors"
        if rank == 0:
            features = cache_features(rows, fb, cache)
        if world > 1:
            dist.barrier()
        if rank != 0:
            features = cache_features(rows, fb, cache)
    dataset = PretrainDataset(rows, fb, cfg.augment, cfg.seed, features, cfg.views)
    if len(rows) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the {len(rows)} training clips")
    return _Data(len(rows) // cfg.train.batch_size, len(rows), rows=rows, dataset=dataset)


def _setup_model(cfg: PretrainConfig, world: int, device, is_main: bool):
    """The model, its AdamW and, under ``distributed.backend=deepspeed``, the DeepSpeed engine (else None)."""
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_pretrain_model(cfg).to(device)
    if is_main:
        counts = parameter_summary(model)
        print(f"[pretrain] objective={cfg.objective} world={world} device={device} trainable parameters: "
              + ", ".join(f"{n}={c:,}" for n, c in counts.items()), flush=True)
        print(f"[pretrain] precision: {precision_note(use_bf16(cfg.train.precision, device), device)}", flush=True)
    optimizer = torch.optim.AdamW(decay_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    if cfg.distributed.backend != "deepspeed":
        return model, optimizer, None
    import deepspeed

    ds_cfg = json.loads(Path(cfg.distributed.deepspeed_config).read_text())
    ds_cfg["train_micro_batch_size_per_gpu"] = cfg.train.batch_size // world
    ds_cfg["gradient_accumulation_steps"] = 1
    ds_cfg["gradient_clipping"] = max(cfg.optim.grad_clip, 0.0)
    ds_cfg.setdefault("bf16", {})["enabled"] = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda")
    ds_cfg.pop("optimizer", None)
    ds_cfg.pop("scheduler", None)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg,
                                                   dist_init_required=False)
    if is_main:
        print(f"[pretrain] deepspeed ZeRO stage {engine.zero_optimization_stage()}", flush=True)
    return engine.module, optimizer, engine


def _resume(run: Path, model, optimizer, engine, shards, rank: int, world: int) -> tuple[int, list]:
    """(start step, history) from the newest valid checkpoint in ``run/checkpoints``, or (0, [])."""
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    if latest is None:
        return 0, []
    tensors, state = ckpt.load_checkpoint(latest)
    model.load_state_dict(tensors["model"])
    if engine is None and "optimizer" in tensors:
        optimizer.load_state_dict(ckpt.unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
    elif engine is not None:  # only after its files match the manifest and load without code
        ckpt.load_deepspeed_state(engine, run, state.get("deepspeed"), load_module_strict=True)
    start_step, history = state["step"], state.get("history", [])
    if ("shards" in state) != (shards is not None) or len(state.get("shards", [])) not in (0, world):
        raise ckpt.CheckpointError(f"{latest}: written by a run reading "
                                   f"{'shards' if 'shards' in state else 'manifests'} with "
                                   f"{state.get('world_size')} process(es); this run reads "
                                   f"{'shards' if shards is not None else 'manifests'} with {world}: "
                                   f"use another run_dir")
    if shards is not None:
        try:
            shards.load_state_dict(state["shards"][rank])
        except ValueError as exc:
            raise ckpt.CheckpointError(f"{latest}: shard reader state does not fit this run: {exc}") from None
    if rank == 0:
        print(f"[pretrain] resumed from {latest} at step {start_step}", flush=True)
    return start_step, history


def _setup_loader(cfg: PretrainConfig, data: _Data, rank: int, world: int, device, start_step: int, total: int):
    if data.shards is not None:  # each rank stops an epoch when any rank runs out (bad records) or after min(clips)
        return itertools.islice(shard_batches(data.shards, cfg.train.batch_size // world,
                                              num_workers=cfg.data.num_workers, steps=data.steps_per_epoch,
                                              any_rank=lambda flag: any_rank(flag, world, device)),
                                max(0, total - start_step))
    groups = [r.get(cfg.data.group_by) for r in data.rows] if cfg.data.group_by else None
    sampler = EpochBatchSampler(len(data.rows), cfg.train.batch_size, rank, world, cfg.seed, start_step, total,
                                groups=groups, group_size=cfg.data.group_size)
    return torch.utils.data.DataLoader(data.dataset, batch_sampler=sampler, collate_fn=collate_views,
                                       num_workers=cfg.data.num_workers,
                                       persistent_workers=cfg.data.num_workers > 0,
                                       prefetch_factor=2 if cfg.data.num_workers > 0 else None)


def _setup_logging(cfg: PretrainConfig, run: Path, is_main: bool, total: int, start_step: int):
    """(TensorBoard writer, progress bar), each None where not wanted (other ranks; train.progress=false)."""
    writer = bar = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
    if is_main and cfg.train.progress:
        from mosaic_core.progress import progress_bar

        bar = progress_bar(total=total, initial=start_step, desc=f"pretrain ({cfg.objective})")
    return writer, bar


# ------------------------------------------------------------------------------------------------------- loop
def _quarantine(batch, tally: _Tally, quarantine: Path, on_bad_clip: str) -> None:
    """List a batch's unreadable clips in the rank's quarantine file (or stop, under data.on_bad_clip=fail)."""
    tally.bad_clips += len(batch["bad"])
    with open(quarantine, "a") as f:
        f.writelines(json.dumps({"step": tally.step, **b}) + "\n" for b in batch["bad"])
    if on_bad_clip == "fail":
        raise TrainingError(f"bad clip {batch['bad'][0]['id']}: {batch['bad'][0]['error']} "
                            f"(data.on_bad_clip=fail; listed in {quarantine})")


def _train_step(cfg, batch, model, optimizer, engine, tally: _Tally, rank, world, device, total, amp, params):
    """One optimizer step; a step whose loss is non-finite on any rank is skipped with its BatchNorm statistics
    restored. Returns (step output, lr, skipped)."""
    step = tally.step
    views = batch["views"].to(device, non_blocking=True)
    lr = lr_at(step, total, cfg.optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if engine is None:
        optimizer.zero_grad(set_to_none=True)
    verdict = {}

    def agree(loss, _v=verdict):
        _v["ok"] = not any_rank(not finite_loss(loss), world, device)
        return _v["ok"]

    backward = engine.backward if engine is not None else (lambda loss: loss.backward())
    step_fn = contrastive_step if cfg.objective == "contrastive" else mae_step
    # BatchNorm running statistics move in the forward pass: a skipped step must not leave them poisoned
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    out = step_fn(model, views, cfg, step, rank, backward, amp, agree)
    skipped = not verdict.get("ok", False)
    if skipped:
        tally.bad_steps += 1
        tally.skipped_steps += 1
        with torch.no_grad():
            for b, old in saved_buffers:
                b.copy_(old)
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: non-finite loss on some rank; step skipped (%d in a row, %d in all)", step,
                    tally.bad_steps, tally.skipped_steps)
        if tally.bad_steps >= cfg.train.max_bad_steps:
            raise TrainingError(f"stopping: {tally.bad_steps} consecutive non-finite losses, the last at step {step} "
                                f"(lr {lr:.3g}, last finite loss {tally.last_finite}); "
                                f"train.max_bad_steps={cfg.train.max_bad_steps}")
    else:
        tally.bad_steps = 0
        tally.last_finite = float(out["loss"])
        if engine is not None:
            engine.step()
        else:
            all_reduce_mean_grads(params, world)
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
    tally.step += 1
    return out, lr, skipped


def _record(out, lr: float, skipped: bool, tally: _Tally) -> tuple[float, float]:
    """Append the step to the history (no NaN/inf in any output: a skipped step records None)."""
    loss_val, acc_val = float(out["loss"]), float(out["accuracy"])
    elapsed = round(time.time() - tally.t_origin, 2)
    if skipped or not math.isfinite(loss_val):
        tally.history.append({"step": tally.step, "loss": None, "accuracy": None, "lr": lr, "skipped": True,
                              "elapsed_s": elapsed})
        return float("nan"), float("nan")
    tally.history.append({"step": tally.step, "loss": loss_val, "accuracy": acc_val if math.isfinite(acc_val) else None,
                          "lr": lr, "elapsed_s": elapsed})
    return loss_val, acc_val


def _log_step(cfg, writer, bar, tally: _Tally, loss_val, acc_val, lr, skipped, total, device) -> None:
    step = tally.step
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}", acc=f"{acc_val:.3f}", refresh=False)  # redraw at mininterval
    if writer is not None and skipped:
        writer.add_scalar("train/skipped_steps", tally.skipped_steps, step)
    if writer is not None and not skipped and (step % cfg.train.log_every == 0 or step == total):
        dt = time.time() - tally.t_last
        tally.t_last = time.time()
        writer.add_scalar("train/loss", loss_val, step)
        writer.add_scalar("train/contrastive_accuracy", acc_val, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/clips_per_s", cfg.train.batch_size * cfg.train.log_every / max(dt, 1e-9), step)
        writer.add_scalar("train/memory_mb", memory_mb(device), step)
        writer.add_scalar("data/bad_clips", tally.bad_clips, step)
        if bar is None:
            print(f"[pretrain] step {step}/{total} loss {loss_val:.4f} acc {acc_val:.3f} lr {lr:.2e} "
                  f"{cfg.train.batch_size * cfg.train.log_every / max(dt, 1e-9):.1f} clips/s", flush=True)


# ------------------------------------------------------------------------------------------------------- save
def _save_encoder(cfg: PretrainConfig, run: Path, model, tally: _Tally, n_clips: int, is_main: bool,
                 world: int) -> None:
    """The encoder alone as a Hugging Face folder, and the history (rank 0; the others wait for it)."""
    if is_main:
        export_encoder(model.encoder, run / "encoder", training_facts(cfg, tally.step, n_clips, world))
        atomic_write_json(run / "history.json", tally.history, indent=None)
    if world > 1:
        dist.barrier()


def train(cfg: PretrainConfig, raw: dict | None = None) -> dict:
    set_threads(cfg.train.threads)
    rank, world, device = init_distributed(cfg)
    run, is_main = Path(cfg.run_dir), rank == 0
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_yaml(raw if raw is not None else cfg, run / "config.yaml")
    data = _setup_data(cfg, rank, world)
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * data.steps_per_epoch
    model, optimizer, engine = _setup_model(cfg, world, device, is_main)
    start_step, history = _resume(run, model, optimizer, engine, data.shards, rank, world)
    loader = _setup_loader(cfg, data, rank, world, device, start_step, total)
    writer, bar = _setup_logging(cfg, run, is_main, total, start_step)
    amp = autocast_ctx(cfg.train, device)
    params = [p for p in model.parameters() if p.requires_grad]
    tally = _Tally(step=start_step, history=history, skipped_steps=sum(1 for h in history if h.get("skipped")),
                   last_finite=next((h["loss"] for h in reversed(history) if h.get("loss") is not None), None))
    quarantine = run / f"quarantine.rank{rank}.jsonl"
    model.train()
    tally.t_last = time.time()
    tally.t_origin = tally.t_last - (history[-1].get("elapsed_s", 0.0) if history else 0.0)  # across resumes
    for batch in loader:
        if batch["bad"]:
            _quarantine(batch, tally, quarantine, cfg.data.on_bad_clip)
        out, lr, skipped = _train_step(cfg, batch, model, optimizer, engine, tally, rank, world, device, total, amp,
                                      params)
        loss_val, acc_val = _record(out, lr, skipped, tally)
        _log_step(cfg, writer, bar, tally, loss_val, acc_val, lr, skipped, total, device)
        if tally.step % cfg.train.ckpt_every == 0 or tally.step == total:
            save_pretrain_checkpoint(run, tally.step, model, optimizer, engine, cfg, tally.history, is_main, world,
                                     raw, data.shards.state_dict() if data.shards is not None else None)
        if tally.step >= total:
            break
    for closing in (bar, writer):
        if closing is not None:
            closing.close()
    _save_encoder(cfg, run, model, tally, data.n_clips, is_main, world)
    return {"steps": tally.step, "history": tally.history, "bad_clips": tally.bad_clips,
            "skipped_steps": tally.skipped_steps}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mosaic-alm pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML recipe (configs/pretrain/*.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return p.parse_args(argv)


def main(argv=None, objective: str | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"objective={objective}"] if objective is not None else [])
    cfg, raw = load_recipe(PretrainConfig, args.config, overrides)
    try:
        summary = train(cfg, raw)
    except (ckpt.CheckpointError, TrainingError) as exc:  # a clear reason, non-zero exit
        if dist.is_initialized():  # several ranks: say which one failed, with its traceback
            import traceback

            print(f"[pretrain] rank {rank_world()[0]} failed: {exc}\n{traceback.format_exc()}", file=sys.stderr,
                  flush=True)
        else:
            print(f"[pretrain] error: {exc}", file=sys.stderr, flush=True)
        return 1
    if rank_world()[0] == 0:
        h = [x for x in summary["history"] if x.get("loss") is not None]
        if h:
            print(f"[pretrain] done: {summary['steps']} steps, first loss {h[0]['loss']:.4f}, "
                  f"last loss {h[-1]['loss']:.4f}, bad clips {summary['bad_clips']}, skipped steps "
                  f"{summary['skipped_steps']}; encoder -> {Path(cfg.run_dir) / 'encoder'}", flush=True)
    return 0


def main_mae(argv=None) -> int:
    return main(argv, objective="mae")


if __name__ == "__main__":
    sys.exit(main())
