"""AudioMosaic pretraining, the library part: configuration, one step of either objective, distributed helpers,
checkpoint writes and the encoder export. The loop that runs them is the recipe ``recipes/pretrain.py``.

Each step: two views of every clip (waveform augmentations), a time view keeping whole time columns and a
frequency view keeping whole frequency rows, both through the ViT, pooled, the projector over BOTH views at once
(BatchNorm statistics of the global batch), NT-Xent with negatives gathered across ranks. With
``train.chunk_size`` the step is computed GradCache-style: exact loss and gradients of the whole batch while only
one chunk's activations are alive. Every random draw is derived from (seed, step, rank) or (seed, epoch, index),
so a resumed run continues bit-identically.
"""
from __future__ import annotations

import datetime
import logging
import os
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from mosaic_core.config import (
    ConfigError,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Ratio,
)
from mosaic_core.io import atomic_replace_dir
from mosaic_core.runtime import (
    autocast,
    deepspeed_cpu_workaround,
    rank_world,
    resolve_device,
    use_bf16,
)
from mosaic_core.schedule import lr_factor

from . import checkpoint as ckpt
from .data.dataset import WaveAugmentConfig, derive_seed
from .data.views import ViewAugmentConfig
from .loss import nt_xent
from .mae import MAEConfig, MAEPretrainModel
from .masking import view_indices
from .vit import (
    AudioMosaicPretrainModel,
    EncoderConfig,
    PretrainProjectorConfig,
    count_parameters,
)

