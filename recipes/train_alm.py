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
``{output_dir}/{name}/stage{N}/`` with ``config.yaml`` (the checked config, every default filled in), TensorBoard
events, ``summary.json`` and ``artifact/`` (see :mod:`mosaic_alm.artifact`). The whole config is checked (types,
ranges, choices, unknown keys; :mod:`mosaic_alm.stage_config`) before anything loads.

:func:`train_stage` is the job: setup (run folder, training records, model, the audio tokens the batches will read,
a fresh projector's feature statistics and alignment, the optimizer, resume), the loop (optimizer steps over
micro-batches in a seeded order, :mod:`mosaic_alm.stage_data`; checkpoints, :mod:`mosaic_alm.stage_state`), save
(held-out loss, ``summary.json``, the artifact).

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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mosaic_alm.align import AnswerSlots, align_projector, copy_weight
from mosaic_alm.artifact import build_from, save_artifact
from mosaic_alm.audio_lm import format_parameter_counts
from mosaic_alm.data import Collator, InstructionDataset, PromptFormatter
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.stage_config import (
    STAGES,
    StageConfig,
    check_stage_config,
    resolve_init,
    run_dir,
    stage_config_dict,
    stage_sources,
)
from mosaic_alm.stage_data import (
    epoch_batches,
    eval_records,
    evaluate_loss,
    micro_batches,
    planned_records,
    tokens_from_shards,
    training_records,
)
from mosaic_alm.stage_optim import stage_optimizer
from mosaic_alm.stage_state import barrier, resume_stage, save_stage_checkpoint
from mosaic_core.config import load_config, save_yaml
from mosaic_core.io import atomic_write_json
from mosaic_core.progress import progress_bar
from mosaic_core.runtime import (
    deepspeed_cpu_workaround,
    precision_note,
    rank_world,
    resolve_device,
    seed_everything,
    use_bf16,
)


@dataclass
class Progress:
    """Where a stage is: optimizer steps, micro-batches and answer tokens done, the data position (epoch, next batch
    index) and every micro-batch's and step's loss (what a checkpoint keeps beyond the weights)."""

    step: int = 0
    micro: int = 0
    tokens: int = 0
    position: tuple[int, int] = (0, 0)
    losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, state: dict | None) -> Progress:
        """The progress a checkpoint's state holds (:func:`mosaic_alm.stage_state.resume_stage`); None: the start."""
        if state is None:
            return cls()
        return cls(state["step"], state["micro"], state["tokens"], tuple(state["position"]), state["losses"],
                   state["step_losses"])

    def as_dict(self) -> dict:
        return {"step": self.step, "micro": self.micro, "tokens": self.tokens, "position": list(self.position),
                "losses": self.losses, "step_losses": self.step_losses}


@dataclass
class Stepper:
    """One optimizer step over a window of ``grad_accum`` micro-batches, through the model or its DeepSpeed engine."""

    model: torch.nn.Module
    engine: object
    opt: object
    sched: object
    featurizer: AudioFeaturizer | None
    answer_slots: AnswerSlots | None
    cfg: StageConfig
    total: int
    device: torch.device

    def __post_init__(self):
        self.params = [q for q in self.model.parameters() if q.requires_grad]  # what clipping sees (without DeepSpeed)
        self.use_amp = use_bf16(self.cfg.train.precision, self.device)

    def __call__(self, window: list, p: Progress) -> float:
        """Each micro-batch's mean loss is weighted by its share of the window's answer tokens, so the gradient is
        the token mean over the window (= one batch of the same rows). Returns the step's loss."""
        tcfg, engine = self.cfg.train, self.engine
        answer = [int((b["labels"][:, 1:] != -100).sum()) for _, _, b in window]
        n_tok, step_loss = max(1, sum(answer)), 0.0
        for (epoch, nxt, batch), k in zip(window, answer):
            p.position, p.micro = (epoch, nxt), p.micro + 1
            p.tokens += int((batch["labels"] != -100).sum())
            if k == 0 and engine is None:  # nothing to learn from (and an empty mean would be NaN)
                continue
            audio = self.featurizer.inputs(batch.pop("audios")) if self.featurizer is not None else {}
            alpha = copy_weight(p.step, self.total, tcfg.copy_warmup) if self.answer_slots is not None else 0.0
            if alpha > 0:
                audio.update(self.answer_slots(batch["index"], alpha))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                loss = (engine or self.model)(**batch, **audio).loss
            w = k / n_tok
            if engine is not None:  # DeepSpeed divides by its gradient_accumulation_steps itself
                engine.backward(loss * (w * tcfg.grad_accum))
                engine.step()
            else:
                (loss * w).backward()
            p.losses.append(float(loss.detach()))
            step_loss += float(loss.detach()) * w
        if engine is None:
            if tcfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, tcfg.max_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
        return step_loss


