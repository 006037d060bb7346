"""Importing the paper's released checkpoints safely: crafted pickles never run, unsupported variants are refused in
one line, a Hub id offline names the command that fetches it, label names come from the reference's CSVs, and the
`import` / `tag` commands work end to end on a released-layout folder (the golden fixtures' small random models)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from encoder.release import ReleaseError, label_names, strip_prefixes

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "audiomosaic"


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "recipes.cli", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and "real_accelerator" not in ln]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Pickles that run code when unpickled without restriction, in every form the import path reads."""
    out = {}
    good = {"cls_token": torch.zeros(1, 1, 8)}
    out["torch_save"] = tmp_path / "a" / "model_state_dict.pt"
    out["legacy"] = tmp_path / "b" / "model_state_dict.pt"
    out["raw_pickle"] = tmp_path / "c" / "model_state_dict.pt"
    out["nested"] = tmp_path / "d" / "checkpoint.pth"
    for p in out.values():
        p.parent.mkdir(parents=True)
    torch.save({**good, "x": _Evil(marker)}, out["torch_save"])
    torch.save({**good, "x": _Evil(marker)}, out["legacy"], _use_new_zipfile_serialization=False)
    out["raw_pickle"].write_bytes(pickle.dumps(_Evil(marker)))
    torch.save({"state_dict": {**good, "y": _Evil(marker)}}, out["nested"])
    ltu = tmp_path / "ltu"
    ltu.mkdir()
    (ltu / "config.json").write_text(json.dumps({"model_class": "AudioMosaicLlamaForCausalLM"}))
    torch.save({"base_model.model.model.audio_encoder.cls_token": torch.zeros(1, 1, 8), "e": _Evil(marker)},
               ltu / "extra_weights.bin")
    out["ltu_extra_weights"] = ltu
    return out


def test_crafted_pickles_never_run(tmp_path):
    """Through the Python API and the console command: refused in one line, the payload never ran."""
    from encoder.hf import AudioMosaicModel, import_release

    marker = tmp_path / "PWNED"
    for name, src in _crafted(tmp_path, marker).items():
        with pytest.raises(ReleaseError.__mro__[1]) as err:  # CheckpointError (ReleaseError's base)
            import_release(src, tmp_path / f"out-{name}")
        assert "\n" not in str(err.value) and ("refusing" in str(err.value) or "not a state dict" in str(err.value))
        with pytest.raises(ReleaseError.__mro__[1]):
            AudioMosaicModel.from_pretrained(str(src))
        res = _cli("import", src, tmp_path / f"cli-{name}")
        assert res.returncode == 1
        lines = _error_lines(res.stderr)
        assert len(lines) == 1 and lines[0].startswith("mosaic-alm import: error:"), res.stderr
        assert not (tmp_path / f"out-{name}").exists() and not (tmp_path / f"cli-{name}").exists()
    assert not marker.exists(), "a crafted pickle ran code"


def test_unsupported_variants_are_refused_in_one_line(tmp_path):
    from encoder.hf import load_release

    aasist = FIX / "aasist" / "hub"
    with pytest.raises(ReleaseError, match="AASIST spoof-detection head .* not supported"):
        load_release(aasist)
    res = _cli("import", aasist, tmp_path / "out")
    assert res.returncode == 1 and len(_error_lines(res.stderr)) == 1 and "AASIST" in res.stderr
    for cfg, match in ((dict(model_class="AudioMosaicFoo"), "not an AudioMosaic class"),
                       (dict(model_class="LTULlamaForCausalLM"), "CAV-MAE"),
                       (dict(spec_size=[1024, 128]), "no model_class")):
        d = tmp_path / cfg.get("model_class", "plain")
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises((ReleaseError, Exception), match=match):
            load_release(d)
    # RMSNorm / qk-norm variants of the architecture
    src = FIX / "classifier_cls" / "hub"
    for key, cfg_key, match in (("blocks.0.attn.q_norm.weight", None, "qk_norm"),
                                (None, ("norm_layer_type", "rmsnorm"), "RMSNorm")):
        d = tmp_path / f"variant-{match}"
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        if cfg_key:
            cfg[cfg_key[0]] = cfg_key[1]
        (d / "config.json").write_text(json.dumps(cfg))
        if key:
            from safetensors.torch import load_file, save_file

            sd = load_file(str(d / "model.safetensors"))
            sd[key] = torch.ones(4)
            save_file(sd, str(d / "model.safetensors"))
        with pytest.raises(ReleaseError, match=match):
            load_release(d)


