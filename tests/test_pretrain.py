"""Pretraining: exact GradCache, distributed equality on gloo, DeepSpeed launch, resume, loss going down."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from encoder.loss import nt_xent
from encoder.masking import freq_view_indices, time_view_indices
from encoder.pretraining import PretrainConfig, contrastive_step
from encoder.vit import AudioMosaicPretrainModel, EncoderConfig, PretrainProjectorConfig
from mosaic_core.config import load_config, parse_config
from recipes.pretrain import train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(size="tiny", target_frames=64, depth=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(**over) -> PretrainConfig:
    raw = load_config(REPO / "configs/pretrain/tiny.yaml")
    raw["model"].update(TINY)
    raw["data"]["target_frames"] = 64
    for k, v in over.items():
        sec, key = k.split(".")
        raw[sec][key] = v
    return parse_config(PretrainConfig, raw)


def test_gradcache_equals_plain_step():
    torch.manual_seed(0)
    cfg_plain = _cfg(**{"train.chunk_size": 0})
    cfg_cache = _cfg(**{"train.chunk_size": 3})
    a = AudioMosaicPretrainModel(cfg_plain.model, cfg_plain.projector)
    b = AudioMosaicPretrainModel(cfg_cache.model, cfg_cache.projector)
    b.load_state_dict(a.state_dict())
    views = torch.randn(8, 2, 64, 128)
    nullctx = torch.autocast("cpu", enabled=False)
    out_a = contrastive_step(a, views, cfg_plain, 5, 0, lambda loss: loss.backward(), nullctx)
    out_b = contrastive_step(b, views, cfg_cache, 5, 0, lambda loss: loss.backward(), nullctx)
    assert torch.allclose(out_a["loss"], out_b["loss"], atol=1e-6)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), (name, (p.grad - q.grad).abs().max())


def _dist_worker(rank, world, rendezvous, state, x, k1, k2, out_dir):
    import torch.distributed as dist

    from encoder.pretraining import all_reduce_mean_grads

    # a file rendezvous: no TCP port to race other processes for
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AudioMosaicPretrainModel(EncoderConfig(**TINY), PretrainProjectorConfig())
    model.load_state_dict(state)
    sl = slice(rank * x.shape[0] // world, (rank + 1) * x.shape[0] // world)
    z1, z2 = model(x[sl], k1[sl], x[sl], k2[sl])
    out = nt_xent(z1, z2, 0.1)
    out["loss"].backward()
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    params = list(model.parameters())
    all_reduce_mean_grads(params, world)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": [p.grad for p in params]}, out_dir / "dist.pt")
    dist.barrier()  # both ranks done before teardown (gloo can abort a rank that exits first)
    dist.destroy_process_group()


def test_two_process_gloo_equals_single_process_on_concatenated_batch(tmp_path):
    torch.manual_seed(0)
    model = AudioMosaicPretrainModel(EncoderConfig(**TINY), PretrainProjectorConfig())
    x = torch.randn(8, 64, 128)
    g = torch.Generator().manual_seed(3)
    k1, k2 = time_view_indices(8, 4, 8, 0.6, g), freq_view_indices(8, 4, 8, 0.4, g)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    z1, z2 = model(x, k1, x, k2)
    single = nt_xent(z1, z2, 0.1)
    single["loss"].backward()
    mp.spawn(_dist_worker, args=(2, tmp_path / "rendezvous", state, x, k1, k2, tmp_path), nprocs=2, join=True)
    got = torch.load(tmp_path / "dist.pt", weights_only=True)
    assert torch.allclose(got["loss"], single["loss"], atol=1e-6)
    for (name, p), gd in zip(model.named_parameters(), got["grads"]):
        if p.grad is None:
            assert gd is None or gd.abs().max() == 0, name
            continue
        assert torch.allclose(p.grad, gd, atol=2e-6, rtol=1e-4), (name, (p.grad - gd).abs().max())


def _keyword_overrides(root, run_dir, steps, batch=8):
    return [f"data.root={root}", "data.shards=null", "data.manifests=[keywords/manifest.jsonl]", f"run_dir={run_dir}",
            f"train.max_steps={steps}", f"train.batch_size={batch}", "train.progress=false", "train.ckpt_every=2",
            "model.depth=2", "data.num_workers=0", "data.cached_features=false", "augment.enabled=true",
            "train.threads=1"]


def test_resume_continues_bit_identically(embedded_root, tmp_path):
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", _keyword_overrides(embedded_root, tmp_path / "a", 4))
    full = train(parse_config(PretrainConfig, raw), raw)
    raw_b = load_config(REPO / "configs/pretrain/tiny.yaml", _keyword_overrides(embedded_root, tmp_path / "b", 2))
    train(parse_config(PretrainConfig, raw_b), raw_b)
    raw_b["train"]["max_steps"] = 4
    resumed = train(parse_config(PretrainConfig, raw_b), raw_b)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a/encoder/model.safetensors"))
    wb = load_file(str(tmp_path / "b/encoder/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tiny_encoder_reduces_loss_on_real_audio(embedded_root, tmp_path):
    over = _keyword_overrides(embedded_root, tmp_path / "r", 40, batch=32) + ["data.cached_features=true",
                                                                            "optim.lr=1e-3", "optim.warmup_steps=3"]
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", over)
    hist = train(parse_config(PretrainConfig, raw), raw)["history"]
    first = sum(h["loss"] for h in hist[:5]) / 5
    last = sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert (tmp_path / "r/encoder/config.json").is_file()
    assert list((tmp_path / "r/tb").iterdir())


def _deepspeed_run(root, run, steps):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "recipes.pretrain",
           "--config", str(REPO / "configs/pretrain/tiny.yaml"),
           *_keyword_overrides(root, run, steps), "distributed.backend=deepspeed", "data.cached_features=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_deepspeed_resume_continues_bit_identically(embedded_root, tmp_path):
    """ZeRO-2 over 2 CPU ranks: 2 steps, then a relaunch to 4 (model from our checkpoint, optimizer partitions via
    engine.load_checkpoint) equals 4 uninterrupted steps, loss for loss and weight for weight."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    _deepspeed_run(embedded_root, tmp_path / "a", 4)
    _deepspeed_run(embedded_root, tmp_path / "b", 2)
    out = _deepspeed_run(embedded_root, tmp_path / "b", 4)
    assert "resumed from" in out and "at step 2" in out
    hist = {k: json.loads((tmp_path / k / "history.json").read_text()) for k in "ab"}
    assert [h["loss"] for h in hist["b"]] == [h["loss"] for h in hist["a"]]
    wa, wb = (load_file(str(tmp_path / k / "encoder/model.safetensors")) for k in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_deepspeed_launcher_zero2_two_processes(embedded_root, tmp_path):
    pytest.importorskip("deepspeed")
    run = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "recipes.pretrain",
           "--config", str(REPO / "configs/pretrain/tiny.yaml"),
           *_keyword_overrides(embedded_root, run, 2), "distributed.backend=deepspeed",
           "data.cached_features=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "deepspeed ZeRO stage 2" in out and "world=2" in out
    assert (run / "encoder/model.safetensors").is_file()
    state = json.loads(next((run / "checkpoints").iterdir()).joinpath("state.json").read_text())
    assert state["world_size"] == 2


def test_grouped_batches_hold_runs_of_one_group():
    """data.group_by: each epoch is a permutation of all clips made of runs of up to group_size clips of one group
    (rows without the field stand alone), reproducible from (seed, epoch) and different between epochs."""
    from encoder.data.dataset import EpochBatchSampler, derive_seed

    groups = [f"voice{i % 5}" for i in range(40)] + [None] * 8
    s = EpochBatchSampler(48, 16, seed=3, groups=groups, group_size=4)
    perm = s.permutation(0).tolist()
    assert sorted(perm) == list(range(48))
    runs, i = [], 0
    while i < len(perm):  # split the permutation into maximal runs of one group
        g = groups[perm[i]]
        j = i + 1
        while j < len(perm) and g is not None and groups[perm[j]] == g and j - i < 4:
            j += 1
        runs.append(perm[i:j])
        i = j
    assert all(len(r) == 4 for r in runs if groups[r[0]] is not None)  # 8 clips a voice: two runs of 4
    batch = next(iter(s))
    counts = {}
    for _, idx in batch:
        counts[groups[idx]] = counts.get(groups[idx], 0) + 1
    assert max(v for k, v in counts.items() if k is not None) >= 4
    assert s.permutation(0).tolist() == EpochBatchSampler(48, 16, seed=3, groups=groups, group_size=4).permutation(
        0).tolist()
    assert s.permutation(1).tolist() != perm
    plain = EpochBatchSampler(48, 16, seed=3)
    gen = torch.Generator().manual_seed(derive_seed(3, 0))
    assert plain.permutation(0).tolist() == torch.randperm(48, generator=gen).tolist()  # ungrouped: as before
    with pytest.raises(ValueError, match="group ids"):
        EpochBatchSampler(48, 16, groups=groups[:10], group_size=4)
