"""Reliability, items 2, 5 and 6: bad data in bulk, numerical faults, dead workers and failing ranks.

* Manifests with a missing file, malformed JSON, an unknown label or a duplicated id: ManifestError with the line.
* Training over a manifest with corrupt clips: each is skipped (replaced deterministically), counted and listed in
  the quarantine file, or fails the run with ``data.on_bad_clip=fail``; evaluation lists its bad clips too.
* A data-loader worker that is SIGKILLed or raises makes the run fail with its error, never hang.
* NaN/inf losses: skipped and counted; K in a row stop the run naming the step, lr and last finite loss; no NaN in
  any output. Gradient clipping follows ``optim.grad_clip``.
* Two gloo ranks under torchrun: one raising ends the job in bounded time with that rank's traceback.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from encoder.data.manifest import ManifestError, read_manifest, write_manifest
from encoder.pretraining import PretrainConfig, TrainingError
from mosaic_core.config import load_config, parse_config
from recipes.pretrain import train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------------------------------------- manifests
def _row(i, **kw):
    return {"id": f"c{i}", "path": f"c{i}.wav", "label": "dog", "split": "train", "task": "t", **kw}


@pytest.mark.parametrize("case,line,needle", [
    ("missing_file", 3, "audio file not found"),
    ("malformed_json", 2, "malformed JSON"),
    ("unknown_label", 4, "unknown label 'unicorn'"),
    ("duplicate_id", 3, "duplicated id 'c0' (first on line 1)"),
])
def test_manifest_errors_name_the_line(tmp_path, case, line, needle):
    for i in range(5):
        sf.write(tmp_path / f"c{i}.wav", np.zeros(160, np.float32), 16000)
    lines = [json.dumps(_row(i)) for i in range(5)]
    if case == "missing_file":
        lines[2] = json.dumps(_row(2, path="gone.wav"))
    elif case == "malformed_json":
        lines[1] = lines[1][:-3]
    elif case == "unknown_label":
        lines[3] = json.dumps(_row(3, label="unicorn"))
    else:
        lines[2] = json.dumps(_row(0))
    m = tmp_path / "manifest.jsonl"
    m.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(m, classes=["dog", "cat"])
    assert f"{m}:{line}:" in str(info.value) and needle in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------------- bad clips in bulk
def _bad_dataset(embedded_root: Path, root: Path, n: int = 40, bad: tuple[int, ...] = (7, 23)) -> set[str]:
    """``n`` real keyword clips (copied) of which those at ``bad`` are replaced by corrupt files (5 %)."""
    rows = [r for r in read_manifest(embedded_root / "keywords/manifest.jsonl") if r["split"] == "train"][:n]
    (root / "clips").mkdir(parents=True)
    bad_ids = set()
    for i, r in enumerate(rows):
        dst = root / "clips" / f"{i:03d}.wav"
        if i in bad:
            dst.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" if i % 2 else b"")
            bad_ids.add(r["id"])
        else:
            shutil.copy(r["path"], dst)
        r["rel_path"] = f"clips/{i:03d}.wav"
    write_manifest(rows, root / "m.jsonl")
    return bad_ids


def _over(root, run, steps, *extra):
    return [f"data.root={root}", "data.shards=null", "data.manifests=[m.jsonl]", f"run_dir={run}",
            f"train.max_steps={steps}",
            "train.batch_size=8", "train.progress=false", "train.ckpt_every=100", "model.depth=1",
            "data.num_workers=0", "augment.enabled=false", "train.log_every=1000", *extra]


def _strict_json(text):
    def bad(c):
        raise AssertionError(f"non-finite value {c} in output")
    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("cached", [False, True])
def test_bad_clips_are_skipped_counted_and_quarantined(embedded_root, tmp_path, cached):
    root = tmp_path / "data"
    bad_ids = _bad_dataset(embedded_root, root)
    raw = load_config(REPO / "configs/pretrain/tiny.yaml",
                      _over(root, tmp_path / "run", 5, f"data.cached_features={str(cached).lower()}"))
    out = train(parse_config(PretrainConfig, raw), raw)  # 5 steps x 8 = one epoch: every clip is drawn once
    assert out["bad_clips"] == 2
    q = [json.loads(line) for line in (tmp_path / "run/quarantine.rank0.jsonl").read_text().splitlines()]
    assert {e["id"] for e in q} == bad_ids
    assert all(e["error"] and "step" in e for e in q)
    hist = _strict_json((tmp_path / "run/history.json").read_text())
    assert len(hist) == 5 and all(math.isfinite(h["loss"]) for h in hist)


def test_bad_clip_fails_the_run_when_configured(embedded_root, tmp_path):
    root = tmp_path / "data"
    bad_ids = _bad_dataset(embedded_root, root)
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", _over(root, tmp_path / "run", 5, "data.on_bad_clip=fail"))
    with pytest.raises(TrainingError, match="bad clip .*on_bad_clip=fail") as info:
        train(parse_config(PretrainConfig, raw), raw)
    assert any(b in str(info.value) for b in bad_ids)
    assert (tmp_path / "run/quarantine.rank0.jsonl").is_file()


def test_evaluation_lists_bad_clips(embedded_root, tmp_path):
    from eval.embeddings import load_waves

    root = tmp_path / "data"
    bad_ids = _bad_dataset(embedded_root, root, n=12, bad=(3, 8))
    rows = read_manifest(root / "m.jsonl")
    waves, bad = load_waves(rows)
    assert {b["id"] for b in bad} == bad_ids and all(b["error"] for b in bad)
    assert sum(w is None for w in waves) == 2
    assert all(torch.isfinite(w).all() for w in waves if w is not None)


# ---------------------------------------------------------------------------------------- data-loader workers
_DRIVER = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
import torch
from mosaic_core.config import load_config, parse_config
from encoder.data import dataset
from encoder.pretraining import PretrainConfig
from recipes.pretrain import train
real = dataset.PretrainDataset._views
def views(self, epoch, index):
    info = torch.utils.data.get_worker_info()
    if info is not None and index == {victim}:
        if {mode!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise MemoryError("simulated allocation failure in a data-loader worker")
    return real(self, epoch, index)
dataset.PretrainDataset._views = views
raw = load_config({cfg!r}, {over!r})
train(parse_config(PretrainConfig, raw), raw)
"""


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_dead_data_loader_worker_fails_the_run_never_hangs(embedded_root, tmp_path, mode):
    root = tmp_path / "data"
    _bad_dataset(embedded_root, root, bad=())
    over = _over(root, tmp_path / "run", 5, "data.num_workers=2")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER.format(repo=str(REPO), victim=5, mode=mode, over=over,
                                     cfg=str(REPO / "configs/pretrain/tiny.yaml")))
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    took = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    if mode == "kill":
        assert "DataLoader worker" in out and "killed by signal" in out, out[-3000:]
    else:
        assert "MemoryError" in out and "simulated allocation failure" in out and "Traceback" in out, out[-3000:]
    assert took < 120


