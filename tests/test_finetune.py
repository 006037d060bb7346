"""Full fine-tuning recipe (recipes/finetune.py, eval/classifier_training.py) on a tiny task of generated tones; a
tiny random-init encoder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import recipes.finetune as FT
from encoder.data import tasks as T
from eval import classifier_training as FN
from mosaic_core.config import ConfigError, load_recipe, parse_config
from mosaic_core.schedule import lr_factor

SR = 16000
PITCHES = {"low": 250.0, "mid": 700.0, "high": 1800.0, "top": 4200.0}  # far apart on the mel scale


def _tone(rng, freqs, seconds=0.6, noise=0.0):
    t = np.arange(int(SR * seconds)) / SR
    x = np.zeros_like(t)
    for f in freqs:
        f = f * rng.uniform(0.95, 1.05)
        for h, a in ((1, 1.0), (2, 0.4), (3, 0.2)):
            x += a * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi))
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    x = x * env * rng.uniform(0.05, 0.3) / len(freqs)
    return (x + noise * rng.standard_normal(t.size) + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def _write_task(root: Path, kind: str, per_class=(10, 3, 4), seed=0) -> Path:
    """A manifest task in ``root``: kind = single | multi | spoof | folds. Returns the data-recipe path."""
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows, names = [], list(PITCHES)
    splits = dict(zip(("train", "valid", "test"), per_class))

    def add(i, split, label, wave):
        path = f"clips/{kind}_{split}_{i}.wav"
        sf.write(root / path, wave, SR)
        rows.append({"id": f"{kind}_{split}_{i}", "path": path, "label": label, "split": split, "task": kind})

    i = 0
    if kind == "folds":
        splits = {f"fold{f}": 4 for f in (1, 2, 3)}
    for split, n in splits.items():
        for _ in range(n):
            if kind in ("single", "folds"):
                for c in names:
                    add(i, split, c, _tone(rng, [PITCHES[c]]))
                    i += 1
            elif kind == "multi":
                for c in names:
                    labs = sorted({c, names[rng.integers(len(names))]})
                    add(i, split, labs, _tone(rng, [PITCHES[x] for x in labs]))
                    i += 1
            else:  # spoof: bona fide = harmonic tone, spoof = noisy tone
                add(i, split, "bonafide", _tone(rng, [PITCHES[names[rng.integers(4)]]]))
                add(i + 1, split, "spoof", _tone(rng, [PITCHES[names[rng.integers(4)]]], noise=0.05))
                i += 2
    with open(root / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    recipe = {"name": f"tones_{kind}", "data_root": str(root), "manifest": "manifest.jsonl",
              "target_frames": 64, "multi_label": kind == "multi"}
    if kind == "spoof":
        recipe.update(task_type="spoof", classes=["bonafide", "spoof"])
    else:
        (root / "classes.json").write_text(json.dumps(names))
        recipe["classes"] = "classes.json"
    if kind != "folds":
        recipe["splits"] = {"train": "train", "valid": "valid", "test": "test"}
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cfg(tmp_path: Path, recipe: Path, **sections) -> dict:
    cfg = {
        "seed": 0, "run_dir": str(tmp_path / "run"), "threads": 1, "tensorboard": False,
        "task": {"config": str(recipe)},
        "model": {"encoder": "random", "size": "tiny", "depth": 2, "drop_path": 0.0, "head_init_std": 0.02},
        "optim": {"epochs": 6, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 1, "layer_decay": 0.75,
                  "weight_decay": 0.01},
        "augment": {"mixup_alpha": 0.0, "time_mask": 0, "freq_mask": 0, "roll": False},
        "eval": {"batch_size": 32},
    }
    for k, v in sections.items():
        cfg[k].update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_single_label_beats_chance_and_writes_outputs(tmp_path):
    recipe = _write_task(tmp_path / "data", "single")
    raw = _cfg(tmp_path, recipe, augment={"mixup_alpha": 0.5, "time_mask": 8, "freq_mask": 16, "roll": True})
    out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
    acc = out["test"]["test"]["accuracy"]
    assert acc >= 0.6, out["test"]  # chance is 0.25
    assert out["task_type"] == "single_label" and out["target_frames"] == 64
    assert len(out["history"]["train_loss"]) == 6 and len(out["history"]["valid_accuracy"]) == 6
    assert out["trainable_parameters"]["head"]["trainable"] == 192 * 4 + 4
    run = tmp_path / "run"
    saved = json.loads((run / "finetune.json").read_text())
    assert saved["seed"] == 0 and saved["numbers"]["test"]["test"]["accuracy"] == acc
    assert (run / "finetune.md").is_file() and (run / "finetune.html").is_file() and (run / "config.yaml").is_file()
    assert list(run.glob("finetune_*training_curves*.png"))


def test_llrd_lower_blocks_get_lower_lr():
    enc_cfg = FN.encoder_config(FN.FinetuneModelConfig(size="tiny", depth=3))
    model = FN.build_finetune_model(FN.FinetuneModelConfig(size="tiny", depth=3), enc_cfg, 5)
    opt = FN.build_optimizer(model, FN.FinetuneOptimConfig(lr=1e-3, layer_decay=0.5))
    lr_of = {}
    for g in opt.param_groups:
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    named = dict(model.named_parameters())
    lrs = [lr_of[id(named[n])] for n in ("encoder.patch_embed.weight", "encoder.blocks.0.mlp.0.weight",
                                         "encoder.blocks.1.mlp.0.weight", "encoder.blocks.2.mlp.0.weight",
                                         "head.weight")]
    assert lrs == sorted(lrs) and len(set(lrs)) == 5
    assert lrs[-1] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(named["encoder.fc_norm.weight"])] == pytest.approx(1e-3)
    # schedule: linear warmup then cosine down to min_lr
    # transformers' warm-up + cosine (mosaic_core.schedule): linear from 0, peak at the end of warm-up, min at the end
    assert lr_factor(0, 100, 10) == pytest.approx(0.0) and lr_factor(5, 100, 10) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_multi_label_with_balanced_sampler_yields_map(tmp_path):
    recipe = _write_task(tmp_path / "data", "multi", per_class=(6, 2, 3))
    raw = _cfg(tmp_path, recipe, optim={"epochs": 3, "balanced_sampler": True, "samples_per_epoch": 32},
               augment={"mixup_alpha": 0.5})
    out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
    m = out["test"]["test"]
    assert out["task_type"] == "multi_label"
    assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["AUC"] <= 1.0 and np.isfinite(m["d_prime"])
    assert len(out["history"]["train_loss"]) == 3


def test_spoof_task_yields_eer(tmp_path):
    recipe = _write_task(tmp_path / "data", "spoof", per_class=(8, 2, 4))
    raw = _cfg(tmp_path, recipe, optim={"epochs": 3})
    out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
    assert out["task_type"] == "spoof" and out["metric"] == "EER"
    assert 0.0 <= out["test"]["test"]["EER"] <= 1.0
    assert "accuracy" in out["test"]["test"]


def test_fold_mode_averages_folds(tmp_path):
    recipe = _write_task(tmp_path / "data", "folds")
    raw = _cfg(tmp_path, recipe, task={"folds": [1, 2, 3]}, optim={"epochs": 2})
    out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
    accs = [out["folds"][f]["test"]["test"]["accuracy"] for f in ("1", "2", "3")]
    assert out["test"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert all(out["folds"][f]["n_test"]["test"] == 16 and out["folds"][f]["n_train"] == 32 for f in ("1", "2", "3"))


def test_cli_overrides_and_typos_rejected(tmp_path, capsys):
    recipe = _write_task(tmp_path / "data", "single", per_class=(2, 1, 1))
    cfg_path = tmp_path / "ft.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(tmp_path, recipe)))
    assert FT.main(["--config", str(cfg_path), "optim.epochs=1", f"run_dir={tmp_path / 'cli'}"]) == 0
    assert json.loads((tmp_path / "cli" / "finetune.json").read_text())["config"]["optim"]["epochs"] == 1
    # an override naming a key the recipe lacks, a typo inside a section, a bad value, a typo in the data recipe
    with pytest.raises(ConfigError, match="optim.epoch"):
        FT.main(["--config", str(cfg_path), "optim.epoch=3"])
    bad = _cfg(tmp_path, recipe)
    bad["augment"]["mixup"] = 0.5
    with pytest.raises(ConfigError, match="mixup"):
        parse_config(FT.FinetuneConfig, bad)
    bad = _cfg(tmp_path, recipe, task={"task_type": "multilabel"})
    with pytest.raises(ConfigError, match="task_type"):
        parse_config(FT.FinetuneConfig, bad)
    typo = yaml.safe_load(recipe.read_text())
    typo["target_frame"] = 64
    recipe.write_text(yaml.safe_dump(typo))
    with pytest.raises(ConfigError, match="target_frame"):
        FT.finetune(parse_config(FT.FinetuneConfig, _cfg(tmp_path, recipe)))


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "finetune").glob("*.yaml")
                                        if p.name != "base.yaml"))
def test_shipped_recipes_parse(name, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name data recipes relative to the repository root
    cfg, _ = load_recipe(FT.FinetuneConfig, f"configs/finetune/{name}")
    assert cfg.optim.epochs > 0 and 0 < cfg.optim.layer_decay <= 1
    recipe = T.data_recipe(cfg.task)  # data-recipe keys (with task.data merged) are all known
    assert recipe["name"]
    if name.startswith("embedded"):
        assert cfg.augment.time_mask < int(recipe["target_frames"])


@pytest.mark.parametrize("kind", ["single", "spoof"])
def test_head_init_probe_starts_at_the_fair_readout(tmp_path, kind):
    """LP-FT: before any step, the model's predictions are the fitted logistic regression's."""
    from mosaic_core.runtime import autocast

    recipe = _write_task(tmp_path / "data", kind)
    raw = _cfg(tmp_path, recipe, model={"head_init": "probe"})
    cfg = parse_config(FT.FinetuneConfig, raw)
    task = T.load_task(cfg.task, seed=0)
    T.cache_spectrograms(task, cfg.task)
    model = FN.build_finetune_model(cfg.model, FN.encoder_config(cfg.model), task.num_outputs)
    before = model.head.weight.clone()
    FT.init_head_from_probe(model, task, task.splits["train"], task.splits["valid"], cfg,
                            lambda: autocast(False, torch.device("cpu")))
    assert not torch.equal(before, model.head.weight) and isinstance(model.head_norm, torch.nn.BatchNorm1d)
    from eval.probes import fit_logreg

    model.eval()
    x = torch.stack([task.specs[i] for i in task.splits["test"].tolist()]) if task.specs is not None else None
    with torch.no_grad():
        z = model.features(x).numpy()
        logits = model(x)
    xtr = model.features(torch.stack([task.specs[i] for i in task.splits["train"].tolist()])).detach().numpy()
    xva = model.features(torch.stack([task.specs[i] for i in task.splits["valid"].tolist()])).detach().numpy()
    readout = fit_logreg(xtr, task.targets[task.splits["train"]].numpy(), xva,
                         task.targets[task.splits["valid"]].numpy(), seed=0)
    assert (logits.argmax(1).numpy() == readout.predict(z)).all()


def test_head_norm_standardises_what_the_head_reads(tmp_path):
    """model.head_norm: a BatchNorm without affine between the pooled features and the head, so a near-zero head
    on nearly constant pooled features still learns; it is what the embedded recipes use."""
    mc = FN.FinetuneModelConfig(size="tiny", depth=2, head_norm=True)
    model = FN.build_finetune_model(mc, FN.encoder_config(mc), 4)
    norm = model.head_norm
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine
    assert isinstance(FN.build_finetune_model(FN.FinetuneModelConfig(size="tiny", depth=2), FN.encoder_config(mc),
                                              4).head_norm, torch.nn.Identity)
    model.train()
    seen = {}
    model.head.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0].detach()))
    model(torch.randn(16, 64, 128))
    x = seen["x"]
    assert x.mean(0).abs().max() < 1e-3 and (x.var(0, unbiased=False) - 1).abs().max() < 1e-2
    # on the tone task, 2 epochs from the MAE-style near-zero head: the standardised head learns, the plain one
    # barely moves
    recipe = _write_task(tmp_path / "data", "single")
    losses = {}
    for flag in (False, True):
        raw = _cfg(tmp_path, recipe, run_dir=str(tmp_path / f"run{flag}"),
                   model={"head_init_std": 2e-5, "head_norm": flag}, optim={"epochs": 2, "warmup_epochs": 0})
        out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
        losses[flag] = out["history"]["train_loss"][-1]
    assert losses[True] < losses[False] - 0.1, losses
