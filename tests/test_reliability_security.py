"""Reliability, item 4: untrusted files. Weights are safetensors; ``torch.load`` only with ``weights_only=True``.

A crafted pickle (one that creates a marker file when unpickled) is planted as a checkpoint, as optimiser state,
as a cached-feature file, as an encoder's ``pytorch_model.bin`` and as a plain ``.pt``: loading fails with a clear
error (or the cache is refused and rebuilt) and the marker never appears. YAML is read with a safe loader; no
config value reaches ``eval``/``exec``; names a config picks come from allow-lists; ``trust_remote_code`` is never
turned on. A static scan of the whole code base backs these up.
"""
from __future__ import annotations

import ast
import io
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from encoder import checkpoint as ckpt
from mosaic_core.config import ConfigError, load_config, parse_config, read_yaml
from mosaic_core.io import sha256_file

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if anyone unpickles it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(marker: Path) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, buf)  # torch's zip format
    return {"raw": pickle.dumps({"payload": _Evil(marker)}), "torch_zip": buf.getvalue()}


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a planted pickle was unpickled"


def test_the_payload_really_works_when_unpickled(tmp_path):
    m = tmp_path / "control"
    pickle.loads(_pickles(m)["raw"])  # the control: an unsafe loader runs the payload
    assert m.exists()


def _plant_checkpoint(ck: Path, step: int, name: str, payload: bytes) -> Path:
    """A complete-looking checkpoint whose ``name``.safetensors is a pickle, with matching checksums."""
    ckpt.save_checkpoint(ck, step, {"model": {"w": torch.ones(2)}, "optimizer": {"0.exp_avg": torch.ones(2)}},
                         {"step": step, "history": [], "optimizer": {"state": {}, "param_groups": []}})
    folder = ck / f"{ckpt.PREFIX}{step:08d}"
    (folder / f"{name}.safetensors").write_bytes(payload)
    sums = {f.name: sha256_file(f) for f in folder.iterdir() if f.name != "checksums.json"}
    (folder / "checksums.json").write_text(json.dumps(sums))  # an attacker can compute checksums too
    return folder


@pytest.mark.parametrize("name", ["model", "optimizer"])
@pytest.mark.parametrize("kind", ["raw", "torch_zip"])
def test_pickle_planted_as_checkpoint_or_optimizer_state(tmp_path, marker, name, kind):
    folder = _plant_checkpoint(tmp_path / "ck", 7, name, _pickles(marker)[kind])
    assert ckpt.verify(folder) is None
    with pytest.raises(ckpt.CheckpointError, match=f"{name}.safetensors is not a valid safetensors file"):
        ckpt.load_checkpoint(folder)


def test_training_refuses_to_resume_from_a_planted_checkpoint(embedded_root, tmp_path, marker):
    from encoder.pretraining import PretrainConfig
    from recipes.pretrain import train

    run = tmp_path / "run"
    _plant_checkpoint(run / "checkpoints", 3, "model", _pickles(marker)["torch_zip"])
    raw = load_config(REPO / "configs/pretrain/tiny.yaml", [
        f"data.root={embedded_root}", "data.shards=null", "data.manifests=[keywords/manifest.jsonl]", f"run_dir={run}",
        "train.max_steps=4", "train.batch_size=8", "train.progress=false", "model.depth=2"])
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors file"):
        train(parse_config(PretrainConfig, raw), raw)


@pytest.mark.parametrize("kind", ["raw", "torch_zip"])
def test_safe_torch_load_refuses_code(tmp_path, marker, kind):
    p = tmp_path / "state.pt"
    p.write_bytes(_pickles(marker)[kind])
    with pytest.raises(ckpt.CheckpointError, match="refusing to load .*state.pt"):
        ckpt.safe_torch_load(p)
    # plain tensors still load
    torch.save({"w": torch.arange(3)}, tmp_path / "plain.pt")
    assert torch.equal(ckpt.safe_torch_load(tmp_path / "plain.pt")["w"], torch.arange(3))


def test_pickle_planted_as_cached_features_is_refused_and_rebuilt(tmp_path, marker, caplog):
    import numpy as np
    import soundfile as sf

    from encoder.data.dataset import cache_features
    from encoder.features import FbankConfig

    rows = []
    for i in range(3):
        p = tmp_path / f"c{i}.wav"
        sf.write(p, (0.1 * np.sin(np.arange(8000) * (0.05 + 0.01 * i))).astype(np.float32), 16000)
        rows.append({"id": f"c{i}", "path": str(p)})
    cache = tmp_path / "cache" / "fbank_abc.safetensors"
    cache.parent.mkdir()
    for payload in _pickles(marker).values():
        cache.write_bytes(payload)
        with caplog.at_level(logging.WARNING):
            feats = cache_features(rows, FbankConfig(target_frames=64), cache)
        assert "not a valid safetensors file" in caplog.text and str(cache) in caplog.text
        assert sorted(feats) == ["c0", "c1", "c2"] and all(torch.isfinite(v).all() for v in feats.values())
        caplog.clear()
    # and the rebuilt cache is a real safetensors file
    from safetensors.torch import load_file

    assert sorted(load_file(str(cache))) == ["c0", "c1", "c2"]


