"""Equivalence of the kit's import of the paper's released checkpoints with the reference code, as a table.

    .venv/bin/python bench/release_equivalence.py                 # the golden fixtures (no reference code needed)
    PYTHONPATH=/tmp/refdeps:/tmp/ta .venv/bin/python bench/release_equivalence.py --vit-b \\
        --ref ../shared/reference/audiomosaic-upstream            # + ViT-B/16 at 1,024 frames vs the reference

Part 1 reads ``tests/fixtures/audiomosaic`` (made by running the reference, see its make_golden.py): for every
released class, the Hub-layout folder and the training checkpoint, at the trained length and at the other lengths
(learned positions resized as the reference's loaders do): max |kit - reference| of the tokens, the pooled feature
and the logits / projector output; the LTU audio side; the fbank of fixed waveforms at the three presets.
Part 2 (``--vit-b``, needs timm 1.0.x on PYTHONPATH as in make_golden.py) builds ViT-B/16-sized reference models
(pretrain with projector, AS-2M-style classifier with 527 labels, attentive probe) with random weights, saves them as
the Hub release does, imports them and compares on a batch of 2 spectrograms of 1,024 frames.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import test_release_equivalence as T  # noqa: E402  (the comparisons the tests assert)


def fixtures_table() -> list[dict]:
    from encoder.hf import load_release

    rows = []
    for name in T.CLASSES:
        gold, info = T._golden(name)
        frames = T._frames(name)
        for form in ("hub", "train"):
            src = T.FIX / name / ("hub" if form == "hub" else "train/model_state_dict.pt")
            opts = {"keep_projector": True} if form == "hub" else T._options(name)
            d = T._check(name, load_release(src, **opts), T.INPUTS[f"x{frames}"], gold)
            rows.append({"class": name, "form": form, "frames": frames, **d})
            for key in info["other_lengths"]:
                other = int(key)
                if name.startswith("pretrained") and other == 512:
                    continue
                suffix = f"_{other}_tf" if name.startswith("pretrained") else f"_{other}"
                d = T._check(name, load_release(src, target_frames=other, **opts), T.INPUTS[f"x{other}"], gold, suffix)
                rows.append({"class": name, "form": form, "frames": other, **d})
    return rows


def ltu_row() -> dict:
    from encoder.hf import AudioMosaicModel, import_release
    from mosaic_alm.projector import AudioProjector

    gold, _ = T._golden("ltu")
    with tempfile.TemporaryDirectory() as tmp:
        out = import_release(T._ltu_folder(Path(tmp)), Path(tmp) / "kit")
        enc, proj = AudioMosaicModel.from_pretrained(str(out)).eval(), AudioProjector.from_ltu_folder(out)
        with torch.no_grad():
            o = enc.encoder.forward_features(gold["input"])
            seq = torch.cat([o["cls"].unsqueeze(1), o["tokens"]], dim=1)
            return {"class": "ltu (stage-4 audio side)", "form": "extra_weights.bin", "frames": 1024,
                    "tokens": float((seq[:, :65] - gold["tokens_first"]).abs().max()),
                    "pooled": float((proj.features(o["tokens"]) - gold["audio_proj_input"]).abs().max()),
                    "audio_embeds": float((proj(o["tokens"]) - gold["audio_embeds"]).abs().max())}


def fbank_row() -> dict:
    from safetensors import safe_open

    from encoder.features import FbankConfig, waveform_to_input
    from encoder.release import PREPROCESSING

    with safe_open(str(T.FIX / "fbank" / "golden.safetensors"), "pt") as f:
        gold = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(f.metadata()["info"])
    waves = {k[5:]: v.float().mean(0) for k, v in gold.items() if k.startswith("wave_")}
    waves.update({k[6:]: (v.float() / 32768).mean(0) for k, v in gold.items() if k.startswith("pcm16_")})
    names = {"audioset": "audioset", "esc": "esc50", "spc": "speechcommands"}
    worst = {}
    for key, rows in info["rows"].items():
        preset, wave = key.split("_", 1)
        if f"norm_{key}" in gold:
            p = PREPROCESSING[names[preset]]
            got = waveform_to_input(waves[wave], FbankConfig(target_frames=p["target_length"], mean=p["norm_mean"],
                                                             std=p["norm_std"]))
            worst[preset] = max(worst.get(preset, 0.0), float((got[:rows] - gold[f"norm_{key}"]).abs().max()))
    return worst


def vit_b(ref: Path) -> list[dict]:
    """ViT-B/16 reference models with seeded random weights, saved as the Hub release, imported, compared."""
    sys.path.insert(0, str(T.FIX))
    import make_golden as G  # the fixture generator's reference import (placeholders for torchvision etc.)
    from safetensors.torch import save_file
    from seeded import seeded_state_dict

    from encoder.hf import load_release

    am = G.import_reference(ref, None)
    base = {"spec_size": [1024, 128], "patch_size": [16, 16], "embed_dim": 768, "depth": 12, "num_heads": 12,
            "pos_trainable": True, "proj_bias": True, "pooling": "avg"}
    models = {"AudioMosaicPretrain": {**base, "use_fc_norm": True, "project_embedding_dim": 128},
              "AudioMosaicClassifier": {**base, "num_classes": 527},
              "AudioMosaicAttentiveProbe": {**base, "num_classes": 527, "num_attn_heads": 1}}
    x = torch.randn(2, 1, 1024, 128, generator=torch.Generator().manual_seed(7))
    rows = []
    for i, (cls, kw) in enumerate(models.items()):
        ref_model, _ = G.quiet(getattr(am, cls), **kw)
        sd = seeded_state_dict({k: tuple(v.shape) for k, v in ref_model.state_dict().items()}, 500 + i)
        ref_model.load_state_dict(sd)
        ref_model.eval()
        t0 = time.time()
        with torch.no_grad():
            want = ref_model(x)
        t_ref = time.time() - t0
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps({**kw, "model_class": cls, "audio_preprocessing": {
                "target_length": 1024, "num_mel_bins": 128, "norm_mean": -4.2677393, "norm_std": 4.5689974,
                "sample_rate": 16000, "frame_shift": 10.0}}))
            save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"))
            model = load_release(tmp, keep_projector=True)
        t0 = time.time()
        with torch.no_grad():
            model(x)
        t_kit = time.time() - t0
        r = T._run(model, x)
        row = {"class": cls, "params_M": round(sum(v.numel() for v in sd.values()) / 1e6, 1),
               "seconds_ref": round(t_ref, 2), "seconds_kit": round(t_kit, 2)}
        if cls == "AudioMosaicPretrain":
            with torch.no_grad():
                want["f"] = ref_model.fc_norm(want["f"])
            row.update(tokens=float((r["seq"] - want["toks"]).abs().max()),
                       pooled=float((r["pooled"] - want["f"]).abs().max()),
                       z=float((r["z"] - want["z"]).abs().max()))
        else:
            row["logits"] = float((r["logits"] - want).abs().max())
            if cls == "AudioMosaicClassifier":
                with torch.no_grad():
                    row["tokens"] = float((r["seq"] - ref_model.forward_features(x)).abs().max())
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit-b", action="store_true", help="also compare ViT-B/16-sized models against the reference")
    ap.add_argument("--ref", type=Path, default=REPO.parent / "shared" / "reference" / "audiomosaic-upstream")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = fixtures_table()
    cols = ["tokens", "pooled", "f", "z", "logits"]
    print("| class | form | frames | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['class']} | {r['form']} | {r['frames']} | " +
              " | ".join(f"{r[c]:.1e}" if c in r else "" for c in cols) + " |")
    ltu = ltu_row()
    print(f"\nLTU audio side: tokens {ltu['tokens']:.1e}, pooled tokens {ltu['pooled']:.1e}, audio embeddings "
          f"{ltu['audio_embeds']:.1e}")
    fb = fbank_row()
    print("fbank (normalised model input) max |kit - reference|: " + ", ".join(f"{k} {v:.1e}" for k, v in fb.items()))
    out = {"fixtures": rows, "ltu": ltu, "fbank": fb}
    if args.vit_b:
        out["vit_b"] = vit_b(args.ref)
        print("\nViT-B/16, 1,024 frames, batch 2, random weights:")
        for r in out["vit_b"]:
            print("  " + ", ".join(f"{k} {v:.1e}" if k in cols else f"{k} {v}" for k, v in r.items()))
    worst = max(v for r in rows for k, v in r.items() if k in cols)
    print(f"\nworst over the fixtures: {worst:.1e}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
