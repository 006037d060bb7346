"""Reliability, item 3: checkpoints survive crashes, full disks and corruption; resuming is bit-identical.

The kill loop runs the real trainer (``python -m recipes.pretrain``) in a subprocess and SIGKILLs it many times:
paused by the ``MOSAIC_ALM_CKPT_PAUSE`` hook at every stage of a checkpoint write (before a file, with half a file on
disk, before the checksums, before the rename), and at random moments while it trains. After every kill the newest
complete checkpoint verifies and loads; the partial one is detected and removed with a warning on restart. The
run is finished by a last restart and its losses and weights are compared, bit for bit, with an uninterrupted run.

CI samples the kill moments (one per write stage plus random ones); MOSAIC_ALM_KILL_FULL=1 (or MOSAIC_ALM_SLOW=1) runs
every stage at several checkpoint indices and more random kills.

The run is sized to its kill plan: a kill paused after ``k`` complete saves moves the run exactly ``k`` steps on, a
random kill at most ``RANDOM_MAX_STEPS`` + 1 (it fires at a random moment in the next 0.6 s or, once the run is
``RANDOM_MAX_STEPS`` - 1 checkpoints further on, at a random moment of the following step). ``_steps_for`` adds these
up, so every planned kill lands before the run nears its end, on a fast machine as on a slow one, and the test
asserts that all of them did. (Before, the full plan ran 30 steps, of which the loop could use 28, and random
kills were bounded only in time: the 12 paused kills alone take 18 steps, and each random kill moved the run 1 step
plus 0.6 s worth of steps, 1-4 steps at the ~140-250 ms a step and its checkpoint take here, more on a faster
machine: 28-58 steps wanted, 28 there. The loop ran out of steps and stopped with 3-9 of the 12 in-write kills done,
so its own tally assertion failed.)
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoder import checkpoint as ckpt
from encoder.pretraining import PretrainConfig
from mosaic_core.config import load_config, parse_config

# The pretraining recipe, by module name: the kill loop launches it with ``python -m``.
PRETRAIN_MODULE = "recipes.pretrain"
_pretrain = importlib.import_module(PRETRAIN_MODULE)
train = _pretrain.train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
STAGES = ["before-model", "mid-model", "before-optimizer", "mid-optimizer", "before-checksums", "before-rename"]
FULL = "1" in (os.environ.get("MOSAIC_ALM_KILL_FULL"), os.environ.get("MOSAIC_ALM_SLOW"))
RANDOM_MAX_STEPS = 3  # the most checkpoints (+1 for timing jitter) a random kill lets the run move on


def _overrides(root, run_dir, steps, keep_last=2, extra=()):
    return [f"data.root={root}", "data.shards=null", "data.manifests=[keywords/manifest.jsonl]", f"run_dir={run_dir}",
            f"train.max_steps={steps}", "train.batch_size=8", "train.progress=false", "train.ckpt_every=1",
            f"train.keep_last={keep_last}", "model.depth=2", "model.drop_path=0.1", "data.num_workers=0",
            "data.cached_features=true", "train.log_every=1000", "optim.warmup_steps=2", *extra]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MOSAIC_ALM_CKPT_PAUSE", None)
    env.update(extra)
    return env


def _start(over, **env):
    cmd = [sys.executable, "-m", PRETRAIN_MODULE, "--config", str(REPO / "configs/pretrain/tiny.yaml"), *over]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _steps_on_disk(ck: Path) -> list[int]:
    return [int(p.name[len(ckpt.PREFIX):]) for p in ckpt.list_checkpoints(ck)]


def _pause_markers(ck: Path) -> set[str]:
    """The writer's ``*.paused`` markers under ``ck``. ``os.walk`` skips a folder that vanishes mid-scan (the trainer
    prunes old checkpoints while we look), where ``Path.glob("**")`` raises FileNotFoundError."""
    return {os.path.join(root, f) for root, _, files in os.walk(ck) for f in files if f.endswith(".paused")}


def _check_after_kill(ck: Path, keep_last: int, tally: dict | None = None) -> int:
    """Every step_ folder verifies (they only ever appear complete: pruning renames a folder to a .tmp- name
    before deleting it) and the newest loads. Non-destructive."""
    folders = ckpt.list_checkpoints(ck)
    for p in folders:
        reason = ckpt.verify(p)
        assert reason is None, (p, reason)
    assert len(folders) <= keep_last + 1  # a kill between the rename and the pruning may leave one extra
    if folders:
        tensors, state = ckpt.load_checkpoint(folders[-1])
        assert state["step"] == _steps_on_disk(ck)[-1]
        assert "model" in tensors and "optimizer" in tensors
        assert len(state["history"]) == state["step"]
        return state["step"]
    return 0


def _wait_for(pred, proc, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the trainer")


def _kill(proc) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


def _kill_plan(full: bool, rng: random.Random) -> list:
    """(stage, how many saves to let through first) or ("random", None), shuffled."""
    if full:
        plan = [(s, k) for k in (1, 2) for s in STAGES] + [("random", None)] * 10
    else:
        plan = [(s, 1) for s in STAGES] + [("random", None)] * 2
    rng.shuffle(plan)
    return plan


def _steps_for(plan) -> int:
    """Steps the run needs so that every kill of ``plan`` lands before the loop's stop (``steps - 2``)."""
    paused = sum(k for stage, k in plan if stage != "random")  # exactly k complete saves, then the pause
    random_kills = sum(1 for stage, _ in plan if stage == "random") * (RANDOM_MAX_STEPS + 1)
    return paused + random_kills + 3