def test_encoder_folder_with_a_pickled_pytorch_model_bin(tmp_path, marker):
    from encoder.hf import AudioMosaicConfig, AudioMosaicModel

    folder = tmp_path / "enc"
    AudioMosaicModel(AudioMosaicConfig(size="tiny", depth=1, target_frames=64)).save_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(_pickles(marker)["torch_zip"])
    with pytest.raises(Exception) as info:
        AudioMosaicModel.from_pretrained(str(folder))
    assert "pytorch_model.bin" in str(info.value) or "weights_only" in str(info.value) \
        or "safetensors" in str(info.value).lower(), str(info.value)


# ------------------------------------------------------------------------------------------------------- YAML
def test_yaml_python_tags_are_refused(tmp_path, marker):
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("seed: 1\nname: x\n")
    with pytest.raises(ConfigError, match="cannot parse value"):
        load_config(ok, [f"name=!!python/object/apply:os.system ['touch {marker}']"])


def test_config_names_come_from_allow_lists(tmp_path, marker):
    from encoder.pretraining import PretrainConfig

    base = load_config(REPO / "configs/pretrain/tiny.yaml")
    evil = f"__import__('os').system('touch {marker}')"
    for section, key in [("model", "size"), (None, "objective"), ("distributed", "backend"),
                         ("data", "on_bad_clip"), ("train", "precision"), ("masking", "time_view")]:
        raw = json.loads(json.dumps(base))
        (raw[section] if section else raw)[key] = evil
        with pytest.raises(ConfigError) as info:  # rejected at load, before anything runs
            parse_config(PretrainConfig, raw)
        assert key in str(info.value) and len(str(info.value).splitlines()) == 1
    from encoder.masking import view_indices

    with pytest.raises(ValueError, match="unknown mask view"):  # the library checks too, for direct callers
        view_indices(evil, 2, 8, 8, 0.5, torch.Generator(), "cpu")


# -------------------------------------------------------------------------------------------- static scan
SOURCES = [p for d in ("mosaic_core", "encoder", "mosaic_alm", "eval", "recipes", "bench", "scripts")
           for p in (REPO / d).rglob("*.py")]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_static_scan_no_unsafe_loading_anywhere():
    assert len(SOURCES) > 20
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(REPO)
        for node, owner, name in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{rel}:{node.lineno}"
            if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where}: {name}()")
            if owner == "torch" and name == "load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "cPickle", "dill", "joblib", "marshal") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}")
            if owner == "yaml" and name in ("unsafe_load", "full_load", "load_all"):
                problems.append(f"{where}: yaml.{name}")
            if owner == "yaml" and name == "load":
                loader = kw.get("Loader")
                safe = ("_FloatSafeLoader", "SafeLoader", "CSafeLoader")
                if loader is None or not (isinstance(loader, ast.Name) and loader.id in safe):
                    problems.append(f"{where}: yaml.load without a safe loader")
            tr = kw.get("trust_remote_code")
            if tr is not None and not (isinstance(tr, ast.Constant) and tr.value is False):
                problems.append(f"{where}: trust_remote_code not literally False")
            if name in ("Unpickler",) or (owner == "np" and name == "load"
                                          and not (isinstance(kw.get("allow_pickle"), ast.Constant)
                                                   and kw["allow_pickle"].value is False)):
                problems.append(f"{where}: {owner}.{name} may unpickle")
    assert not problems, "\n".join(problems)


def test_torch_load_sites_are_only_the_safe_one():
    hits = [f"{p.relative_to(REPO)}" for p in SOURCES for node, owner, name in _calls(ast.parse(p.read_text()))
            if owner == "torch" and name == "load"]
    assert hits == ["encoder/checkpoint.py"], hits


def test_weights_written_by_the_kit_are_safetensors(tmp_path):
    """The writers: the exported encoder folder holds no pickle files (checkpoints: tests above)."""
    from encoder.pretraining import export_encoder
    from encoder.vit import AudioMosaicViT, EncoderConfig

    export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=1, target_frames=64)), tmp_path / "enc")
    files = {p.name for p in (tmp_path / "enc").iterdir()}
    assert "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files), files
