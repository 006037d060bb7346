"""AudioMosaic pretraining: one readable recipe for one process, torch.distributed, or the ``deepspeed`` launcher.

    python -m encoder.train --config configs/pretrain/tiny.yaml [key=value ...]
    deepspeed --num_gpus 8 -m encoder.train --config configs/pretrain/vit_base.yaml distributed.backend=deepspeed
    deepspeed --hostfile hosts -m encoder.train --config ... distributed.backend=deepspeed   # several nodes

Each step: two views of every clip (waveform augmentations), a time view keeping whole time columns and a
frequency view keeping whole frequency rows, both through the ViT, pooled, the projector over BOTH views at once
(BatchNorm statistics of the global batch), NT-Xent with negatives gathered across ranks. With
``train.chunk_size`` the step is computed GradCache-style: exact loss and gradients of the whole batch while only
one chunk's activations are alive. Every random draw is derived from (seed, step, rank) or (seed, epoch, index),
so a resumed run continues bit-identically.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import ConfigError, from_dict, load_config, save_yaml
from .data.dataset import (AugmentConfig, EpochBatchSampler, PretrainDataset, cache_features, collate_views,
                           derive_seed)
from .features import FbankConfig
from .loss import nt_xent
from .masking import view_indices
from .model import AudioMosaicPretrainModel, EncoderConfig, ProjectorConfig, count_parameters

log = logging.getLogger("encoder.train")


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite losses, a bad clip with ``data.on_bad_clip=fail``); says why."""


@dataclass
class MaskingConfig:
    time_view: str = "time"
    time_ratio: float = 0.6  # fraction of time columns DROPPED in the time view (keeps 40 %)
    freq_view: str = "freq"
    freq_ratio: float = 0.4  # fraction of frequency rows DROPPED in the frequency view (keeps 60 %)


@dataclass
class LossConfig:
    temperature: float = 0.1


@dataclass
class DataConfig:
    root: str = "data/embedded-small"
    manifests: list = field(default_factory=lambda: ["keywords/manifest.jsonl"])
    splits: list = field(default_factory=lambda: ["train"])
    target_frames: int = 128
    num_workers: int = 0
    cached_features: bool = False
    on_bad_clip: str = "skip"  # or "fail"
    max_seconds: float = 600.0


@dataclass
class OptimConfig:
    lr: float = 6e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 0
    grad_clip: float = 1.0  # <= 0 disables clipping


@dataclass
class TrainConfig:
    batch_size: int = 512  # global batch (all ranks together)
    epochs: int = 400
    max_steps: int = 0  # > 0 caps the run (overrides epochs)
    chunk_size: int = 0  # > 0: GradCache feature caching with chunks of this many clips per rank
    precision: str = "auto"  # auto (bf16 where supported on GPU), bf16, fp32
    device: str = "auto"
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default (tiny models on busy CPUs: 1)
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 3
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    progress: bool = True


@dataclass
class DistConfig:
    backend: str = "none"  # none (single process or torchrun -> torch), torch, deepspeed
    deepspeed_config: str = "configs/deepspeed/zero2.json"


SECTIONS = {"model": EncoderConfig, "projector": ProjectorConfig, "masking": MaskingConfig, "loss": LossConfig,
            "data": DataConfig, "augment": AugmentConfig, "optim": OptimConfig, "train": TrainConfig,
            "distributed": DistConfig}


@dataclass
class PretrainConfig:
    seed: int = 0
    run_dir: str = "runs/pretrain"
    objective: str = "contrastive"  # or "mae" (the same-budget masked-reconstruction baseline)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    mae: dict = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistConfig = field(default_factory=DistConfig)

    @classmethod
    def from_raw(cls, raw: dict) -> "PretrainConfig":
        raw = dict(raw)
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {unknown} in pretraining config")
        kw = {k: from_dict(SECTIONS[k], raw.pop(k), k) for k in list(raw) if k in SECTIONS}
        cfg = cls(**raw, **kw)
        if cfg.objective not in ("contrastive", "mae"):
            raise ConfigError(f"objective must be 'contrastive' or 'mae', got {cfg.objective!r}")
        if cfg.data.on_bad_clip not in ("skip", "fail"):
            raise ConfigError(f"data.on_bad_clip must be 'skip' or 'fail', got {cfg.data.on_bad_clip!r}")
        if cfg.distributed.backend not in ("none", "torch", "deepspeed"):
            raise ConfigError(f"distributed.backend must be none, torch or deepspeed, got {cfg.distributed.backend!r}")
        if cfg.data.target_frames % cfg.model.patch_size:
            raise ConfigError(f"data.target_frames {cfg.data.target_frames} must be a multiple of "
                              f"{cfg.model.patch_size}")
        return cfg


