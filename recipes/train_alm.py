"""Recipe: stage training for the ALM.

    mosaic-alm train-alm --config configs/alm/stage1.yaml [key=value ...]
    mosaic-alm train-alm --config configs/alm/stage1.yaml configs/alm/stage2.yaml ... [key=value ...]
    mosaic-alm train-alm --all [key=value ...]            # the four curriculum stages in sequence

A stage's length is ``train.examples`` (training examples in all: ceil(examples / (batch x accumulation x ranks))
optimizer steps), or ``train.max_steps``, or ``train.epochs``. With the encoder frozen (the default) the tokens of
every training clip are computed first in one batched pass and cached on disk (:mod:`mosaic_alm.featurizer`), so
later stages, other runs with the same encoder and evaluation reuse them and a step costs only the LLM.
With ``data.shards`` (WebDataset shards written by ``encoder.data.shards.write_shards``) the clips come from the
shards instead of the ``audio_path`` files: one streaming pass (split over ranks) caches the tokens of the clips the
instructions name by ``audio_id`` (the manifest id), then training runs the same way from the cache.

Several configs run in sequence; ``train.init_from: previous`` starts a stage from the artifact of the stage before it
(``{output_dir}/{name}/stage{N-1}/artifact``); overrides apply to every stage. Each stage writes its run folder
``{output_dir}/{name}/stage{N}/`` with ``config.yaml`` (resolved), TensorBoard events, ``summary.json`` and
``artifact/`` (see :mod:`mosaic_alm.artifact`). The whole config is checked (types, ranges, choices, unknown keys)
before anything loads.

With ``train.deepspeed: configs/deepspeed/alm_zero2.json`` (or zero3) the step runs through a DeepSpeed engine; launch
with ``deepspeed --num_gpus N -m recipes.train_alm --config ...`` or torchrun. lr, batch size, accumulation and
clipping in the JSON are overwritten from this config so there is one source of truth.

With ``train.ckpt_every: N`` a stage checkpoints every N optimizer steps into ``{run}/checkpoints`` (safetensors +
JSON: trainable weights, optimizer, scheduler, data position, losses, RNG) and the same command, run again after a
crash or kill, resumes from the newest one bit-exactly. Under DeepSpeed the optimizer partitions are DeepSpeed's own
checkpoint in ``{run}/ds_checkpoints``, loaded only after they match the manifest kept in the kit's checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from encoder import checkpoint as ckpt
from encoder.data.shards import ShardError
from mosaic_alm.align import AnswerSlots, align_projector, copy_weight
from mosaic_alm.artifact import build_from, module_state, save_artifact
from mosaic_alm.audio_lm import format_parameter_counts
from mosaic_alm.data import (
    Collator,
    InstructionDataConfig,
    InstructionDataset,
    PromptFormatter,
    balance_records,
    load_records,
)
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.stage_config import (
    STAGES,
    StageTrainConfig,
    check_stage_config,
    resolve_init,
    run_dir,
    stage_sources,
    trajectory_config,
)
from mosaic_core.config import ConfigError, load_config, save_yaml
from mosaic_core.io import atomic_write_json
from mosaic_core.progress import progress_bar
from mosaic_core.runtime import (
    deepspeed_cpu_workaround,
    precision_note,
    rank_world,
    resolve_device,
    seed_everything,
    single_process_dist_env,
    use_bf16,
)
from mosaic_core.schedule import cosine_schedule


def _ds_config(path: str, tcfg: StageTrainConfig, world: int, device: torch.device) -> dict:
    cfg = json.loads(Path(path).read_text())
    cfg["train_micro_batch_size_per_gpu"] = tcfg.batch_size
    cfg["gradient_accumulation_steps"] = tcfg.grad_accum
    cfg["train_batch_size"] = tcfg.batch_size * tcfg.grad_accum * world
    cfg["gradient_clipping"] = tcfg.max_grad_norm
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    cfg["optimizer"]["params"].update(lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    cfg.pop("scheduler", None)  # our LambdaLR drives the schedule
    cfg["bf16"] = {"enabled": use_bf16(tcfg.precision, device)}
    if device.type == "cpu":  # no JIT-compiled fused Adam on CPU (docs/ARCHITECTURE.md): torch AdamW inside DeepSpeed
        cfg["optimizer"]["params"]["torch_adam"] = True
    return cfg


def alm_param_groups(model, tcfg: StageTrainConfig) -> list[dict]:
    """Optimizer parameter groups: the trainable projector at ``projector_lr`` (when set), the rest at ``lr``."""
    proj = {id(p) for p in model.projector.parameters()} if model.projector is not None else set()
    trainable = [(p, id(p) in proj) for p in model.parameters() if p.requires_grad]
    if tcfg.projector_lr is None or not any(is_proj for _, is_proj in trainable):
        return [{"params": [p for p, _ in trainable], "lr": tcfg.lr}]
    groups = [{"params": [p for p, is_proj in trainable if is_proj], "lr": tcfg.projector_lr},
              {"params": [p for p, is_proj in trainable if not is_proj], "lr": tcfg.lr}]
    return [g for g in groups if g["params"]]


log = logging.getLogger(__name__)



def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation drawn from (seed, epoch) alone, padded to a multiple of
    ``world`` by wrapping (like DistributedSampler), this rank's share cut into batches (the last may be short).
    A data position is then just (epoch, batch index): a resumed run continues with exactly the same batches."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(n, generator=g).tolist()
    if world > 1:
        order = (order * world)[:n + (-n) % world][rank::world]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def planned_records(n: int, batch_size: int, seed: int, micro_batches: int, world: int = 1) -> set[int]:
    """The record indices that ``micro_batches`` micro-batches of every rank read from the start of the stream
    (epoch 0, batch 0, crossing epochs as ``train_stage`` does): a budget of 1,000 examples over 13,000 records
    encodes the ~1,000 clips it reads up front, not every clip of the split."""
    read: set[int] = set()
    epoch, left = 0, micro_batches
    while left > 0 and len(read) < n:
        plans = [epoch_batches(n, batch_size, seed, epoch, r, world) for r in range(world)]
        for plan in plans:
            read.update(i for b in plan[:left] for i in b)
        left -= len(plans[0])
        epoch += 1
    return read




def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = st
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    return tensors, {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _barrier() -> None:
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def save_stage_checkpoint(out: Path, cfg: dict, model, opt, sched, keep_last: int, progress: dict,
                          engine=None) -> Path | None:
    """``{out}/checkpoints/step_N/``: trainable parameters, projector buffers, optimizer tensors and RNG states as
    safetensors; step, data position, loss history, scheduler, optimizer scalars, RNG scalars and the config as
    JSON (encoder.checkpoint: atomic, checksummed). Under DeepSpeed every rank calls it: the optimizer is
    DeepSpeed's own checkpoint in ``{out}/ds_checkpoints/step_N/`` (trainable weights only), whose manifest goes into
    the state; ZeRO-3 partitions are gathered; each rank's RNG states are kept (``rank{r}.`` keys). Rank 0 writes."""
    name = f"{ckpt.PREFIX}{progress['step']:08d}"
    ds = ckpt.save_deepspeed_state(engine, out, name, exclude_frozen=True) if engine is not None else None
    want = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable = module_state(model, only=lambda n: n in want)  # gathered under ZeRO-3; buffers of these names: none
    rank, world = rank_world()
    rngs = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rngs, _rng_state())
    else:
        rngs[0] = _rng_state()
    if rank != 0:
        return None
    rng_t = dict(rngs[0][0])
    rng_t.update({f"rank{r}.{k}": v for r in range(1, world) for k, v in rngs[r][0].items()})
    opt_t, opt_rest = ckpt.flatten_optimizer_state(opt.state_dict()) if engine is None else ({}, None)
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    tensors = {"trainable": trainable,
               "buffers": {n: b for n, b in model.named_buffers() if n.startswith("projector.")},
               "optimizer": opt_t, "rng": rng_t}
    state = dict(progress, optimizer=opt_rest, scheduler=sched_state, rng=rngs[0][1],
                 rng_ranks=[r[1] for r in rngs[1:]], world=world, deepspeed=ds, config=cfg)
    path = ckpt.save_checkpoint(out / "checkpoints", progress["step"], {k: v for k, v in tensors.items() if v},
                                state, keep_last=keep_last)
    if engine is not None:
        ckpt.prune_deepspeed_states(out)
    return path


