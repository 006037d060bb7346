"""ALM stage checkpoints: a stage killed with SIGKILL mid-run and restarted with the same command ends with the same
per-step losses and the same trainable weights as an uninterrupted run (bit for bit on CPU: same process layout,
same ops, one thread), in plain PyTorch and under DeepSpeed ZeRO-2 and ZeRO-3; gradient accumulation over
micro-batches equals one large batch; DeepSpeed's own (pickle) checkpoint files are refused when they do not match
the manifest the kit keeps, or hold code, before DeepSpeed reads them.

Real SmolLM2, a random tiny encoder, toy tones (mosaic_alm.toy), real DeepSpeed on CPU (gloo, world 1)."""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mosaic_alm.toy import make_toy_data

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy"), per_class={"train": 4, "valid": 1, "test": 1})


# losses and weights are compared exactly (or to 1e-5): fp32, whatever the CPU
pytestmark = pytest.mark.usefixtures("fp32_everywhere")


def _overrides(toy, out, steps=STEPS):
    return [f"data.root={toy}", f"output_dir={out}", "name=t", "audio.encoder=random:tiny", f"train.max_steps={steps}",
            "train.batch_size=2", "prompt.system=''", "data.qtypes=[sound_event]", "train.eval_batches=0",
            "train.warmup_ratio=0.2", "train.init_from=null"]