log = logging.getLogger("encoder.train")


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite losses, a bad clip with ``data.on_bad_clip=fail``); says why."""


@dataclass
class MaskingConfig:
    time_view: Literal["time", "freq", "random", "none"] = "time"
    time_ratio: Ratio = 0.6  # fraction of time columns DROPPED in the time view (keeps 40 %)
    freq_view: Literal["time", "freq", "random", "none"] = "freq"
    freq_ratio: Ratio = 0.4  # fraction of frequency rows DROPPED in the frequency view (keeps 60 %)


@dataclass
class LossConfig:
    temperature: PositiveFloat = 0.1


@dataclass
class PretrainDataConfig:
    root: str = "data/embedded-small"
    manifests: list[str] = field(default_factory=lambda: ["keywords/manifest.jsonl"])
    splits: list[str] = field(default_factory=lambda: ["train"])
    target_frames: PositiveInt = 128
    num_workers: NonNegInt = 0
    cached_features: bool = False
    on_bad_clip: Literal["skip", "fail"] = "skip"
    max_seconds: PositiveFloat = 600.0
    # WebDataset shards instead of the manifests: a folder written by write_shards, a glob or a brace pattern
    # (encoder/data/shards.py); null = the manifests above. Shards are split over ranks and loader workers.
    shards: str | None = None
    shuffle_buffer: NonNegInt = 512  # shards: clips held by each worker's shuffle buffer (0/1 = shard order)
    # batches with runs of up to group_size clips sharing a manifest field (e.g. speaker): the contrastive task then
    # has negatives that share it (manifests only; rows without the field are groups of their own). "" = off
    group_by: str = ""
    group_size: PositiveInt = 8


@dataclass
class PretrainOptimConfig:
    lr: PositiveFloat = 6e-4
    min_lr: NonNegFloat = 1e-6
    weight_decay: NonNegFloat = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: NonNegInt = 0
    grad_clip: float = 1.0  # <= 0 disables clipping


@dataclass
class PretrainLoopConfig:
    batch_size: PositiveInt = 512  # global batch (all ranks together)
    epochs: NonNegInt = 400
    max_steps: NonNegInt = 0  # > 0 caps the run (overrides epochs)
    chunk_size: NonNegInt = 0  # > 0: GradCache feature caching with chunks of this many clips per rank
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the GPU supports it
    device: str = "auto"
    threads: NonNegInt = 0  # torch intra-op threads per process; 0 = torch's default (tiny models on busy CPUs: 1)
    log_every: PositiveInt = 10
    ckpt_every: PositiveInt = 200
    keep_last: NonNegInt = 3  # 0 keeps every checkpoint
    max_bad_steps: PositiveInt = 5  # consecutive non-finite losses before the run stops
    progress: bool = True


@dataclass
class DistConfig:
    backend: Literal["none", "torch", "deepspeed"] = "none"  # none: single process, or torchrun -> torch
    deepspeed_config: str = "configs/deepspeed/zero2.json"


@dataclass
class PretrainConfig:
    seed: int = 0
    run_dir: str = "runs/pretrain"
    objective: Literal["contrastive", "mae"] = "contrastive"  # mae: the same-budget masked-reconstruction baseline
    model: EncoderConfig = field(default_factory=EncoderConfig)
    projector: PretrainProjectorConfig = field(default_factory=PretrainProjectorConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    augment: WaveAugmentConfig = field(default_factory=WaveAugmentConfig)  # waveform path (no feature cache)
    views: ViewAugmentConfig = field(default_factory=ViewAugmentConfig)  # cached-feature path: per-view transforms
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    train: PretrainLoopConfig = field(default_factory=PretrainLoopConfig)
    distributed: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self):
        if self.data.target_frames % self.model.patch_size:
            raise ValueError(f"data.target_frames {self.data.target_frames} must be a multiple of "
                             f"model.patch_size {self.model.patch_size}")


# ------------------------------------------------------------------------------------------------- distributed
def init_distributed(cfg: PretrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world, device); joins the process group when a launcher started several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.train.device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("MOSAIC_ALM_DIST_TIMEOUT_S", "600")))
        if cfg.distributed.backend == "deepspeed":
            import deepspeed

            deepspeed_cpu_workaround()
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return (*rank_world(), device)


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
def autocast_ctx(cfg: PretrainLoopConfig, device: torch.device):
    return autocast(use_bf16(cfg.precision, device), device)


def draw_masks(cfg: PretrainConfig, batch: int, grid: tuple[int, int], step: int, rank: int, device):
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mask", step, rank))
    m = cfg.masking
    k1 = view_indices(m.time_view, batch, *grid, m.time_ratio, g, device)
    k2 = view_indices(m.freq_view, batch, *grid, m.freq_ratio, g, device)
    return k1, k2


def _slice(keep, sl):
    return None if keep is None else keep[sl]


def finite_loss(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss))


def contrastive_step(model: AudioMosaicPretrainModel, views: torch.Tensor, cfg: PretrainConfig, step: int,
                     rank: int, backward, amp, agree=finite_loss) -> dict:
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


def mae_step(model, views, cfg: PretrainConfig, step: int, rank: int, backward, amp, agree=finite_loss) -> dict:
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
def lr_at(step: int, total: int, o: PretrainOptimConfig) -> float:
    """The rate at ``step``: warm-up + cosine to ``min_lr`` (mosaic_core.schedule, transformers' curve)."""
    return o.lr * lr_factor(step, total, o.warmup_steps, o.min_lr / o.lr)


def decay_param_groups(model: torch.nn.Module, weight_decay: float):
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


def build_pretrain_model(cfg: PretrainConfig) -> torch.nn.Module:
    if cfg.objective == "contrastive":
        return AudioMosaicPretrainModel(cfg.model, cfg.projector)
    return MAEPretrainModel(cfg.model, cfg.mae)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_pretrain_checkpoint(run: Path, step: int, model, optimizer, engine, cfg, history, is_main, world, raw,
                             data_state: dict | None = None) -> None:
    """``data_state``: this rank's ``ShardDataset.state_dict()`` (shards only); every rank's is kept in the
    checkpoint (``state["shards"]``, by rank) so each resumes at its next unseen clip."""
    shard_states = None
    if data_state is not None:
        shard_states = [data_state]
        if world > 1:
            shard_states = [None] * world
            dist.all_gather_object(shard_states, data_state)
    ds = None
    if engine is not None:  # every rank writes its optimizer partition (DeepSpeed's own format) + rank 0 a manifest
        ds = ckpt.save_deepspeed_state(engine, run, f"{ckpt.PREFIX}{step:08d}")
    if is_main:
        tensors = {"model": {k: v for k, v in model.state_dict().items()}}
        state = {"step": step, "history": history, "config": raw if raw is not None else asdict(cfg),
                 "world_size": world, "deepspeed": ds}
        if shard_states is not None:
            state["shards"] = shard_states
        if engine is None:
            opt_tensors, opt_rest = ckpt.flatten_optimizer_state(optimizer.state_dict())
            tensors["optimizer"] = opt_tensors
            state["optimizer"] = opt_rest
        ckpt.save_checkpoint(run / "checkpoints", step, tensors, state, keep_last=cfg.train.keep_last)
        if engine is not None:
            ckpt.prune_deepspeed_states(run)
    if world > 1:
        dist.barrier()


def export_encoder(encoder, folder: Path, training: dict | None = None) -> None:
    """Save the encoder alone as a Hugging Face folder (config + safetensors + feature extractor + model card
    with the ``training`` facts), atomically."""
    from .hf import AudioMosaicConfig, AudioMosaicModel, save_encoder_folder

    model = AudioMosaicModel(AudioMosaicConfig(**asdict(encoder.cfg)))
    model.encoder.load_state_dict(encoder.state_dict())
    atomic_replace_dir(folder, lambda tmp: save_encoder_folder(model, tmp, training=training,
                                                                    shown=str(folder)))


def training_facts(cfg: PretrainConfig, steps: int, n_clips: int, world: int) -> dict:
    """What a pretraining run did, for the encoder's model card."""
    from mosaic_core.provenance import git_commit

    objective = ("AudioMosaic contrastive (NT-Xent between a structured time-masked view keeping "
                 f"{1 - cfg.masking.time_ratio:.0%} of time columns and a frequency-masked view keeping "
                 f"{1 - cfg.masking.freq_ratio:.0%} of frequency rows, temperature {cfg.loss.temperature})"
                 if cfg.objective == "contrastive" else
                 f"masked reconstruction (MAE baseline, mask ratio {cfg.mae.mask_ratio})")
    commit = git_commit()
    data = (f"WebDataset shards {cfg.data.shards}" if cfg.data.shards else
            f"{cfg.data.root}: {', '.join(cfg.data.manifests)} (splits {', '.join(cfg.data.splits) or 'all'})")
    return {"objective": objective, "data": f"{data}, {n_clips} clips",
            "steps": steps, "global batch": cfg.train.batch_size, "processes": world,
            "learning rate": f"{cfg.optim.lr:g} (AdamW, {cfg.optim.warmup_steps} warm-up steps, cosine to "
                             f"{cfg.optim.min_lr:g}, weight decay {cfg.optim.weight_decay:g})",
            "input frames": cfg.data.target_frames, "precision": cfg.train.precision, "seed": cfg.seed,
            "commit": f"{commit['commit'][:12]}{' (dirty)' if commit['dirty'] else ''}" if commit["commit"] else None,
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}


def parameter_summary(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters per top-level module (printed once at start-up)."""
    counts = {n: count_parameters(m, True) for n, m in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False) if p.requires_grad)
    if own:
        counts["(top-level)"] = own
    return counts
