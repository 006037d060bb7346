"""Scale out: a two-node rehearsal with the real ``deepspeed`` launcher on one machine, no ssh, no GPU.

The launcher's multi-node path normally reaches the other hosts over ssh (pdsh). Its ``--no_ssh`` mode is the one a
cluster scheduler (Slurm, Kubernetes, ...) uses instead: the same command is started once on every node with that
node's ``--node_rank``, a shared hostfile and ``--master_addr``/``--master_port`` of node 0; each node's launcher
starts its local ranks, and the ranks meet at the master over TCP (gloo on CPU, NCCL on GPUs). Here both "nodes" are
two launcher processes on 127.0.0.1 with one slot each (``hostfile``: two hosts, ``slots=1``), so the job has world
size 2 across 2 nodes, ZeRO-2, NT-Xent negatives and projector BatchNorm statistics gathered across the nodes.

Checked against one process training the same global batch (8 clips, tiny ViT, 4 steps, real keyword audio):

* the run's per-step loss (rank 0 records the mean over ITS anchors, scored against the global candidate set) equals
  the single-process loss over the same anchors, to ``LOSS_TOL``; the single process draws the same structured masks
  as the two ranks do (masks derive from (seed, step, rank), so the reference concatenates both ranks' draws);
* the two-node weight updates equal the single-process ones to ``UPDATE_RTOL`` (relative, per tensor), leaving out
  the few parameters whose true gradient is zero (``INVARIANT``: there Adam amplifies rounding noise).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encoder.pretraining import PretrainConfig
from mosaic_core.config import load_config, parse_config

# The pretraining recipe, by module name (the launcher runs it with --module).
PRETRAIN_MODULE = "recipes.pretrain"

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/pretrain/tiny.yaml"
NODES = 2  # one rank per node
BATCH = 8  # global batch: 4 clips per node
STEPS = 4
DEPTH = 2  # tiny ViT blocks
LR = 1e-4
# Observed on this CPU: |loss diff| 0.7-1.4e-6 (2-3 float32 ulps at a loss of 3-4: sums in another order, gloo
# all-gather/all-reduce vs one matmul, ZeRO-2's partitioned AdamW vs torch AdamW). LOSS_TOL leaves ~10x margin and is
# far below what a wrong mask, batch slice, BatchNorm statistic or gradient average gives (>1e-2).
LOSS_TOL = 1e-5
# Weights: each tensor's update (final - initial) must agree to UPDATE_RTOL in L2 norm (observed worst ~1e-4).
UPDATE_RTOL = 2e-3
# Parameters whose true gradient is exactly zero, so Adam turns float rounding noise (~1e-9) into full-size (~lr)
# steps of arbitrary sign in either run: the pooled-feature LayerNorm bias (the projector's BatchNorm removes any
# constant shift of its input) and the attention key biases (softmax is invariant to a per-query constant).
INVARIANT = {"encoder.fc_norm.bias": lambda n: slice(None)}
INVARIANT.update({f"encoder.blocks.{i}.attn.qkv.bias": (lambda n: slice(n // 3, 2 * n // 3))  # [q | k | v]
                  for i in range(DEPTH)})


def _initial_encoder_weights(root: Path, run_dir: Path) -> dict:
    """The encoder weights before step 1, drawn as the trainer draws them (same seed, same module)."""
    from encoder.data.dataset import derive_seed
    from encoder.pretraining import build_pretrain_model

    raw = load_config(CONFIG, _overrides(root, run_dir))
    cfg = parse_config(PretrainConfig, raw)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    return {f"encoder.{k}": v for k, v in build_pretrain_model(cfg).encoder.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(root, run_dir) -> list[str]:
    return [f"data.root={root}", "data.shards=null", "data.manifests=[keywords/manifest.jsonl]", f"run_dir={run_dir}",
            f"train.max_steps={STEPS}", f"train.batch_size={BATCH}", "train.progress=false", "train.log_every=1",
            "train.ckpt_every=100", f"model.depth={DEPTH}", "model.drop_path=0.0", "data.num_workers=0",
            "data.cached_features=true", "augment.enabled=false", "train.threads=1", "train.precision=fp32",
            "optim.warmup_steps=0", f"optim.lr={LR}"]


def _write_hostfile(path: Path) -> Path:
    # MPI style, as in configs/deepspeed/hostfile.example; with --no_ssh the names are never resolved or contacted
    path.write_text("# two rehearsal nodes, one slot (rank) each\nnode-0 slots=1\nnode-1 slots=1\n")
    return path


def _launch_node(node_rank: int, hostfile: Path, port: int, run_dir: Path, root: Path, log: Path):
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    cmd = [launcher, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           "--module", PRETRAIN_MODULE, "--config", str(CONFIG), *_overrides(root, run_dir),
           "distributed.backend=deepspeed", "distributed.deepspeed_config=configs/deepspeed/zero2.json"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MOSAIC_ALM_DIST_TIMEOUT_S="120")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _single_process_reference(root: Path, run_dir: Path, monkeypatch) -> dict:
    """The same global batch in one process (plain torch AdamW), with each node's masks and per-node losses."""
    from encoder import pretraining as steps  # the library the recipe's step calls draws masks and the loss from

    mod = importlib.import_module(PRETRAIN_MODULE)
    real_draw, real_loss = steps.draw_masks, steps.nt_xent
    per_node: list[list[float]] = []

    def draw_like_the_nodes(cfg, batch, grid, step, rank, device):
        assert rank == 0 and batch == BATCH
        parts = [real_draw(cfg, batch // NODES, grid, step, r, device) for r in range(NODES)]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(2))

    def loss_per_node(z1, z2, tau):
        out = real_loss(z1, z2, tau)
        b = z1.shape[0]
        pos = torch.cat([torch.arange(b) + b, torch.arange(b)])
        ce = F.cross_entropy(out["logits"].detach(), pos, reduction="none")  # one value per anchor
        local = b // NODES
        per_node.append([float(torch.cat([ce[r * local:(r + 1) * local], ce[b + r * local:b + (r + 1) * local]]).mean())
                         for r in range(NODES)])
        return out

    monkeypatch.setattr(steps, "draw_masks", draw_like_the_nodes)
    monkeypatch.setattr(steps, "nt_xent", loss_per_node)
    raw = load_config(CONFIG, _overrides(root, run_dir))
    out = mod.train(parse_config(PretrainConfig, raw), raw)
    return {"history": out["history"], "per_node": per_node}


def test_two_node_deepspeed_launch_matches_single_process(embedded_root, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    hostfile = _write_hostfile(tmp_path / "hostfile")
    run = tmp_path / "two-nodes"
    port = _free_port()
    t0 = time.time()
    logs = [tmp_path / f"node{i}.log" for i in range(NODES)]
    procs = [_launch_node(i, hostfile, port, run, embedded_root, logs[i]) for i in range(NODES)]
    try:
        for p in procs:
            p.wait(timeout=420)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    took = time.time() - t0
    out = [log.read_text() for log in logs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"node {i} failed:\n" + out[i][-4000:]
    # two nodes of one rank each, world 2, ZeRO-2, rank 0 on node 0
    assert "nnodes=2, num_local_procs=1, node_rank=0" in out[0], out[0][-3000:]
    assert "nnodes=2, num_local_procs=1, node_rank=1" in out[1], out[1][-3000:]
    assert "world=2" in out[0] and "deepspeed ZeRO stage 2" in out[0]
    state = json.loads((run / f"checkpoints/step_{STEPS:08d}/state.json").read_text())
    assert state["world_size"] == NODES
    got = json.loads((run / "history.json").read_text())
    assert len(got) == STEPS and all(h["loss"] is not None and not h.get("skipped") for h in got)

    ref = _single_process_reference(embedded_root, tmp_path / "single", monkeypatch)
    assert len(ref["per_node"]) == STEPS
    rows = []
    for s in range(STEPS):
        node0, node1 = ref["per_node"][s]
        full = ref["history"][s]["loss"]
        assert math.isclose((node0 + node1) / 2, full, rel_tol=0, abs_tol=1e-5)  # the split is the whole loss
        rows.append((s + 1, got[s]["loss"], node0, full))
    print("\n[two-node] step, two-node rank-0 loss, single-process loss over the same anchors, single full loss")
    for step, two_node, same_anchors, full in rows:
        print(f"[two-node] {step} {two_node:.7f} {same_anchors:.7f} {full:.7f}  "
              f"diff {abs(two_node - same_anchors):.2e}")
    print(f"[two-node] launch {took:.1f} s")
    two = load_file(str(run / "encoder/model.safetensors"))
    one = load_file(str(tmp_path / "single/encoder/model.safetensors"))
    init = _initial_encoder_weights(embedded_root, tmp_path / "single")
    assert two.keys() == one.keys() == init.keys()
    worst = {}
    for k in one:
        d_one, d_two = one[k] - init[k], two[k] - init[k]
        if k in INVARIANT:  # zero true gradient: its Adam updates are rounding noise, compare the rest only
            sl = INVARIANT[k](one[k].numel())
            d_one, d_two = d_one.clone(), d_two.clone()
            d_one[sl] = d_two[sl] = 0
        # the initialisation is the trainer's (an update of Adam's size, not a different random draw)
        assert d_one.abs().max() <= 10 * LR * STEPS, k
        if d_one.norm() > 0:
            worst[k] = ((d_two - d_one).norm() / d_one.norm()).item()
    name = max(worst, key=worst.get)
    print(f"[two-node] weight updates over {STEPS} steps: worst relative difference {worst[name]:.2e} ({name}), "
          f"median {sorted(worst.values())[len(worst) // 2]:.2e} over {len(worst)} tensors")
    for step, two_node, single_same_anchors, _ in rows:
        assert abs(two_node - single_same_anchors) <= LOSS_TOL, (step, two_node, single_same_anchors)
    assert worst[name] <= UPDATE_RTOL, (name, worst[name])