def _weights(art: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor of an artifact: projector (+ feature statistics) and the LoRA adapter if any."""
    w = {f"projector.{k}": v for k, v in load_file(str(art / "projector.safetensors")).items()}
    adapter = art / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        w.update({f"lora.{k}": v for k, v in load_file(str(adapter)).items()})
    return w


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    # the subprocess uses this process's torch threads (1, tests/conftest.py): its losses are compared bit for bit
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()),
               MASTER_PORT=str(_free_port()))  # DeepSpeed's one-process group: a port no other run holds
    env.pop("MOSAIC_ALM_CKPT_PAUSE", None)
    return env


def _cmd(stage, overrides):
    return [sys.executable, "-m", "recipes.train_alm", "--config", str(REPO / f"configs/alm/stage{stage}.yaml"),
            *overrides]


def _kill_after_checkpoint(stage, overrides, ckpts: Path, log: Path) -> int:
    """Start train-alm, SIGKILL it as soon as a checkpoint folder appears (they appear complete: atomic rename)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(_cmd(stage, overrides), cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        try:
            while not (ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir())):
                assert proc.poll() is None, f"train-alm exited ({proc.returncode}) before a checkpoint:\n" + \
                    log.read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint after 600 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode


ALIGN = ["train.align_steps=20", "train.align_batch=8", "train.copy_warmup=0.5"]


@pytest.mark.parametrize("stage, extra", [(1, []), (2, []), (2, ALIGN)], ids=["1", "2", "2-align-copy"])
def test_sigkill_mid_stage_then_resume_equals_uninterrupted(toy, tmp_path, stage, extra):
    """Stage 1 (projector only), stage 2 (projector + LoRA with dropout: the torch RNG must be restored) and stage 2
    with projector alignment and the copy warm-up (the kill lands inside the warm-up); ~25-40 s each on CPU."""
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    ref_cfg = load_config(REPO / f"configs/alm/stage{stage}.yaml", _overrides(toy, tmp_path / "ref") + extra)
    ref = train_stage(ref_cfg, quiet=True)  # uninterrupted, no checkpoints
    assert ref["steps"] == STEPS and len(ref["step_losses"]) == STEPS and ref["resumed_from_step"] is None
    if stage == 2:
        assert ref["parameters"]["lora"]["trainable"] > 0

    run = tmp_path / "killed" / "t" / f"stage{stage}"
    ov = _overrides(toy, tmp_path / "killed") + extra + ["train.ckpt_every=2", "train.keep_last=2"]
    rc = _kill_after_checkpoint(stage, ov, run / "checkpoints", tmp_path / "killed.log")
    assert rc == -signal.SIGKILL
    assert not (run / "summary.json").exists() and not (run / "artifact").exists()  # it really died mid-stage
    done = sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
    assert done and max(done) < STEPS, done

    res = subprocess.run(_cmd(stage, ov), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'} at step {max(done)}" in res.stdout
    got = json.loads((run / "summary.json").read_text())
    assert got["resumed_from_step"] == max(done) and got["steps"] == STEPS
    assert got["step_losses"] == ref["step_losses"]  # exact: same ops on the same data with the same RNG
    assert got["micro_batches"] == ref["micro_batches"] and got["answer_tokens"] == ref["answer_tokens"]
    want, have = _weights(Path(ref["artifact"])), _weights(run / "artifact")
    assert sorted(want) == sorted(have)
    for k in want:
        assert torch.equal(want[k], have[k]), k
    # keep_last=2: the two newest checkpoints stay (the last one at the final step)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]


def test_resume_ignores_checkpoints_of_another_config(toy, tmp_path):
    """A checkpoint is only resumed for the same config (ckpt_every and other bookkeeping keys aside); checkpoints of
    another config are moved aside and the stage starts fresh."""
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    ov = _overrides(toy, tmp_path, steps=2) + ["train.ckpt_every=1"]
    first = train_stage(load_config(REPO / "configs/alm/stage1.yaml", ov), quiet=True)
    assert first["resumed_from_step"] is None
    again = train_stage(load_config(REPO / "configs/alm/stage1.yaml", ov + ["train.log_every=3"]), quiet=True)
    assert again["resumed_from_step"] == 2 and again["step_losses"] == first["step_losses"]
    other = train_stage(load_config(REPO / "configs/alm/stage1.yaml", ov + ["train.lr=5e-4"]), quiet=True)
    assert other["resumed_from_step"] is None and other["step_losses"][1] != first["step_losses"][1]
    assert len(list((tmp_path / "t" / "stage1").glob("checkpoints.superseded-*"))) == 1


def test_grad_accum_equals_large_batch(toy, tmp_path):
    """batch 2 x grad_accum 2 == batch 4: the same rows per step, each micro-batch's mean loss weighted by its share
    of answer tokens. Captions make the halves' token counts differ, so a plain mean of the micro-batch losses
    would not match. Not bit-exact: the halves are padded to their own longest row and the gradient is summed in
    two parts, so floats differ in the last bits; losses agree to 1e-5 (relative). Adam divides each update by the
    gradient's RMS, which turns those last-bit differences into up to ~3e-6 on a weight (measured) after 3 steps at
    lr 1e-3, hence atol 2e-5 on weights: 50x below one step's change, while a plain mean of the micro-batch losses
    moves them by up to 1.4e-3 (measured)."""
    from mosaic_alm.data import InstructionDataset, PromptFormatter, collate, load_records
    from mosaic_alm.llm import LLMConfig, load_llm
    from mosaic_alm.stage_data import epoch_batches
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    llm = load_llm(LLMConfig())  # stage 1: the LLM is frozen, both runs share it
    common = _overrides(toy, tmp_path, steps=3) + ["data.qtypes=null", "data.kind=all", "projector.standardize=false",
                                                    "train.group_by_length=false"]  # same rows: plain permutation
    big = train_stage(load_config(REPO / "configs/alm/stage1.yaml", common + ["name=big", "train.batch_size=4"]),
                      llm_and_tokenizer=llm, quiet=True)
    acc = train_stage(load_config(REPO / "configs/alm/stage1.yaml",
                                  common + ["name=acc", "train.batch_size=2", "train.grad_accum=2"]),
                      llm_and_tokenizer=llm, quiet=True)
    assert big["micro_batches"] == 3 and acc["micro_batches"] == 6 and big["answer_tokens"] == acc["answer_tokens"]
    assert acc["step_losses"] == pytest.approx(big["step_losses"], rel=1e-5, abs=1e-6)
    wb, wa = _weights(Path(big["artifact"])), _weights(Path(acc["artifact"]))
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")

    # the check has teeth: the halves of some step have different answer-token counts
    recs = load_records(toy, "train", None, "all", 0, 0, None)  # as train_stage reads them
    ds = InstructionDataset(recs, PromptFormatter(llm[1], 8, system=""))
    halves = [int((collate([ds[i] for i in b], 0)["labels"][:, 1:] != -100).sum())
              for b in epoch_batches(len(ds), 2, 0, 0)[:6]]
    assert any(halves[i] != halves[i + 1] for i in range(0, 6, 2)), halves


# ------------------------------------------------------------------------------------------------ DeepSpeed
DS = {2: "configs/deepspeed/alm_zero2.json", 3: "configs/deepspeed/alm_zero3.json"}
DS_STEPS = 4


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("zero", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_under_deepspeed_then_resume_equals_uninterrupted(toy, tmp_path, zero):
    """Stage 2 (projector + LoRA with dropout) through a DeepSpeed engine (one process, gloo on CPU), killed after
    its step-2 checkpoint (kit checkpoint + DeepSpeed's optimizer partitions and fp32 master weights) and run again:
    the losses and every trained tensor equal an uninterrupted DeepSpeed run's, bit for bit. ~40 s (ZeRO-2), ~75 s
    (ZeRO-3, slow: its hooks gather every LLM weight each step) on 2 shared CPU cores. Under ZeRO-3 the projector is
    the attentive one, whose query-side attention reads the attention's weights outside that module's own forward
    (registered with the engine as external parameters: AudioProjector.external_parameters)."""
    pytest.importorskip("deepspeed")
    ds = [f"train.deepspeed={DS[zero]}"] + (["projector.kind=attentive"] if zero == 3 else [])
    ref = _run(_cmd(2, _overrides(toy, tmp_path / "ref", DS_STEPS) + ds))
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
    want = json.loads((tmp_path / "ref/t/stage2/summary.json").read_text())
    assert want["steps"] == DS_STEPS and want["parameters"]["lora"]["trainable"] > 0

    run = tmp_path / "killed" / "t" / "stage2"
    ov = _overrides(toy, tmp_path / "killed", DS_STEPS) + ds + ["train.ckpt_every=2"]
    assert _kill_after_checkpoint(2, ov, run / "checkpoints", tmp_path / "killed.log") == -signal.SIGKILL
    assert not (run / "summary.json").exists()  # it died mid-stage
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000002"]
    assert (run / "ds_checkpoints/step_00000002").is_dir()

    res = _run(_cmd(2, ov))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'} at step 2" in res.stdout
    got = json.loads((run / "summary.json").read_text())
    assert got["resumed_from_step"] == 2 and got["step_losses"] == want["step_losses"]
    assert got["micro_batches"] == want["micro_batches"] and got["answer_tokens"] == want["answer_tokens"]
    w_ref, w_got = _weights(tmp_path / "ref/t/stage2/artifact"), _weights(run / "artifact")
    assert sorted(w_ref) == sorted(w_got) and any(k.startswith("lora.") for k in w_ref)
    for k in w_ref:
        assert torch.equal(w_ref[k], w_got[k]), k
    # one DeepSpeed tag per kit checkpoint (keep_last=2), each named in its manifest
    tags = sorted(p.name for p in (run / "ds_checkpoints").glob("step_*"))
    assert tags == sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]


@pytest.mark.slow
def test_deepspeed_two_ranks_resume_equals_uninterrupted(toy, tmp_path):
    """World 2 through the ``deepspeed`` launcher (ZeRO-2, two CPU ranks): rank 0 writes the kit's checkpoint with
    both ranks' RNG states and the manifest of both optimizer partitions. A relaunch after the step-4 checkpoint is
    removed (as if killed between the two) resumes at step 2 and ends equal to an uninterrupted launch: rank 0's
    losses and the weights, which also hold rank 1's LoRA-dropout draws through the averaged gradients. ~90 s."""
    pytest.importorskip("deepspeed")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"

    def launch(out, *extra):
        cmd = [launcher, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "recipes.train_alm",
               "--config", str(REPO / "configs/alm/stage2.yaml"), *_overrides(toy, out, DS_STEPS),
               f"train.deepspeed={DS[2]}", *extra]
        res = _run(cmd)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout + res.stderr

    launch(tmp_path / "ref")
    run = tmp_path / "two" / "t" / "stage2"
    launch(tmp_path / "two", "train.ckpt_every=2")
    state = json.loads((run / "checkpoints/step_00000002/state.json").read_text())
    assert state["world"] == 2 and len(state["rng_ranks"]) == 1
    assert sorted(state["deepspeed"]["sha256"]) == ["mp_rank_00_model_states.pt",
                                                    "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                    "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    for p in (run / "checkpoints/step_00000004", run / "artifact"):
        shutil.rmtree(p)
    (run / "summary.json").unlink()
    assert "resumed from" in launch(tmp_path / "two", "train.ckpt_every=2")
    want, got = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "ref/t/stage2", run))
    assert got["resumed_from_step"] == 2 and got["step_losses"] == want["step_losses"]
    w_ref, w_got = _weights(tmp_path / "ref/t/stage2/artifact"), _weights(run / "artifact")
    assert sorted(w_ref) == sorted(w_got)
    for k in w_ref:
        assert torch.equal(w_ref[k], w_got[k]), k


@pytest.fixture(scope="module")
def ds_run(toy, tmp_path_factory):
    """A finished ZeRO-2 stage 1 with checkpoints at steps 1 and 2 (kit + DeepSpeed), run once for the module."""
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("ds")
    ov = _overrides(toy, out, 2) + [f"train.deepspeed={DS[2]}", "train.ckpt_every=1"]
    res = _run(_cmd(1, ov))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return out, ov


def _latest(run: Path) -> tuple[Path, dict]:
    from encoder import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run / "checkpoints")
    return latest, ckpt.load_checkpoint(latest)[1]