def resume_stage(out: Path, cfg: dict, model, opt, sched, engine=None) -> dict | None:
    """Load the newest verified checkpoint in ``{out}/checkpoints`` into model, optimizer, scheduler and the RNGs;
    returns its progress (step, data position, losses) or None. Checkpoints of another config (beyond
    RESUME_FREE_KEYS) are moved aside to ``checkpoints.superseded-<time>`` and the stage starts fresh. Under
    DeepSpeed (every rank calls it) the engine loads its own checkpoint only after it matches the manifest and loads
    without code (encoder.checkpoint.load_deepspeed_state); the weights it restores must equal the checkpoint's."""
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    if latest is None:
        return None
    tensors, state = ckpt.load_checkpoint(latest)
    rank, world = rank_world()
    _barrier()  # every rank has read the folder before rank 0 may move it
    if trajectory_config(state.get("config", {})) != trajectory_config(cfg):
        aside = out / f"checkpoints.superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        if rank == 0:
            os.replace(out / "checkpoints", aside)
            if (out / ckpt.DS_DIR).is_dir():
                os.replace(out / ckpt.DS_DIR, aside / ckpt.DS_DIR)
            log.warning("checkpoints in %s are from another config; moved to %s, starting the stage fresh",
                        out / "checkpoints", aside)
            print(f"warning: checkpoints of another config moved to {aside}; starting the stage fresh", flush=True)
        return None
    if state.get("world", 1) != world:
        raise ckpt.CheckpointError(f"checkpoint {latest} was written by {state.get('world', 1)} ranks; resume it "
                                   f"with as many (this run has {world})")
    named = dict(model.named_parameters())
    want = {n for n, p in named.items() if p.requires_grad}
    got = tensors.get("trainable", {})
    if set(got) != want:
        raise ckpt.CheckpointError(f"checkpoint {latest}: its trainable parameters do not match the model's "
                                   f"(missing {sorted(want - set(got))[:3]}, extra {sorted(set(got) - want)[:3]})")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for n, t in tensors.get("buffers", {}).items():
            buffers[n].copy_(t)
    if engine is None:
        with torch.no_grad():
            for n, t in got.items():
                named[n].copy_(t)
        opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors.get("optimizer", {}), state["optimizer"]))
    else:  # optimizer partitions and fp32 master weights; frozen weights are the model's own
        ckpt.load_deepspeed_state(engine, out, state.get("deepspeed"), load_module_strict=False)
        have = module_state(model, only=lambda n: n in want)
        bad = [n for n in sorted(want) if not torch.equal(have[n], got[n])]
        if bad:
            raise ckpt.CheckpointError(f"checkpoint {latest}: DeepSpeed's state in {out / ckpt.DS_DIR} does not "
                                       f"match its weights ({bad[:3]}); refusing to resume")
    sched.load_state_dict(dict(state["scheduler"], lr_lambdas=[None] * len(sched.lr_lambdas)))
    for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr  # the rate of the next step as the scheduler left it, whatever the optimizer load restored
    if rank == 0:
        _set_rng_state(tensors["rng"], state["rng"])
    else:
        mine = {k.split(".", 1)[1]: v for k, v in tensors["rng"].items() if k.startswith(f"rank{rank}.")}
        _set_rng_state(mine, state["rng_ranks"][rank - 1])
    return state