def test_hub_id_offline_names_the_command(tmp_path):
    res = _cli("import", "hanxunh/AudioMosaic-vit-b16-finetune-as2m", tmp_path / "x")
    lines = _error_lines(res.stderr)
    assert res.returncode == 1 and len(lines) == 1
    assert "download hanxunh/AudioMosaic-vit-b16-finetune-as2m" in lines[0] and "mosaic-alm import" in lines[0]


def test_label_names_from_the_reference_csvs():
    audioset = label_names(527)
    assert len(audioset) == 527 and audioset[0] == "Speech" and audioset[137] == "Music"
    assert label_names(50)[:2] == ["dog", "rooster"]
    assert label_names(11)[:3] == ["yes", "no", "up"] and label_names(35)[0] == "backward"
    assert label_names(2) == ["label_0", "label_1"]


def test_strip_prefixes():
    t = torch.zeros(1)
    assert list(strip_prefixes({"module._orig_mod.blocks.0.x": t, "_orig_mod.module.cls_token": t,
                                "head.weight": t})) == ["blocks.0.x", "cls_token", "head.weight"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 6) / 16000
    sf.write(d / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32), 16000)
    sf.write(d / "short.flac", (0.1 * rng.standard_normal(7000)).astype(np.float32), 22050)
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return d


def test_tag_command(tmp_path, clips):
    """A folder and files in one call, JSON lines, windows for long clips, sigmoid scores for AudioSet's head and
    softmax for ESC-50's, the broken file's one line while the others are still tagged."""
    from encoder.hf import AudioMosaicForAudioClassification
    from encoder.tagging import tag_file

    out = tmp_path / "as"
    res = _cli("import", FIX / "classifier_as" / "hub", out)
    assert res.returncode == 0, res.stderr
    res = _cli("tag", clips, "--model", out, "--jsonl", "--top-k", "3")
    assert res.returncode == 1  # the broken file
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [Path(r["audio"]).name for r in rows] == ["long.wav", "short.flac"]
    frames = 256  # the fixture's input length
    assert rows[0]["windows"] == -(-600 // frames) and rows[1]["windows"] == 1
    assert all(len(r["labels"]) == 3 for r in rows)
    names = set(label_names(527))
    assert all(x["label"] in names for r in rows for x in r["labels"])
    errs = _error_lines(res.stderr)
    assert len(errs) == 1 and "broken.wav" in errs[0]
    model = AudioMosaicForAudioClassification.from_pretrained(str(out))
    direct = tag_file(model, clips / "long.wav", top_k=3)
    assert [x["label"] for x in direct["labels"]] == [x["label"] for x in rows[0]["labels"]]
    # softmax head: scores of all labels sum to one
    esc = _cli("import", FIX / "classifier_esc" / "hub", tmp_path / "esc")
    assert esc.returncode == 0, esc.stderr
    res = _cli("tag", clips / "long.wav", "--model", tmp_path / "esc", "--jsonl", "--top-k", "50")
    scores = [x["score"] for x in json.loads(res.stdout)["labels"]]
    assert res.returncode == 0 and abs(sum(scores) - 1) < 1e-3 and len(scores) == 50
    # an encoder without a head cannot tag
    enc = _cli("import", FIX / "pretrained" / "hub", tmp_path / "enc")
    assert enc.returncode == 0, enc.stderr
    res = _cli("tag", clips / "long.wav", "--model", tmp_path / "enc")
    assert res.returncode == 1 and "without a classification head" in res.stderr