def test_kill_plan_fits_the_run():
    """The sizing holds for both modes; the old fixed 30 steps did not for the full plan."""
    for full in (False, True):
        plan = _kill_plan(full, random.Random(1234))
        steps = _steps_for(plan)
        worst = sum(k if s != "random" else RANDOM_MAX_STEPS + 1 for s, k in plan)
        assert worst <= steps - 3
    assert _steps_for(_kill_plan(True, random.Random(1234))) > 30


def test_kill_at_many_moments_then_resume_bit_identically(embedded_root, tmp_path):
    keep = 2
    rng = random.Random(1234)
    run = tmp_path / "killed"
    ck = run / "checkpoints"
    plan = _kill_plan(FULL, rng)
    steps = _steps_for(plan)
    n_paused = sum(1 for stage, _ in plan if stage != "random")
    tally = {"planned": len(plan), "steps": steps, "kills": 0, "inside_write": 0, "paused_at": {}, "random": 0,
             "partial_warned": 0, "progress": []}
    warned_expected = False
    t_start = time.time()
    for stage, skip in plan:
        before = _check_after_kill(ck, keep)
        assert before < steps - 2, f"the run reached step {before} of {steps} with kills still planned: {tally}"
        over = _overrides(embedded_root, run, steps, keep)
        if stage == "random":
            proc = _start(over)
            # wait until it trains (a new checkpoint), then kill at a random moment within the next 0.6 s, or of the
            # step after RANDOM_MAX_STEPS - 1 new checkpoints, whichever is first (bounded progress on any machine)
            started = _wait_for(lambda before=before: _steps_on_disk(ck) and _steps_on_disk(ck)[-1] > before, proc, 300)
            assert started, proc.communicate()[0][-3000:]
            t_first, deadline = time.time(), time.time() + rng.uniform(0.0, 0.6)
            while time.time() < deadline and _steps_on_disk(ck)[-1] < before + RANDOM_MAX_STEPS - 1:
                time.sleep(0.005)
            if _steps_on_disk(ck)[-1] >= before + RANDOM_MAX_STEPS - 1:  # capped: a random point of the next step
                time.sleep(rng.uniform(0.0, (time.time() - t_first) / max(1, RANDOM_MAX_STEPS - 2)))
            tally["random"] += 1
        else:
            stale = _pause_markers(ck)  # left in the previous kill's partial folder
            proc = _start(over, MOSAIC_ALM_CKPT_PAUSE=stage, MOSAIC_ALM_CKPT_PAUSE_SKIP=str(skip))
            paused = _wait_for(lambda stale=stale: bool(_pause_markers(ck) - stale), proc, 300)
            assert paused, proc.communicate()[0][-3000:]
            tally["paused_at"][stage] = tally["paused_at"].get(stage, 0) + 1
        out = _kill(proc)
        if warned_expected:  # this start found the previous kill's partial write and said so
            assert "partial checkpoint" in out, out[-3000:]
            tally["partial_warned"] += 1
        assert "Traceback" not in out, out[-3000:]
        tally["kills"] += 1
        partial = list(ck.glob(f".tmp-{ckpt.PREFIX}*"))
        inside = bool(partial) or stage != "random"
        tally["inside_write"] += inside
        warned_expected = bool(partial)
        if stage != "random":
            assert partial, "a paused writer must leave a partial folder"
        after = _check_after_kill(ck, keep, tally)
        assert after >= before
        if stage != "random":
            assert after == before + skip, (stage, skip, before, after)  # what _steps_for counts on
        else:
            assert after <= before + RANDOM_MAX_STEPS + 1, (before, after)
        tally["progress"].append(after - before)
    # every planned kill landed, each paused one inside a checkpoint write
    assert tally["kills"] == len(plan) and tally["random"] == len(plan) - n_paused, tally
    assert sum(tally["paused_at"].values()) == n_paused and tally["inside_write"] >= n_paused, tally
    tally["kill_loop_s"] = round(time.time() - t_start, 1)
    # finish the run
    proc = _start(_overrides(embedded_root, run, steps, keep))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    if warned_expected:
        assert "partial checkpoint" in out
        tally["partial_warned"] += 1
    assert not list(ck.glob(f".tmp-{ckpt.PREFIX}*"))
    assert _steps_on_disk(ck) == [steps - 1, steps]  # keep_last = 2
    tally["total_s"] = round(time.time() - t_start, 1)
    print(f"\n[kill-loop] {json.dumps(tally)}")

    # the same steps without interruption, in this process
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", _overrides(embedded_root, tmp_path / "ref", steps, keep))
    ref = train(parse_config(PretrainConfig, raw), raw)
    got = json.loads((run / "history.json").read_text())
    assert [h["loss"] for h in got] == [h["loss"] for h in ref["history"]]
    assert all(h["loss"] is not None for h in got)
    wa = load_file(str(run / "encoder/model.safetensors"))
    wb = load_file(str(tmp_path / "ref/encoder/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ta, _ = ckpt.load_checkpoint(ck / f"{ckpt.PREFIX}{steps:08d}")
    tb, _ = ckpt.load_checkpoint(tmp_path / "ref/checkpoints" / f"{ckpt.PREFIX}{steps:08d}")
    for name in ("model", "optimizer"):
        assert all(torch.equal(ta[name][k], tb[name][k]) for k in tb[name]), name


@pytest.mark.parametrize("workers", [2])  # 0 workers: tests/test_pretrain.py
def test_resume_with_augmentation_in_workers_is_bit_identical(embedded_root, tmp_path, workers):
    """Waveform augmentation inside data-loader workers, drop-path and masks: a run stopped and resumed equals
    an uninterrupted one (every draw derives from (seed, epoch, index) or (seed, step, rank))."""
    extra = ["data.cached_features=false", "augment.enabled=true", f"data.num_workers={workers}"]
    a = load_config(REPO / "configs/pretrain/tiny.yaml", _overrides(embedded_root, tmp_path / "a", 3, extra=extra))
    full = train(parse_config(PretrainConfig, a), a)
    b = load_config(REPO / "configs/pretrain/tiny.yaml", _overrides(embedded_root, tmp_path / "b", 1, extra=extra))
    train(parse_config(PretrainConfig, b), b)
    b["train"]["max_steps"] = 3
    resumed = train(parse_config(PretrainConfig, b), b)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    wa = load_file(str(tmp_path / "a/encoder/model.safetensors"))
    wb = load_file(str(tmp_path / "b/encoder/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -------------------------------------------------------------------------------------- unit-level crash cases
def _tensors(v=1.0):
    return {"model": {"w": torch.full((4, 4), v)}, "optimizer": {"0.exp_avg": torch.zeros(3)}}


def test_partial_and_corrupt_checkpoints_are_ignored_with_a_warning(tmp_path, caplog):
    ck = tmp_path / "ck"
    for s in (1, 2, 3):
        ckpt.save_checkpoint(ck, s, _tensors(s), {"step": s}, keep_last=5)
    # step 3: a flipped byte in the weights; step 4: a folder without checksums; a leftover temporary folder
    f = ck / "step_00000003/model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    (ck / "step_00000004").mkdir()
    (ck / "step_00000004/model.safetensors").write_bytes(b"half")
    (ck / ".tmp-step_00000005-abc").mkdir()
    with caplog.at_level(logging.WARNING, logger="encoder.checkpoint"):
        latest = ckpt.latest_checkpoint(ck)
    assert latest == ck / "step_00000002"
    text = caplog.text
    assert "partial checkpoint" in text and ".tmp-step_00000005" in text
    assert "step_00000004" in text and "no checksums.json" in text
    assert "step_00000003" in text and "does not match its checksum" in text
    tensors, state = ckpt.load_checkpoint(latest)
    assert state["step"] == 2 and torch.equal(tensors["model"]["w"], torch.full((4, 4), 2.0))
    with pytest.raises(ckpt.CheckpointError, match="does not match its checksum"):
        ckpt.load_checkpoint(ck / "step_00000003")


@pytest.mark.parametrize("stage", ["before-model", "mid-model", "mid-optimizer", "before-checksums",
                                   "before-rename"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, stage, monkeypatch):
    ck = tmp_path / "ck"
    ckpt.save_checkpoint(ck, 1, _tensors(1.0), {"step": 1})

    def full_disk(st, path):
        if st == stage:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "WRITE_HOOK", full_disk)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save_checkpoint(ck, 2, _tensors(2.0), {"step": 2})
    msg = str(info.value)
    assert "step_00000002" in msg and "No space left on device" in msg and "previous checkpoints are intact" in msg
    assert [p.name for p in ck.iterdir()] == ["step_00000001"]  # no partial folder left behind
    tensors, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(ck))
    assert state["step"] == 1 and torch.equal(tensors["model"]["w"], torch.full((4, 4), 1.0))


def test_full_disk_during_training_stops_with_a_clear_message(embedded_root, tmp_path, monkeypatch, capsys):
    train_mod = _pretrain
    over = _overrides(embedded_root, tmp_path / "run", 4)
    real_write = ckpt._write_safetensors

    def write(tensors, path, name):
        if "step_00000003" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(tensors, path, name)

    monkeypatch.setattr(ckpt, "_write_safetensors", write)
    rc = train_mod.main(["--config", str(REPO / "configs/pretrain/tiny.yaml"), *over])
    err = capsys.readouterr().err
    assert rc == 1
    assert "No space left on device" in err and "step_00000003" in err and "intact" in err
    ck = tmp_path / "run/checkpoints"
    assert _steps_on_disk(ck) == [1, 2] and not list(ck.glob(".tmp-*"))
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(ck))[1]["step"] == 2


def test_keep_last_k(tmp_path):
    ck = tmp_path / "ck"
    for s in range(1, 7):
        ckpt.save_checkpoint(ck, s, _tensors(s), {"step": s}, keep_last=3)
    assert _steps_on_disk(ck) == [4, 5, 6]
    ckpt.save_checkpoint(ck, 7, _tensors(7), {"step": 7}, keep_last=0)  # 0 keeps everything
    assert _steps_on_disk(ck) == [4, 5, 6, 7]


def test_pruning_never_drops_the_good_checkpoint_for_a_newer_corrupt_one(tmp_path):
    ck = tmp_path / "ck"
    ckpt.save_checkpoint(ck, 5, _tensors(5), {"step": 5}, keep_last=1)
    (ck / "step_00000009").mkdir()  # corrupt / from an abandoned timeline
    ckpt.save_checkpoint(ck, 6, _tensors(6), {"step": 6}, keep_last=1)
    assert ckpt.latest_checkpoint(ck) == ck / "step_00000006"