# ------------------------------------------------------------------------------------------- numerical faults
def _nan_at(monkeypatch, steps_bad):
    from encoder import pretraining as train_mod

    real = train_mod.nt_xent
    calls = {"n": 0}

    def fake(z1, z2, tau):
        out = real(z1, z2, tau)
        step = calls["n"]
        calls["n"] += 1
        if steps_bad(step):
            out["loss"] = out["loss"] * float("nan") if step % 2 else out["loss"] + float("inf")
        return out

    monkeypatch.setattr(train_mod, "nt_xent", fake)


def test_non_finite_loss_steps_are_skipped_and_counted(embedded_root, tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda s: s in (1, 3))
    over = _over(embedded_root, tmp_path / "run", 5, "data.manifests=[keywords/manifest.jsonl]",
                 "data.cached_features=true", "train.ckpt_every=1", "train.keep_last=0")
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", over)
    out = train(parse_config(PretrainConfig, raw), raw)
    assert out["skipped_steps"] == 2
    hist = _strict_json((tmp_path / "run/history.json").read_text())
    assert [h.get("skipped", False) for h in hist] == [False, True, False, True, False]
    assert all(h["loss"] is None for h in hist if h.get("skipped"))
    from encoder import checkpoint as ckpt

    # a skipped step leaves the weights and the optimiser untouched
    a, _ = ckpt.load_checkpoint(tmp_path / "run/checkpoints/step_00000001")
    b, sb = ckpt.load_checkpoint(tmp_path / "run/checkpoints/step_00000002")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["optimizer"][k], b["optimizer"][k]) for k in a["optimizer"])
    t5, _ = ckpt.load_checkpoint(tmp_path / "run/checkpoints/step_00000005")
    counts = {float(v) for k, v in t5["optimizer"].items() if k.endswith(".step")}
    assert counts == {3.0}  # 3 real updates out of 5 steps
    for f in (tmp_path / "run/checkpoints").rglob("state.json"):
        _strict_json(f.read_text())


def test_consecutive_non_finite_losses_stop_the_run(embedded_root, tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda s: s >= 2)
    over = _over(embedded_root, tmp_path / "run", 10, "data.manifests=[keywords/manifest.jsonl]",
                 "data.cached_features=true", "train.max_bad_steps=3")
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", over)
    with pytest.raises(TrainingError) as info:
        train(parse_config(PretrainConfig, raw), raw)
    msg = str(info.value)
    assert "3 consecutive non-finite losses" in msg and "at step 4" in msg
    assert "lr " in msg and "last finite loss" in msg and "None" not in msg, msg
    import re

    assert math.isfinite(float(re.search(r"last finite loss ([0-9.eE+-]+)", msg).group(1)))


@pytest.mark.parametrize("clip", [0.0, 0.25])
def test_gradient_clipping_is_configurable(embedded_root, tmp_path, monkeypatch, clip):
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        seen.append(max_norm)
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    over = _over(embedded_root, tmp_path / "run", 2, "data.manifests=[keywords/manifest.jsonl]",
                 "data.cached_features=true", f"optim.grad_clip={clip}")
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", over)
    train(parse_config(PretrainConfig, raw), raw)
    assert seen == ([clip, clip] if clip > 0 else [])


# ------------------------------------------------------------------------------------------ distributed faults
def test_one_rank_failing_ends_the_gloo_job_with_its_traceback(embedded_root, tmp_path):
    """torchrun, 2 CPU ranks over gloo; the only corrupt clip of the first batch lands on rank 1, which raises
    (data.on_bad_clip=fail) while rank 0 waits in a collective. The job must end fast, showing rank 1's error."""
    from encoder.data.dataset import EpochBatchSampler

    root = tmp_path / "data"
    rank1_first = next(iter(EpochBatchSampler(40, 8, rank=1, world=2, seed=0)))
    victim = rank1_first[0][1]
    _bad_dataset(embedded_root, root, bad=(victim,))
    over = _over(root, tmp_path / "run", 3, "data.on_bad_clip=fail", "data.cached_features=false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "recipes.pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"), *over]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MOSAIC_ALM_DIST_TIMEOUT_S="60")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    took = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "Traceback" in out and "TrainingError" in out and "bad clip" in out, out[-4000:]
    assert "rank 1 failed" in out
    assert took < 120, took
    assert not (tmp_path / "run/encoder").exists()