def train_stage(cfg: dict, llm_and_tokenizer=None, quiet: bool = False) -> dict:
    """Train one stage from a resolved config dict; returns the summary (also written to the run folder)."""
    from torch.utils.tensorboard import SummaryWriter

    checked = check_stage_config(cfg)  # every key, type, range and choice, before anything loads
    tcfg, seed, (rank, world) = checked.train, checked.seed, rank_world()
    talk = rank == 0 and not quiet
    # ---- setup: run folder, records, model, audio tokens, optimizer, resume
    seed_everything(seed)
    out = run_dir(checked)
    out.mkdir(parents=True, exist_ok=True)
    resolved = stage_config_dict(checked)  # every default filled in: what the run folder and its checkpoints record
    save_yaml(resolved, out / "config.yaml")
    device, init = resolve_device(tcfg.device), resolve_init(checked)
    t_load = time.perf_counter()
    train_recs = training_records(checked)
    model = build_from(resolved, init_from=init, device=device, llm_and_tokenizer=llm_and_tokenizer)
    model.train()
    counts = model.apply_trainable(verbose=False)
    if talk:
        print(format_parameter_counts(counts))
    fmt, featurizer = PromptFormatter.for_model(model), AudioFeaturizer.for_model(model)
    train_recs, eval_recs, from_shards = shard_tokens(checked, featurizer, train_recs, out, talk)
    ds, collate = InstructionDataset(train_recs, fmt), Collator(model.tokenizer.pad_token_id, "right")
    lengths = ds.lengths() if tcfg.group_by_length else None
    steps_per_epoch = max(1, len(epoch_batches(len(ds), tcfg.batch_size, seed, 0, rank, world)) // tcfg.grad_accum)
    total = tcfg.total_steps(steps_per_epoch, world)  # an explicit budget wins over epochs (the data stream cycles)
    prepare_projector(checked, model, featurizer, train_recs, total, init, talk, lengths)
    align = align_fresh_projector(checked, model, featurizer, train_recs, init, device, talk)
    answer_slots = AnswerSlots(model, train_recs) if tcfg.copy_warmup > 0 and model.projector is not None else None
    engine, opt, sched = stage_optimizer(model, tcfg, total, world, device)
    # the newest verified checkpoint of this same config (DeepSpeed's own files only after they match its manifest)
    resumed = resume_stage(out, resolved, model, opt, sched, engine)
    p = Progress.from_checkpoint(resumed)
    if resumed is not None and talk:
        print(f"stage {checked.stage}: resumed from {out / 'checkpoints'} at step {p.step}", flush=True)
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    load_s = time.perf_counter() - t_load

    # ---- loop: optimizer steps until the budget, a checkpoint every ckpt_every
    t0, start_step = time.perf_counter(), p.step
    step_once = Stepper(model, engine, opt, sched, featurizer, answer_slots, checked, total, device)
    bar = progress_bar(total=total, initial=p.step, desc=f"stage {checked.stage}", disable=not talk, unit="step")
    if talk:
        print(f"[train-alm] precision: {precision_note(use_bf16(tcfg.precision, device), device)}", flush=True)
    batches = micro_batches(ds, collate, tcfg.batch_size, tcfg.num_workers, seed, p.position, rank, world, lengths)
    while p.step < total:
        step_loss = step_once([next(batches) for _ in range(tcfg.grad_accum)], p)
        p.step += 1
        p.step_losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)  # redraw at mininterval
        if writer is not None and (p.step % tcfg.log_every == 0 or p.step == 1):
            writer.add_scalar("train/loss", step_loss, p.step)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], p.step)
        if tcfg.ckpt_every > 0 and (p.step % tcfg.ckpt_every == 0 or p.step == total):  # collective under DeepSpeed
            save_stage_checkpoint(out, resolved, model, opt, sched, tcfg.keep_last, p.as_dict(), engine)
    bar.close()
    train_s = time.perf_counter() - t0

    # ---- save: held-out loss, summary, artifact
    eval_loss = evaluate_loss(model, checked.data, fmt, tcfg, seed, eval_recs) if tcfg.eval_batches > 0 else None
    summary = stage_summary(checked, p, train_recs, featurizer, init, from_shards, world, start_step, resumed,
                            times=(train_s, load_s), eval_loss=eval_loss, align=align, counts=counts)
    if writer is not None:
        if eval_loss is not None:
            writer.add_scalar("eval/loss", eval_loss, p.step)
        writer.close()
    art = save_artifact(model, out / "artifact", resolved, meta={"stage": checked.stage, "seed": seed,
                                                               "train_summary": summary})
    summary["artifact"] = str(art)
    if rank == 0:
        atomic_write_json(out / "summary.json", summary)
        if not quiet:
            print(f"stage {checked.stage}: {p.step} steps in {train_s:.1f}s, loss {summary['first_loss']:.3f} -> "
                  f"{summary['last_loss']:.3f}" + (f", eval loss {eval_loss:.3f}" if eval_loss is not None else "")
                  + f"; artifact {art}")
    return summary


