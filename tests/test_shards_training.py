"""Training from WebDataset shards (data.shards / task.shards): pretraining and fine-tuning run on real shards of the
embedded keyword clips (the ``embedded_shards`` fixture), resume mid-epoch bit-identically, split clips over 2 ranks
x 2 workers without repeats, skip and quarantine bad records, and name a bad shard path in one line."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from encoder.pretraining import PretrainConfig
from mosaic_core.config import load_config, load_recipe, parse_config

REPO = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands for a SIGKILL right after a checkpoint was written."""


def _pretrain_raw(shards, run, steps=8, **over):
    items = {"data.shards": str(shards), "run_dir": str(run), "train.max_steps": steps, "train.batch_size": 8,
             "train.ckpt_every": 2, "train.progress": "false", "train.threads": 1, "model.depth": 2,
             "model.target_frames": 64, "data.target_frames": 64, "data.num_workers": 2,
             "data.cached_features": "false", "augment.enabled": "true", "data.shuffle_buffer": 5, **over}
    return load_config(REPO / "configs/pretrain/tiny.yaml", [f"{k}={v}" for k, v in items.items()])


def _train(raw):
    from recipes.pretrain import train

    return train(parse_config(PretrainConfig, raw), raw)


def test_pretrain_from_shards_resumes_mid_epoch_bit_identically(embedded_shards, tmp_path, monkeypatch):
    """8 steps of 8 clips over 48 clips (6 steps an epoch): killed after the step-4 checkpoint (mid-epoch 0, two
    loader workers), resumed, it crosses into epoch 1 and matches the uninterrupted run bit for bit."""
    import recipes.pretrain as rp

    full = _train(_pretrain_raw(embedded_shards, tmp_path / "full"))
    save = rp.save_pretrain_checkpoint

    def save_then_die(run, step, *args, **kwargs):
        save(run, step, *args, **kwargs)
        if step == 4:
            raise Killed

    monkeypatch.setattr(rp, "save_pretrain_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _train(_pretrain_raw(embedded_shards, tmp_path / "cut"))
    monkeypatch.undo()
    state = json.loads(next((tmp_path / "cut/checkpoints").glob("*00000004/state.json")).read_text())
    assert state["shards"][0]["epoch"] == 0 and state["shards"][0]["batches"] == 4  # mid-epoch reader state
    resumed = _train(_pretrain_raw(embedded_shards, tmp_path / "cut"))
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 8 and all(x is not None for x in losses)
    assert [h["loss"] for h in resumed["history"]] == losses
    wa, wb = (load_file(str(tmp_path / r / "encoder/model.safetensors")) for r in ("full", "cut"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _rank_worker(rank, world, rendezvous, shards, run, out):
    import torch.distributed as dist

    import recipes.pretrain as rp

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    seen = []
    real = rp.shard_batches

    def recording(*args, **kwargs):
        for batch in real(*args, **kwargs):
            seen.append([str(i) for i in batch["id"]])
            yield batch

    rp.shard_batches = recording
    _train(_pretrain_raw(shards, run, steps=7, **{"data.cached_features": "true"}))
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()  # both ranks done before teardown (gloo can abort a rank that exits first)
    dist.destroy_process_group()


def test_two_ranks_two_workers_read_every_clip_once_an_epoch(embedded_shards, tmp_path):
    """2 ranks x 2 loader workers: 8 shards, 24 clips a rank, local batch 4 -> 6 steps an epoch; in epoch 0 the two
    ranks together see all 48 clips, none twice; step 7 starts epoch 1 with a new order."""
    mp.spawn(_rank_worker, args=(2, tmp_path / "rdzv", embedded_shards, tmp_path / "run", tmp_path), nprocs=2,
             join=True)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(b) for b in per_rank] == [7, 7] and all(len(x) == 4 for b in per_rank for x in b)
    epoch0 = [i for batches in per_rank for b in batches[:6] for i in b]
    index = json.loads((embedded_shards / "index.json").read_text())
    assert len(epoch0) == len(set(epoch0)) == index["num_clips"] == 48
    assert {i for b in per_rank[0][:6] for i in b}.isdisjoint({i for b in per_rank[1][:6] for i in b})
    state = json.loads(sorted((tmp_path / "run/checkpoints").glob("*/state.json"))[-1].read_text())
    assert [s["rank"] for s in state["shards"]] == [0, 1] and all(s["epoch"] == 1 for s in state["shards"])


def _corrupt_one_clip(src: Path, dst: Path) -> str:
    """A copy of the shard folder whose shard 1 holds one clip with broken FLAC bytes; returns that clip's id."""
    shutil.copytree(src, dst)
    path = dst / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_id = None
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if bad_id is None and m.name.endswith(".flac"):
                data = b"fLaC" + bytes(len(data) - 4)
                bad_id = m.name[:-5]
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return json.loads(dict((m.name, d) for m, d in members)[f"{bad_id}.json"])["id"]


def test_bad_records_are_skipped_counted_and_quarantined_in_pretraining(embedded_shards, tmp_path):
    bad_id = _corrupt_one_clip(embedded_shards, tmp_path / "shards")
    out = _train(_pretrain_raw(tmp_path / "shards", tmp_path / "run", steps=6,
                               **{"data.num_workers": 1, "data.cached_features": "true"}))
    lines = [json.loads(x) for x in (tmp_path / "run/quarantine.rank0.jsonl").read_text().splitlines()]
    assert len(out["history"]) == 6 and all(h["loss"] is not None for h in out["history"])
    assert out["bad_clips"] == len(lines) >= 1  # once per epoch it is read (47 good clips: 5 batches, then epoch 1)
    assert {x["id"] for x in lines} == {bad_id} and all("cannot decode FLAC" in x["error"] for x in lines)
    assert {x["shard"] for x in lines} == {"shard-000001.tar"}


def _finetune_cfg(root, run, shards=None, workers=0):
    from recipes.finetune import FinetuneConfig

    over = [f"task.data_root={root}", f"run_dir={run}", "model.encoder=random", "model.depth=1", "optim.epochs=2",
            "optim.batch_size=8", "task.max_clips_per_split=48", "ckpt_every=4", "tensorboard=false",
            "save_model=true", f"optim.num_workers={workers}", "threads=1", "task.shuffle_buffer=5"]
    if shards is not None:
        over.append(f"task.shards={shards}")
    return load_recipe(FinetuneConfig, REPO / "configs/finetune/embedded_keywords.yaml", over)


@pytest.mark.parametrize("source", ["shards", "manifest"])
def test_finetune_resumes_mid_epoch_bit_identically(embedded_root, embedded_shards, tmp_path, monkeypatch, source):
    """2 epochs of 6 steps, a checkpoint every 4: killed after step 8 (2 steps into epoch 2), resumed, the losses,
    the scores and the weights equal the uninterrupted run's."""
    import recipes.finetune as rf

    shards, workers = (embedded_shards, 2) if source == "shards" else (None, 0)
    full = rf.finetune(*_finetune_cfg(embedded_root, tmp_path / "full", shards, workers))
    save = rf._save

    def save_then_die(ckdir, cfg, model, opt, rng, best_state, state, reader):
        save(ckdir, cfg, model, opt, rng, best_state, state, reader)
        if state["step"] == 8:
            raise Killed

    monkeypatch.setattr(rf, "_save", save_then_die)
    with pytest.raises(Killed):
        rf.finetune(*_finetune_cfg(embedded_root, tmp_path / "cut", shards, workers))
    monkeypatch.undo()
    resumed = rf.finetune(*_finetune_cfg(embedded_root, tmp_path / "cut", shards, workers))
    assert full["n_train"] == 48 and len(full["history"]["train_loss"]) == 2
    assert resumed["history"] == full["history"] and resumed["test"] == full["test"]
    wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("full", "cut"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if source == "shards":
        assert full["train_shards"] == {"source": str(embedded_shards), "bad_records": 0}


@pytest.mark.parametrize("command,override", [
    ("pretrain", "data.shards={tmp}/nowhere"),
    ("finetune", "task.shards={tmp}/none-*.tar"),
])
def test_a_bad_shard_path_gives_one_clear_line(embedded_root, tmp_path, command, override):
    config = {"pretrain": "configs/pretrain/tiny.yaml", "finetune": "configs/finetune/embedded_keywords.yaml"}[command]
    extra = [f"task.data_root={embedded_root}", "model.encoder=random"] if command == "finetune" else []
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "recipes.cli", command, "--config", config,
                           override.format(tmp=tmp_path), f"run_dir={tmp_path}/run", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    want = {"pretrain": f"shard folder not found: {tmp_path}/nowhere",
            "finetune": f"no shard files match '{tmp_path}/none-*.tar'"}[command]
    assert proc.returncode == 1 and lines == [f"mosaic-alm {command}: error: {want}"], proc.stderr