def train_stage(cfg: dict, llm_and_tokenizer=None, quiet: bool = False) -> dict:
    """Train one stage from a resolved config dict; returns the summary (also written to the run folder)."""
    from torch.utils.tensorboard import SummaryWriter

    checked = check_stage_config(cfg)  # every key, type, range and choice, before anything loads
    tcfg, dcfg = checked.train, checked.data
    if dcfg.shards and checked.audio.enabled and (checked.trainable.encoder or not checked.audio.cache_features):
        raise ConfigError("data.shards: clips from shards reach the model through the frozen-encoder token cache; "
                          "set trainable.encoder=false and audio.cache_features=true, or data.shards=null")
    if tcfg.align_steps and checked.audio.enabled and checked.trainable.encoder:
        raise ConfigError("train.align_steps fits the projector on cached frozen-encoder tokens; set "
                          "trainable.encoder=false or train.align_steps=0")
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    device = resolve_device(tcfg.device)
    rank, world = rank_world()

    init = resolve_init(cfg, tcfg)
    t_load = time.perf_counter()
    train_recs = load_records(dcfg.root, dcfg.train_split, dcfg.tasks, dcfg.kind, dcfg.max_train, seed, dcfg.qtypes)
    if not train_recs:  # checked before the model loads: a wrong data root costs no waiting
        raise ConfigError(f"stage {cfg.get('stage')}: no training records in {dcfg.root} for tasks={dcfg.tasks} "
                          f"qtypes={dcfg.qtypes} kind={dcfg.kind}")
    if dcfg.balance:
        train_recs = balance_records(train_recs, dcfg.balance, seed)
    model = build_from(cfg, init_from=init, device=device, llm_and_tokenizer=llm_and_tokenizer)
    model.train()
    counts = model.apply_trainable(verbose=False)
    if rank == 0 and not quiet:
        print(format_parameter_counts(counts))
    fmt = PromptFormatter.for_model(model)
    featurizer = AudioFeaturizer.for_model(model)
    eval_recs, from_shards = None, None
    if featurizer is not None and dcfg.shards:  # one pass over the shards caches the tokens; records point at them
        eval_recs = eval_records(dcfg, tcfg, seed)
        train_recs, eval_recs, from_shards = tokens_from_shards(
            featurizer, dcfg.shards, train_recs, eval_recs, rank=rank, world=world, num_workers=tcfg.num_workers,
            quarantine=out / f"quarantine.rank{rank}.jsonl", progress=rank == 0 and not quiet)
        if rank == 0 and not quiet:
            print(f"stage {cfg.get('stage')}: tokens of {from_shards['clips']} clips from shards {dcfg.shards} "
                  f"({from_shards['encoded_rank0']} encoded here, {from_shards['bad_records']} bad records, "
                  f"{from_shards['dropped_records']} instructions dropped)", flush=True)
    ds = InstructionDataset(train_recs, fmt)
    collate = Collator(model.tokenizer.pad_token_id, "right")
    steps_per_epoch = max(1, len(epoch_batches(len(ds), tcfg.batch_size, seed, 0, rank, world)) // tcfg.grad_accum)
    total = tcfg.total_steps(steps_per_epoch, world)  # an explicit budget wins over epochs (the data stream cycles)
    if featurizer is not None and not dcfg.shards and rank == 0:
        # frozen encoder: the clips the stage's batches will read (every rank's), encoded once and cached on disk
        read = planned_records(len(ds), tcfg.batch_size, seed, total * tcfg.grad_accum, world)
        featurizer.precompute(sorted({train_recs[i]["audio_path"] for i in read}),
                              desc=f"stage {cfg.get('stage')} audio tokens", progress=not quiet)
    if init is None and model.projector is not None and model.cfg.projector.standardize:
        # a fresh projector's feature statistics (a resumed stage then restores its own, with every trained weight)
        clips = sorted({r["audio_path"] for r in train_recs})
        pick = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed))[:model.cfg.projector.stats_clips]
        n = model.calibrate_projector(featurizer.tokens([clips[i] for i in sorted(pick.tolist())]))
        if rank == 0 and not quiet:
            print(f"projector feature statistics measured on {n} training clips")
    align = None
    if tcfg.align_steps and init is None and model.projector is not None:
        # before the optimizer exists (a DeepSpeed engine copies the weights it is given); every rank computes the
        # same steps from the same seed, a resumed stage then loads its checkpoint over them
        if rank == 0:
            featurizer.precompute(sorted({r["audio_path"] for r in train_recs if r.get("options")}),
                                  desc=f"stage {cfg.get('stage')} alignment tokens", progress=not quiet)
        _barrier()
        with progress_bar(total=tcfg.align_steps, desc=f"stage {cfg.get('stage')} projector alignment",
                          disable=rank != 0 or quiet, unit="step") as abar:
            align = align_projector(model, train_recs, featurizer.tokens, steps=tcfg.align_steps,
                                    batch_size=tcfg.align_batch, lr=tcfg.align_lr, tau=tcfg.align_tau, seed=seed,
                                    pool=tcfg.align_pool,
                                    bf16=use_bf16(tcfg.precision, device), progress=abar)
        if rank == 0 and not quiet:
            print(f"stage {cfg.get('stage')}: projector aligned in {align['seconds']}s on {align['records']} closed "
                  f"questions of {align['clips']} clips, loss {align['first_loss']:.3f} -> {align['last_loss']:.3f}, "
                  f"option accuracy {align['last_batch_option_accuracy']:.3f}", flush=True)
    answer_slots = AnswerSlots(model, train_recs) if tcfg.copy_warmup > 0 and model.projector is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = alm_param_groups(model, tcfg)
    engine = None
    if tcfg.deepspeed:
        import deepspeed

        if world == 1 and not torch.distributed.is_initialized():
            deepspeed_cpu_workaround()
            single_process_dist_env()

        # the engine steps the scheduler at accumulation boundaries; it is built on DeepSpeed's basic optimizer
        engine, opt, _, sched = deepspeed.initialize(
            model=model, model_parameters=groups, config=_ds_config(tcfg.deepspeed, tcfg, world, device),
            lr_scheduler=lambda o: cosine_schedule(o, total, int(tcfg.warmup_ratio * total)))
    else:
        opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        sched = cosine_schedule(opt, total, int(tcfg.warmup_ratio * total))

    # ---- resume: the newest verified checkpoint of this same config (safetensors + JSON; DeepSpeed's own files
    # only after they match the manifest in it and load without code)
    step, micro, tokens, losses, step_losses, position = 0, 0, 0, [], [], (0, 0)
    resumed = resume_stage(out, cfg, model, opt, sched, engine)
    if resumed is not None:
        step, micro, tokens = resumed["step"], resumed["micro"], resumed["tokens"]
        losses, step_losses, position = resumed["losses"], resumed["step_losses"], tuple(resumed["position"])
        if rank == 0 and not quiet:
            print(f"stage {cfg.get('stage')}: resumed from {out / 'checkpoints'} at step {step}", flush=True)
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    load_s = time.perf_counter() - t_load

    def stream(epoch: int, start: int):
        """Micro-batches from data position (epoch, batch index) on, crossing epochs: yields (epoch, next, batch)."""
        while True:
            plan = epoch_batches(len(ds), tcfg.batch_size, seed, epoch, rank, world)
            # its own generator: a DataLoader iterator otherwise draws its base seed from the global torch RNG,
            # one draw more in a resumed run than in an uninterrupted one (LoRA dropout would then differ)
            loader = torch.utils.data.DataLoader(ds, batch_sampler=plan[start:], collate_fn=collate,
                                                 num_workers=tcfg.num_workers,
                                                 generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63))
            for i, batch in enumerate(loader, start + 1):
                yield epoch, i, batch
            epoch, start = epoch + 1, 0

    t0 = time.perf_counter()
    start_step = step
    bar = progress_bar(total=total, initial=step, desc=f"stage {cfg.get('stage')}", disable=rank != 0 or quiet,
                       unit="step")
    use_amp = use_bf16(tcfg.precision, device)
    if rank == 0 and not quiet:
        print(f"[train-alm] precision: {precision_note(use_amp, device)}", flush=True)
    batches = stream(*position)
    while step < total:
        # one optimizer step = grad_accum micro-batches; each micro-batch's mean loss is weighted by its share of the
        # window's answer tokens, so the gradient is the token mean over the window (= one batch of the same rows)
        window = [next(batches) for _ in range(tcfg.grad_accum)]
        answer = [int((b["labels"][:, 1:] != -100).sum()) for _, _, b in window]
        n_tok = max(1, sum(answer))
        step_loss = 0.0
        for (epoch, nxt, batch), k in zip(window, answer):
            position = (epoch, nxt)
            micro += 1
            tokens += int((batch["labels"] != -100).sum())
            if k == 0 and engine is None:  # nothing to learn from (and an empty mean would be NaN)
                continue
            audio = featurizer.inputs(batch.pop("audios")) if featurizer is not None else {}
            alpha = copy_weight(step, total, tcfg.copy_warmup) if answer_slots is not None else 0.0
            if alpha > 0:
                audio.update(answer_slots(batch["index"], alpha))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = (engine or model)(**batch, **audio).loss
            w = k / n_tok
            if engine is not None:  # DeepSpeed divides by its gradient_accumulation_steps itself
                engine.backward(loss * (w * tcfg.grad_accum))
                engine.step()
            else:
                (loss * w).backward()
            losses.append(float(loss.detach()))
            step_loss += float(loss.detach()) * w
        if engine is None:
            if tcfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        step += 1
        step_losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)  # redraw at mininterval
        if writer is not None and (step % tcfg.log_every == 0 or step == 1):
            writer.add_scalar("train/loss", step_loss, step)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
        if tcfg.ckpt_every > 0 and (step % tcfg.ckpt_every == 0 or step == total):  # collective under DeepSpeed
            save_stage_checkpoint(out, cfg, model, opt, sched, tcfg.keep_last, {
                "step": step, "micro": micro, "tokens": tokens, "position": list(position), "losses": losses,
                "step_losses": step_losses}, engine)
    bar.close()
    train_s = time.perf_counter() - t0

    eval_loss = evaluate_loss(model, dcfg, fmt, tcfg, seed, eval_recs) if tcfg.eval_batches > 0 else None
    n = max(1, len(losses) // 10)
    summary = {"stage": cfg.get("stage"), "name": cfg.get("name"), "seed": seed, "steps": step,
               "micro_batches": micro, "train_records": len(train_recs), "train_seconds": round(train_s, 2),
               "load_seconds": round(load_s, 2), "seconds_per_step": round(train_s / max(1, step - start_step), 3),
               "answer_tokens": tokens, "resumed_from_step": start_step if resumed is not None else None,
               "step_losses": step_losses, "first_loss": float(np.mean(losses[:n])), "last_loss": float(np.mean(losses[-n:])),
               "eval_loss": eval_loss, "align": align, "parameters": counts, "init_from": str(init) if init else None,
               "examples": step * tcfg.batch_size * tcfg.grad_accum * world,
               **stage_sources(cfg),
               "feature_cache_hits": featurizer.hits if featurizer is not None else 0,
               "clips_encoded": featurizer.encoded if featurizer is not None else 0,
               **({"train_shards": from_shards} if from_shards is not None else {})}
    if writer is not None:
        if eval_loss is not None:
            writer.add_scalar("eval/loss", eval_loss, step)
        writer.close()
    art = save_artifact(model, out / "artifact", cfg, meta={"stage": cfg.get("stage"), "seed": seed,
                                                          "train_summary": summary})
    summary["artifact"] = str(art)
    if rank == 0:
        atomic_write_json(out / "summary.json", summary)
        if not quiet:
            print(f"stage {cfg.get('stage')}: {step} steps in {train_s:.1f}s, loss {summary['first_loss']:.3f} -> "
                  f"{summary['last_loss']:.3f}" + (f", eval loss {eval_loss:.3f}" if eval_loss is not None else "")
                  + f"; artifact {art}")
    return summary


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


def run_stages(config_paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (), quiet: bool = False,
               share_llm: bool = False) -> list[dict]:
    """Run stage configs in order (overrides applied to each); returns the summaries."""
    summaries = []
    for path in config_paths:
        cfg = load_config(path, overrides)
        summaries.append(train_stage(cfg, quiet=quiet))
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm train-alm", description=__doc__.split("\n")[0])
    ap.add_argument("--config", nargs="+", default=None, help="stage YAML(s), run in order")
    ap.add_argument("--all", action="store_true", help="run configs/alm/stage1..4.yaml in order")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides (applied to every stage)")
    args = ap.parse_args(argv)
    if not args.config and not args.all:
        ap.error("give --config PATH [PATH ...] or --all")
    # `--config a.yaml b.yaml k=v` : argparse's nargs="+" swallows the overrides too; split them back out
    overrides = [c for c in (args.config or []) if "=" in c] + list(args.overrides)
    configs = [c for c in (args.config or []) if "=" not in c]
    paths = [str(p) for p in STAGES] if args.all else configs
    for path in paths:  # check every stage's config before the first one starts
        check_stage_config(load_config(path, overrides))
    if os.environ.get("WORLD_SIZE", "1") != "1" and not torch.distributed.is_initialized():
        import deepspeed

        deepspeed_cpu_workaround()
        deepspeed.init_distributed()
    run_stages(paths, overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