def shard_tokens(cfg: StageConfig, featurizer: AudioFeaturizer | None, train_recs: list[dict], out: Path,
                 talk: bool) -> tuple[list[dict], list[dict] | None, dict | None]:
    """With ``data.shards`` and audio: one pass over the shards caches the tokens and the records point at them;
    returns (training records, eval records, the shards' numbers), else (the records, None, None)."""
    if featurizer is None or not cfg.data.shards:
        return train_recs, None, None
    rank, world = rank_world()
    train_recs, eval_recs, from_shards = tokens_from_shards(
        featurizer, cfg.data.shards, train_recs, eval_records(cfg.data, cfg.train, cfg.seed), rank=rank,
        world=world, num_workers=cfg.train.num_workers, quarantine=out / f"quarantine.rank{rank}.jsonl",
        progress=talk)
    if talk:
        print(f"stage {cfg.stage}: tokens of {from_shards['clips']} clips from shards {cfg.data.shards} "
              f"({from_shards['encoded_rank0']} encoded here, {from_shards['bad_records']} bad records, "
              f"{from_shards['dropped_records']} instructions dropped)", flush=True)
    return train_recs, eval_recs, from_shards


def prepare_projector(cfg: StageConfig, model, featurizer: AudioFeaturizer | None, train_recs: list[dict],
                      total: int, init: Path | None, talk: bool, lengths: list[int] | None = None) -> None:
    """Frozen encoder: the clips the stage's batches will read (every rank's) encoded once and cached on disk; a
    fresh projector's feature statistics measured on training clips (a resumed stage then restores its own, with
    every trained weight)."""
    rank, world = rank_world()
    tcfg = cfg.train
    if featurizer is not None and not cfg.data.shards and rank == 0:
        read = planned_records(len(train_recs), tcfg.batch_size, cfg.seed, total * tcfg.grad_accum, world, lengths)
        featurizer.precompute(sorted({train_recs[i]["audio_path"] for i in read}),
                              desc=f"stage {cfg.stage} audio tokens", progress=talk)
    if init is None and model.projector is not None and model.cfg.projector.standardize:
        clips = sorted({r["audio_path"] for r in train_recs})
        pick = torch.randperm(len(clips), generator=torch.Generator().manual_seed(cfg.seed))
        pick = pick[:model.cfg.projector.stats_clips]
        n = model.calibrate_projector(featurizer.tokens([clips[i] for i in sorted(pick.tolist())]))
        if talk:
            print(f"projector feature statistics measured on {n} training clips")