def test_tampered_deepspeed_checkpoint_is_refused_before_loading(ds_run, tmp_path):
    """A changed byte, a missing or an extra file, or no manifest: CheckpointError naming the folder or file."""
    from encoder import checkpoint as ckpt

    run = tmp_path / "t" / "stage1"
    shutil.copytree(ds_run[0] / "t" / "stage1", run)
    latest, state = _latest(run)
    record = state["deepspeed"]
    assert latest.name == record["tag"] == "step_00000002" and len(record["sha256"]) == 2
    folder = ckpt.verify_deepspeed_state(run, record)  # as written: verifies, and loads without code
    optim = next(folder.glob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0x01
    optim.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=f"{optim.name} does not match its checksum"):
        ckpt.verify_deepspeed_state(run, record)
    optim.unlink()
    with pytest.raises(ckpt.CheckpointError, match=f"missing \\['{optim.name}'\\]"):
        ckpt.verify_deepspeed_state(run, record)
    (folder / "extra.pt").write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointError, match="unexpected \\['extra.pt'\\]"):
        ckpt.verify_deepspeed_state(run, record)
    with pytest.raises(ckpt.CheckpointError, match="no manifest of its DeepSpeed state"):
        ckpt.verify_deepspeed_state(run, None)


class _Evil:
    """Unpickling this calls ``open(marker, "w")`` (as in tests/test_reliability_security.py)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_deepspeed_checkpoint_with_code_is_refused_even_with_a_matching_manifest(ds_run, tmp_path):
    """The worst case: someone rewrote DeepSpeed's optimizer file with a pickle payload AND the manifest and the
    kit's checksums to match. ``mosaic-alm train-alm`` still refuses it with one line before DeepSpeed unpickles
    anything (the payload would create a marker file; it does when torch.load(weights_only=False) reads the file)."""
    from mosaic_core.io import sha256_file

    run = ds_run[0] / "t" / "stage1"
    run_copy = tmp_path / "t" / "stage1"
    shutil.copytree(run, run_copy)
    run = run_copy
    latest, state = _latest(run)
    optim = next((run / "ds_checkpoints" / state["deepspeed"]["tag"]).glob("*optim_states.pt"))
    real = torch.load(optim, weights_only=False)  # the kit's own file, written above

    def planted(marker: Path) -> bytes:
        buf = io.BytesIO()
        torch.save(dict(real, payload=_Evil(marker)), buf)
        return buf.getvalue()

    control = tmp_path / "control.pt"
    control.write_bytes(planted(tmp_path / "CONTROL"))
    torch.load(control, weights_only=False)  # what DeepSpeed's loader does
    assert (tmp_path / "CONTROL").exists()

    marker = tmp_path / "PWNED"
    optim.write_bytes(planted(marker))
    state["deepspeed"]["sha256"][optim.name] = sha256_file(optim)
    (latest / "state.json").write_text(json.dumps(state))
    sums = json.loads((latest / "checksums.json").read_text())
    sums["state.json"] = sha256_file(latest / "state.json")
    (latest / "checksums.json").write_text(json.dumps(sums))
    # the same command again: it resumes from the newest checkpoint (step 2 of 2) before it can finish
    ov = [o if not o.startswith("output_dir=") else f"output_dir={tmp_path}" for o in ds_run[1]]
    res = _run([sys.executable, "-m", "recipes.cli", "train-alm", "--config", str(REPO / "configs/alm/stage1.yaml"),
                *ov])
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("mosaic-alm train-alm: error:")]
    assert len(err) == 1 and "refusing to load" in err[0] and optim.name in err[0], res.stderr[-3000:]
    assert not marker.exists(), "DeepSpeed's checkpoint was unpickled"


_DS_ACCUM = """
import json, sys
from mosaic_alm.llm import LLMConfig, load_llm
from mosaic_core.config import load_config
from recipes.train_alm import train_stage