# ------------------------------------------------------------------------------------------------- distributed
def init_distributed(cfg: PretrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.device == "auto":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
    else:
        device = torch.device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if cfg.distributed.backend == "deepspeed":
            import deepspeed

            if device.type == "cpu" and os.environ.get("MOSAIC_ALM_DS_SHM", "0") != "1":
                # the shared-memory comm op needs a JIT C++ build (76 s); gloo alone is enough on CPU
                import importlib

                importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
            deepspeed.init_distributed(dist_backend=backend, timeout=_dist_timeout())
        else:
            dist.init_process_group(backend=backend, timeout=_dist_timeout())
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def _dist_timeout():
    """How long a collective may wait for a rank that is gone before it raises (MOSAIC_ALM_DIST_TIMEOUT_S)."""
    import datetime

    return datetime.timedelta(seconds=float(os.environ.get("MOSAIC_ALM_DIST_TIMEOUT_S", "600")))


def all_reduce_mean_grads(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, world: int, device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


# --------------------------------------------------------------------------------------------------------- steps
def autocast_ctx(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"
                                           and torch.cuda.is_bf16_supported())
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {cfg.precision!r}")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def draw_masks(cfg: PretrainConfig, batch: int, grid: tuple[int, int], step: int, rank: int, device):
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mask", step, rank))
    m = cfg.masking
    k1 = view_indices(m.time_view, batch, *grid, m.time_ratio, g, device)
    k2 = view_indices(m.freq_view, batch, *grid, m.freq_ratio, g, device)
    return k1, k2


def _slice(keep, sl):
    return None if keep is None else keep[sl]


def _finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss))


def contrastive_step(model: AudioMosaicPretrainModel, views: torch.Tensor, cfg: PretrainConfig, step: int,
                     rank: int, backward, amp, agree=_finite) -> dict:
    """Forward + backward of one step; returns loss/accuracy (detached). ``backward(scalar)`` runs the backward;
    it runs only if ``agree(loss)`` (all ranks finite) so no rank enters a collective the others skip."""
    b = views.shape[0]
    x1, x2 = views[:, 0], views[:, 1]
    grid = model.encoder.cfg.grid(views.shape[2])
    k1, k2 = draw_masks(cfg, b, grid, step, rank, views.device)
    chunk = cfg.train.chunk_size
    tau = cfg.loss.temperature
    if chunk <= 0 or chunk >= b:
        torch.manual_seed(derive_seed(cfg.seed, "droppath", step, rank))
        with amp:
            z1, z2 = model(x1, k1, x2, k2)
        out = nt_xent(z1, z2, tau)
        if backward is not None and agree(out["loss"]):
            backward(out["loss"])
        return {"loss": out["loss"].detach(), "accuracy": out["accuracy"]}
    # GradCache: (1) pooled features of every chunk without a graph, (2) projector + loss on the whole batch,
    # (3) replay each chunk with the same random draws and push the cached feature gradients through it.
    enc = model.encoder
    slices = [slice(i, min(i + chunk, b)) for i in range(0, b, chunk)]
    seeds = [derive_seed(cfg.seed, "droppath", step, rank, c) for c in range(len(slices))]

    def encode(sl, seed):
        torch.manual_seed(seed)
        with amp:
            return enc(x1[sl], _slice(k1, sl)).float(), enc(x2[sl], _slice(k2, sl)).float()

    with torch.no_grad():
        cached = [encode(sl, s) for sl, s in zip(slices, seeds)]
    p1 = torch.cat([c[0] for c in cached]).requires_grad_(True)
    p2 = torch.cat([c[1] for c in cached]).requires_grad_(True)
    with amp:
        z = model.projector(torch.cat([p1, p2]))
    out = nt_xent(z[:b], z[b:], tau)
    if backward is None or not agree(out["loss"]):
        return {"loss": out["loss"].detach(), "accuracy": out["accuracy"]}
    backward(out["loss"])
    g1, g2 = p1.grad, p2.grad
    for sl, s in zip(slices, seeds):
        q1, q2 = encode(sl, s)
        backward((q1 * g1[sl]).sum() + (q2 * g2[sl]).sum())
    return {"loss": out["loss"].detach(), "accuracy": out["accuracy"]}


