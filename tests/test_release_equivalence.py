"""The kit's import of every released AudioMosaic class matches the reference code's outputs.

Golden fixtures (``tests/fixtures/audiomosaic/``, made by ``make_golden.py`` running the paper's own code at commit
67a86a8) hold small random-weight models of every supported class, saved as the Hub release (``hub/``:
``config.json`` + ``model.safetensors``) and as the reference's training checkpoint (``train/model_state_dict.pt``,
``module.`` / ``_orig_mod.`` prefixes), fixed inputs and the reference's outputs. Both forms are imported here and
must match: tokens, pooled features, projector output and logits within 1e-5 (fp32), at the trained input length and
at other lengths (learned positions resized as the reference's loaders do); the LTU audio side (encoder + audio
projection from its extra-weights file) and the reference's fbank of fixed waveforms (within 1e-4).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from encoder.hf import AudioMosaicForAudioClassification, AudioMosaicModel, load_release

FIX = Path(__file__).resolve().parent / "fixtures" / "audiomosaic"
ATOL = 1e-5
INPUTS = load_file(str(FIX / "inputs.safetensors"))
CLASSES = ["pretrained", "pretrained_cls", "classifier_as", "classifier_esc", "classifier_spc1", "classifier_spc2",
           "classifier_cls", "attentive_probe", "attentive_probe_h4", "layer_probe", "weighted_sum_probe"]


def _golden(name: str) -> tuple[dict, dict]:
    with safe_open(str(FIX / name / "golden.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["info"])


def _hub_config(name: str) -> dict:
    return json.loads((FIX / name / "hub" / "config.json").read_text())


def _options(name: str) -> dict:
    """What a user passes for a training checkpoint (it carries no config): heads, pooling, class, probe layer."""
    cfg = _hub_config(name)
    opts = {"num_heads": cfg["num_heads"], "pooling": cfg.get("pooling", "cls"), "keep_projector": True}
    if cfg["model_class"] == "AudioMosaicLayerProbe":
        opts.update(model_class="AudioMosaicLayerProbe", probe_layer=cfg.get("probe_layer", 11))
    return opts


def _frames(name: str) -> int:
    return _hub_config(name)["spec_size"][0]


def _run(model, x: torch.Tensor) -> dict:
    enc = model.encoder
    with torch.no_grad():
        out = enc.forward_features(x, output_hidden_states=True)
        res = {"seq": torch.cat([out["cls"].unsqueeze(1), out["tokens"]], dim=1), "pooled": out["pooled"],
               "hidden": out["hidden_states"], "raw_pool": enc.pool(out["hidden_states"][-1] if not
                                                                enc.cfg.pool_normed else
                                                                torch.cat([out["cls"].unsqueeze(1), out["tokens"]], 1))}
        if isinstance(model, AudioMosaicForAudioClassification):
            res["logits"] = model(x).logits
        proj = getattr(model, "release", {}).get("state", {})
        if any(k.startswith("projector.") for k in proj):
            from encoder.vit import Projector

            p = model.release["projector"]
            head = Projector(enc.cfg.embed_dim, p["hidden_dim"], p["out_dim"], True, p["out_affine"])
            head.load_state_dict({k.split(".", 1)[1]: v for k, v in proj.items() if k.startswith("projector.")})
            res["z"] = head.eval()(res["pooled"])
    return res


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> float:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    diff = float((got - want).abs().max())
    assert diff <= ATOL, f"{what}: max abs difference {diff:.2e} > {ATOL}"
    return diff


def _check(name: str, model, x: torch.Tensor, gold: dict, suffix: str = "") -> dict:
    """Compare every reference output of this class (``suffix``: ``_<frames>`` for another input length)."""
    r = _run(model, x)
    diffs = {}
    cls = _hub_config(name)["model_class"]
    if cls == "AudioMosaicPretrain":
        diffs["tokens"] = _close(r["seq"], gold["toks" + suffix], f"{name} toks{suffix}")
        diffs["pooled"] = _close(r["pooled"], gold["f_norm" + suffix], f"{name} f_norm{suffix}")
        diffs["f"] = _close(r["raw_pool"], gold["f" + suffix], f"{name} f{suffix}")
        diffs["z"] = _close(r["z"], gold["z" + suffix], f"{name} z{suffix}")
    elif cls == "AudioMosaicClassifier":
        diffs["tokens"] = _close(r["seq"], gold["tokens" + suffix], f"{name} tokens{suffix}")
        if "f_norm" + suffix in gold:
            diffs["pooled"] = _close(r["pooled"], gold["f_norm" + suffix], f"{name} f_norm{suffix}")
    if "logits" in r:
        diffs["logits"] = _close(r["logits"], gold["logits" + suffix], f"{name} logits{suffix}")
    if not suffix:
        for i in range(len(r["hidden"]) - 1):
            if f"layer_results_{i}" in gold:
                diffs[f"block{i}"] = _close(r["hidden"][i + 1], gold[f"layer_results_{i}"], f"{name} block {i}")
    return diffs


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("form", ["hub", "train"])
def test_release_matches_reference(name, form):
    torch.set_num_threads(1)
    gold, info = _golden(name)
    frames = _frames(name)
    src = FIX / name / ("hub" if form == "hub" else "train/model_state_dict.pt")
    opts = {"keep_projector": True} if form == "hub" else _options(name)
    model = load_release(src, **opts)
    assert model.config.target_frames == frames
    want_cls = AudioMosaicForAudioClassification if "logits" in gold else AudioMosaicModel
    assert isinstance(model, want_cls)
    _check(name, model, INPUTS[f"x{frames}"], gold)
    # another input length, as the reference's loaders build it: imported at that length, and resized at run time
    for key in info["other_lengths"]:
        other = int(key)
        if name.startswith("pretrained") and other == 512:
            # the pretrain loader cannot resize (it raises); its encoder at 512 through the classifier loader:
            m = load_release(src, target_frames=other, **opts)
            with torch.no_grad():
                h = m.encoder.forward_features(INPUTS[f"x{other}"], output_hidden_states=True)["hidden_states"][-1]
            _close(h, gold[f"tokens_via_classifier_loader_{other}"], f"{name} tokens at {other} (classifier loader)")
            continue
        resized = load_release(src, target_frames=other, **opts)
        # pretrain at 128: the reference resize called on the true (time, frequency) grid (``_tf``), which is the
        # loaders' rule at this length (their (freq, time) grid has 8 rows either way)
        _check(name, resized, INPUTS[f"x{other}"], gold, f"_{other}_tf" if name.startswith("pretrained") else
               f"_{other}")
        if "logits" in gold:  # the trained-length model fed another length resizes its table the same way
            with torch.no_grad():
                got = model(INPUTS[f"x{other}"]).logits
            _close(got, gold[f"logits_{other}"], f"{name} logits at {other} (resized at run time)")


def test_pretrained_projector_dropped_by_default(tmp_path):
    from encoder.hf import import_release

    enc = load_release(FIX / "pretrained" / "hub")
    assert not any(k.startswith("projector.") for k in enc.release["state"])
    out = import_release(FIX / "pretrained" / "hub", tmp_path / "kept", keep_projector=True)
    names = set(load_file(str(out / "model.safetensors")))
    assert {"projector.fc1.weight", "projector.bn2.weight", "projector.bn2.running_var"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["projector"] == {"hidden_dim": 512, "out_dim": 32, "batch_norm": True, "out_affine": True}
    assert cfg["source"]["class"] == "AudioMosaicPretrain" and cfg["source"]["repo"].startswith("hanxunh/")
    # the written folder is a kit encoder folder: same outputs as the in-memory import
    gold, _ = _golden("pretrained")
    again = AudioMosaicModel.from_pretrained(str(out))
    with torch.no_grad():
        _close(again(INPUTS["x256"]).pooler_output, gold["f_norm"], "pretrained f_norm from the written folder")


def _ltu_folder(tmp_path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("audiomosaic_seeded", FIX / "seeded.py")
    seeded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeded)
    meta = json.loads((FIX / "ltu" / "shapes.json").read_text())
    state = seeded.seeded_state_dict({k: tuple(v) for k, v in meta["shapes"].items()}, meta["seed"])
    folder = tmp_path / "AudioMosaic-vit-b16-ltu-stage4"
    folder.mkdir()
    (folder / "config.json").write_text((FIX / "ltu" / "hub" / "config.json").read_text())
    torch.save(state, folder / "extra_weights.bin")  # as the release stores it: a torch pickle
    return folder


def test_ltu_audio_side_matches_reference(tmp_path):
    """Encoder tokens after its norm, the reference's pooling (its reshape of time-major tokens) and the audio
    projection, imported from the extra-weights file through the restricted unpickler."""
    from encoder.hf import import_release
    from mosaic_alm.projector import AudioProjector

    torch.set_num_threads(2)
    gold, _ = _golden("ltu")
    out = import_release(_ltu_folder(tmp_path), tmp_path / "kit")
    enc = AudioMosaicModel.from_pretrained(str(out)).eval()
    proj = AudioProjector.from_ltu_folder(out)
    with torch.no_grad():
        o = enc.encoder.forward_features(gold["input"])
        seq = torch.cat([o["cls"].unsqueeze(1), o["tokens"]], dim=1)
        _close(seq[:, :65], gold["tokens_first"], "LTU encoder tokens")
        _close(proj.features(o["tokens"]), gold["audio_proj_input"], "LTU pooled tokens")
        _close(proj(o["tokens"]), gold["audio_embeds"], "LTU audio embeddings")
    assert json.loads((out / "config.json").read_text())["source"]["class"] == "AudioMosaicLlamaForCausalLM"


def test_fbank_matches_reference_preprocessing():
    """The kit's features of fixed waveforms at the three released presets equal the reference dataset's
    (__getitem__: mean removed, Kaldi fbank, pad/cut, (x - mean) / (2 * std))."""
    from encoder.features import FbankConfig, fbank, waveform_to_input
    from encoder.release import PREPROCESSING

    with safe_open(str(FIX / "fbank" / "golden.safetensors"), "pt") as f:
        gold = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(f.metadata()["info"])
    waves = {k[5:]: v.float().mean(0) for k, v in gold.items() if k.startswith("wave_")}
    waves.update({k[6:]: (v.float() / 32768).mean(0) for k, v in gold.items() if k.startswith("pcm16_")})
    presets = {"audioset": "audioset", "esc": "esc50", "spc": "speechcommands"}
    worst = worst_raw = 0.0
    checked = 0
    for key, rows in info["rows"].items():
        preset, wave = key.split("_", 1)
        if f"norm_{key}" not in gold:
            continue
        p = PREPROCESSING[presets[preset]]
        cfg = FbankConfig(target_frames=p["target_length"], mean=p["norm_mean"], std=p["norm_std"])
        got = waveform_to_input(waves[wave], cfg)
        want = gold[f"norm_{key}"]
        assert got.shape == (p["target_length"], 128)
        worst = max(worst, float((got[:rows] - want).abs().max()))
        assert torch.all(got[rows:] == gold[f"pad_value_{preset}"])
        checked += 1
        if f"raw_{wave}" in gold and preset == "audioset":
            raw = fbank(waves[wave] - waves[wave].mean(), cfg)
            worst_raw = max(worst_raw, float((raw[:rows] - gold[f"raw_{wave}"]).abs().max()))
    # the model input (normalised) within 1e-4; the log-mel energies before normalisation (values up to 16, so
    # 2 x std = 9.1 times larger) within 3e-4
    assert checked >= 18 and worst <= 1e-4, f"normalised fbank max abs difference {worst:.2e}"
    assert worst_raw <= 3e-4, f"log-mel fbank max abs difference {worst_raw:.2e}"