llm = load_llm(LLMConfig())  # stage 1: the LLM is frozen, both runs share it
config, common = sys.argv[1], json.loads(sys.argv[2])
for name, extra in (("big", ["train.batch_size=4"]), ("acc", ["train.batch_size=2", "train.grad_accum=2"])):
    train_stage(load_config(config, common + [f"name={name}", *extra]), llm_and_tokenizer=llm, quiet=True)
"""


def test_grad_accum_under_deepspeed_equals_large_batch(toy, tmp_path):
    """The same check as test_grad_accum_equals_large_batch through a ZeRO-2 engine (DeepSpeed divides the loss by
    its gradient_accumulation_steps and sums the micro-batch gradients in its own buckets), same tolerances. Both
    runs in one subprocess (the engine's process group stays up); ~20 s."""
    pytest.importorskip("deepspeed")
    common = _overrides(toy, tmp_path, steps=3) + ["data.qtypes=null", "data.kind=all", "projector.standardize=false",
                                                    f"train.deepspeed={DS[2]}", "train.group_by_length=false"]
    res = _run([sys.executable, "-c", _DS_ACCUM, str(REPO / "configs/alm/stage1.yaml"), json.dumps(common)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    big, acc = (json.loads((tmp_path / n / "stage1/summary.json").read_text()) for n in ("big", "acc"))
    assert big["micro_batches"] == 3 and acc["micro_batches"] == 6 and big["answer_tokens"] == acc["answer_tokens"]
    assert acc["step_losses"] == pytest.approx(big["step_losses"], rel=1e-5, abs=1e-6)
    wb, wa = _weights(tmp_path / "big/stage1/artifact"), _weights(tmp_path / "acc/stage1/artifact")
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_deepspeed_checkpoints_of_another_config_move_aside_with_the_kit_checkpoints(ds_run, tmp_path):
    """Another config's checkpoints go aside with their DeepSpeed tags (a fresh run then never sees stale tags)."""
    from mosaic_alm.stage_state import resume_stage

    run = tmp_path / "t" / "stage1"
    shutil.copytree(ds_run[0] / "t" / "stage1", run)
    _, state = _latest(run)
    other = json.loads(json.dumps(state["config"]))
    other["train"]["lr"] = other["train"]["lr"] / 2
    assert resume_stage(run, other, None, None, None) is None  # decided before the model or engine is touched
    aside = list(run.glob("checkpoints.superseded-*"))
    assert len(aside) == 1 and not (run / "checkpoints").exists() and not (run / "ds_checkpoints").exists()
    assert sorted(p.name for p in (aside[0] / "ds_checkpoints").glob("step_*")) == ["step_00000001", "step_00000002"]