def align_fresh_projector(cfg: StageConfig, model, featurizer: AudioFeaturizer | None, train_recs: list[dict],
                          init: Path | None, device: torch.device, talk: bool) -> dict | None:
    """``train.align_steps``: a fresh projector alone first, fitted to the closed answers' word embeddings, before
    the optimizer exists (a DeepSpeed engine copies the weights it is given). Every rank computes the same steps
    from the same seed; a resumed stage then loads its checkpoint over them. Returns the alignment's numbers."""
    tcfg = cfg.train
    if not (tcfg.align_steps and init is None and model.projector is not None):
        return None
    rank, _ = rank_world()
    if rank == 0:
        featurizer.precompute(sorted({r["audio_path"] for r in train_recs if r.get("options")}),
                              desc=f"stage {cfg.stage} alignment tokens", progress=talk)
    barrier()
    with progress_bar(total=tcfg.align_steps, desc=f"stage {cfg.stage} projector alignment", disable=not talk,
                      unit="step") as abar:
        align = align_projector(model, train_recs, featurizer.tokens, steps=tcfg.align_steps,
                                batch_size=tcfg.align_batch, lr=tcfg.align_lr, tau=tcfg.align_tau, seed=cfg.seed,
                                pool=tcfg.align_pool, bf16=use_bf16(tcfg.precision, device), progress=abar)
    if talk:
        print(f"stage {cfg.stage}: projector aligned in {align['seconds']}s on {align['records']} closed "
              f"questions of {align['clips']} clips, loss {align['first_loss']:.3f} -> {align['last_loss']:.3f}, "
              f"option accuracy {align['last_batch_option_accuracy']:.3f}", flush=True)
    return align


def stage_summary(cfg: StageConfig, p: Progress, train_recs: list[dict], featurizer: AudioFeaturizer | None,
                  init: Path | None, from_shards: dict | None, world: int, start_step: int, resumed: dict | None, *,
                  times: tuple[float, float], eval_loss: float | None, align: dict | None, counts: dict) -> dict:
    """The stage's ``summary.json``: steps, time, losses (first and last tenth of the micro-batches), held-out loss,
    alignment, parameter counts, sources, cache use."""
    train_s, load_s = times
    n = max(1, len(p.losses) // 10)
    return {"stage": cfg.stage, "name": cfg.name, "seed": cfg.seed, "steps": p.step,
            "micro_batches": p.micro, "train_records": len(train_recs), "train_seconds": round(train_s, 2),
            "load_seconds": round(load_s, 2), "seconds_per_step": round(train_s / max(1, p.step - start_step), 3),
            "answer_tokens": p.tokens, "resumed_from_step": start_step if resumed is not None else None,
            "step_losses": p.step_losses, "first_loss": float(np.mean(p.losses[:n])),
            "last_loss": float(np.mean(p.losses[-n:])), "eval_loss": eval_loss, "align": align, "parameters": counts,
            "init_from": str(init) if init else None,
            "examples": p.step * cfg.train.batch_size * cfg.train.grad_accum * world,
            **stage_sources(cfg),
            "feature_cache_hits": featurizer.hits if featurizer is not None else 0,
            "clips_encoded": featurizer.encoded if featurizer is not None else 0,
            **({"train_shards": from_shards} if from_shards is not None else {})}


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