def mae_step(model, views, cfg: PretrainConfig, step: int, rank: int, backward, amp, agree=_finite) -> dict:
    """Masked reconstruction on the first view (same data, steps and batch as the contrastive objective)."""
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mask", step, rank))
    torch.manual_seed(derive_seed(cfg.seed, "droppath", step, rank))
    with amp:
        out = model(views[:, 0], generator=g)
    loss = out["loss"].float()
    if backward is not None and agree(loss):
        backward(loss)
    return {"loss": loss.detach(), "accuracy": torch.tensor(float("nan"))}


# ---------------------------------------------------------------------------------------------------- schedule
def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine from ``lr`` to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_at(step: int, total: int, o: OptimConfig) -> float:
    return warmup_cosine(step, total, o.warmup_steps, o.lr, o.min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("cls_token") or "mask_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------------- data
def load_rows(cfg: PretrainConfig) -> list[dict]:
    from .data.manifest import read_manifest

    root = Path(cfg.data.root)
    rows = []
    for m in cfg.data.manifests:
        for r in read_manifest(root / m, check_files=False):
            if not cfg.data.splits or r.get("split") in cfg.data.splits:
                rows.append(r)
    if not rows:
        raise ConfigError(f"no clips in {cfg.data.manifests} under {root} for splits {cfg.data.splits}")
    return rows


def build_model(cfg: PretrainConfig) -> torch.nn.Module:
    if cfg.objective == "contrastive":
        return AudioMosaicPretrainModel(cfg.model, cfg.projector)
    from .mae import MAEConfig, MAEPretrainModel

    return MAEPretrainModel(cfg.model, from_dict(MAEConfig, cfg.mae, "mae"))


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------- training
def train(cfg: PretrainConfig, raw: dict | None = None) -> dict:
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    rank, world, device = init_distributed(cfg)
    run = Path(cfg.run_dir)
    is_main = rank == 0
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_yaml(raw if raw is not None else asdict(cfg), run / "config.yaml")
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg).to(device)
    if is_main:
        counts = {n: count_parameters(m, True) for n, m in model.named_children()}
        own = sum(p.numel() for p in model.parameters(recurse=False) if p.requires_grad)
        if own:
            counts["(top-level)"] = own
        print(f"[pretrain] objective={cfg.objective} world={world} device={device} trainable parameters: "
              + ", ".join(f"{n}={c:,}" for n, c in counts.items()), flush=True)

    rows = load_rows(cfg)
    fb = FbankConfig(sample_rate=cfg.model.sample_rate, num_mel_bins=cfg.model.num_mel_bins,
                     target_frames=cfg.data.target_frames, mean=cfg.model.norm_mean, std=cfg.model.norm_std,
                     max_seconds=cfg.data.max_seconds)
    features = None
    if cfg.data.cached_features:
        cache = Path(cfg.data.root) / "cache" / f"fbank_{derive_seed(*[r['id'] for r in rows]):x}.safetensors"
        if is_main:
            features = cache_features(rows, fb, cache)
        if world > 1:
            dist.barrier()
        if not is_main:
            features = cache_features(rows, fb, cache)
    dataset = PretrainDataset(rows, fb, cfg.augment, cfg.seed, features)
    if len(rows) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the {len(rows)} training clips")
    steps_per_epoch = len(rows) // cfg.train.batch_size
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * steps_per_epoch

    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    engine = None
    if cfg.distributed.backend == "deepspeed":
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
        model = engine.module
        if is_main:
            print(f"[pretrain] deepspeed ZeRO stage {engine.zero_optimization_stage()}", flush=True)

    # ---- resume
    start_step, history = 0, []
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    if latest is not None:
        tensors, state = ckpt.load_checkpoint(latest)
        model.load_state_dict(tensors["model"])
        if engine is None and "optimizer" in tensors:
            optimizer.load_state_dict(ckpt.unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
        elif engine is not None:
            engine.load_checkpoint(str(run / "ds_checkpoints"), tag=f"step_{state['step']}",
                                   load_module_strict=True, load_lr_scheduler_states=False)
        start_step, history = state["step"], state.get("history", [])
        if is_main:
            print(f"[pretrain] resumed from {latest} at step {start_step}", flush=True)

    sampler = EpochBatchSampler(len(rows), cfg.train.batch_size, rank, world, cfg.seed, start_step, total)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_views,
                                         num_workers=cfg.data.num_workers,
                                         persistent_workers=cfg.data.num_workers > 0,
                                         prefetch_factor=2 if cfg.data.num_workers > 0 else None)
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
    amp = autocast_ctx(cfg.train, device)
    params = [p for p in model.parameters() if p.requires_grad]
    backward = engine.backward if engine is not None else (lambda loss: loss.backward())
    step_fn = contrastive_step if cfg.objective == "contrastive" else mae_step
    bad_steps, bad_clips, last_finite = 0, 0, None
    skipped_steps = sum(1 for h in history if h.get("skipped"))
    last_finite = next((h["loss"] for h in reversed(history) if h.get("loss") is not None), None)
    quarantine = run / f"quarantine.rank{rank}.jsonl"
    bar = None
    if is_main and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_step, desc="pretrain", dynamic_ncols=True)
    model.train()
    t_last, step = time.time(), start_step
    for batch in loader:
        if batch["bad"]:
            bad_clips += len(batch["bad"])
            with open(quarantine, "a") as f:
                for b in batch["bad"]:
                    f.write(json.dumps({"step": step, **b}) + "\n")
            if cfg.data.on_bad_clip == "fail":
                raise TrainingError(f"bad clip {batch['bad'][0]['id']}: {batch['bad'][0]['error']} "
                                    f"(data.on_bad_clip=fail; listed in {quarantine})")
        views = batch["views"].to(device, non_blocking=True)
        lr = lr_at(step, total, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
        verdict = {}

        def agree(loss, _v=verdict):
            _v["ok"] = not any_rank(not _finite(loss), world, device)
            return _v["ok"]

        # BatchNorm running statistics move in the forward pass: a skipped step must not leave them poisoned
        saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
        out = step_fn(model, views, cfg, step, rank, backward, amp, agree)
        skipped = not verdict.get("ok", False)
        if skipped:
            bad_steps += 1
            skipped_steps += 1
            with torch.no_grad():
                for b, old in saved_buffers:
                    b.copy_(old)
            if engine is None:
                optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss on some rank; step skipped (%d in a row, %d in all)", step,
                        bad_steps, skipped_steps)
            if bad_steps >= cfg.train.max_bad_steps:
                raise TrainingError(f"stopping: {bad_steps} consecutive non-finite losses, the last at step {step} "
                                    f"(lr {lr:.3g}, last finite loss {last_finite}); "
                                    f"train.max_bad_steps={cfg.train.max_bad_steps}")
        else:
            bad_steps = 0
            last_finite = float(out["loss"])
            if engine is not None:
                engine.step()
            else:
                all_reduce_mean_grads(params, world)
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
        step += 1
        loss_val, acc_val = float(out["loss"]), float(out["accuracy"])
        if skipped or not math.isfinite(loss_val):  # no NaN/inf in any output: a skipped step records None
            history.append({"step": step, "loss": None, "accuracy": None, "lr": lr, "skipped": True})
            loss_val = acc_val = float("nan")
        else:
            history.append({"step": step, "loss": loss_val, "accuracy": acc_val if math.isfinite(acc_val) else None,
                            "lr": lr})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}", acc=f"{acc_val:.3f}")
        if writer is not None and skipped:
            writer.add_scalar("train/skipped_steps", skipped_steps, step)
        if writer is not None and not skipped and (step % cfg.train.log_every == 0 or step == total):
            dt = time.time() - t_last
            t_last = time.time()
            writer.add_scalar("train/loss", loss_val, step)
            writer.add_scalar("train/contrastive_accuracy", acc_val, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/clips_per_s", cfg.train.batch_size * cfg.train.log_every / max(dt, 1e-9), step)
            writer.add_scalar("train/memory_mb", memory_mb(device), step)
            writer.add_scalar("data/bad_clips", bad_clips, step)
            if bar is None:
                print(f"[pretrain] step {step}/{total} loss {loss_val:.4f} acc {acc_val:.3f} lr {lr:.2e} "
                      f"{cfg.train.batch_size * cfg.train.log_every / max(dt, 1e-9):.1f} clips/s", flush=True)
        if step % cfg.train.ckpt_every == 0 or step == total:
            save(run, step, model, optimizer, engine, cfg, history, is_main, world, raw)
        if step >= total:
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    summary = {"steps": step, "history": history, "bad_clips": bad_clips, "skipped_steps": skipped_steps}
    if is_main:
        export_encoder(model.encoder, run / "encoder")
        (run / "history.json").write_text(json.dumps(history))
    if world > 1:
        dist.barrier()
    return summary


def save(run: Path, step: int, model, optimizer, engine, cfg, history, is_main, world, raw) -> None:
    if engine is not None:  # every rank writes its optimizer partition (DeepSpeed's own format)
        engine.save_checkpoint(str(run / "ds_checkpoints"), tag=f"step_{step}")
    if is_main:
        tensors = {"model": {k: v for k, v in model.state_dict().items()}}
        state = {"step": step, "history": history, "config": raw if raw is not None else asdict(cfg),
                 "world_size": world}
        if engine is None:
            opt_tensors, opt_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
            tensors["optimizer"] = opt_tensors
            state["optimizer"] = opt_rest
        ckpt.save_checkpoint(run / "checkpoints", step, tensors, state, keep_last=cfg.train.keep_last)
    if world > 1:
        dist.barrier()


def export_encoder(encoder, folder: Path) -> None:
    """Save the encoder alone as a Hugging Face folder (config + safetensors + feature extractor), atomically."""
    import shutil

    from .hf import AudioMosaicConfig, AudioMosaicFeatureExtractor, AudioMosaicModel

    hf_cfg = AudioMosaicConfig(**asdict(encoder.cfg))
    model = AudioMosaicModel(hf_cfg)
    model.encoder.load_state_dict(encoder.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    AudioMosaicFeatureExtractor.from_model_config(hf_cfg).save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mosaic-alm pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML recipe (configs/pretrain/*.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return p.parse_args(argv)


def main(argv=None, objective: str | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw = load_config(args.config, args.overrides)
    if objective is not None:
        raw["objective"] = objective
    cfg = PretrainConfig.from_raw(raw)
    try:
        summary = train(cfg, raw)
    except (ckpt.CheckpointError, TrainingError) as exc:  # a clear reason, non-zero exit
        if dist.is_initialized():  # several ranks: say which one failed, with its traceback
            import traceback

            print(f"[pretrain] rank {dist.get_rank()} failed: {exc}\n{traceback.format_exc()}", file=sys.stderr,
                  flush=True)
        else:
            print(f"[pretrain] error: {exc}", file=sys.stderr, flush=True)
        return 1
    if not dist.is_initialized() or dist.get_rank() == 0:
        h = [x for x in summary["history"] if x.get("loss") is not None]
        if h:
            print(f"[pretrain] done: {summary['steps']} steps, first loss {h[0]['loss']:.4f}, "
                  f"last loss {h[-1]['loss']:.4f}, bad clips {summary['bad_clips']}, skipped steps "
                  f"{summary['skipped_steps']}; encoder -> {Path(cfg.run_dir) / 'encoder'}", flush=True)
    return 0


def main_mae(argv=None) -> int:
    return main(argv, objective="mae")


__all__ = ["PretrainConfig", "TrainingError", "train", "contrastive_step", "main", "main_mae"]

if __name__ == "__main__":
    sys.exit(main())
