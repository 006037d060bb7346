"""A small real-audio instruction set (tones and noise) for tests and the smoke run: three classes, closed and
open-ended records in the same layout as the embedded benchmark's ``instructions/{split}.json``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOY_CLASSES = {"beep": "a high beep", "hum": "a low hum", "noise": "white noise"}

def _toy_wave(cls: str, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    n = int(sr * rng.uniform(0.6, 1.2))
    t = np.arange(n) / sr
    if cls == "beep":
        w = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    elif cls == "hum":
        w = np.sin(2 * np.pi * rng.uniform(100, 200) * t) + 0.3 * np.sin(2 * np.pi * 2 * 150 * t)
    else:
        w = rng.standard_normal(n)
    w = w / (np.abs(w).max() + 1e-9) * rng.uniform(0.2, 0.8)
    return w.astype(np.float32)


def make_toy_data(root: str | Path, per_class: dict | None = None, seed: int = 0) -> Path:
    """Write ``{root}/clips/*.wav`` and ``{root}/instructions/{train,valid,test}.json`` (closed + open records)."""
    import soundfile as sf

    root = Path(root)
    per_class = per_class or {"train": 6, "valid": 2, "test": 3}
    rng = np.random.default_rng(seed)
    opts = sorted(TOY_CLASSES)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        recs = []
        for cls in opts:
            for i in range(n):
                cid = f"{split}_{cls}_{i}"
                rel = f"clips/{cid}.wav"
                if not (root / rel).exists():
                    sf.write(str(root / rel), _toy_wave(cls, rng), 16000)
                recs += [
                    {"id": f"{cid}_cls", "audio_id": cid, "audio_path": rel, "task": "toy", "qtype": "sound_event",
                     "instruction": f"Which sound is heard? Answer with one of: {', '.join(opts)}.", "input": "",
                     "output": cls, "open_ended": False, "options": opts},
                    {"id": f"{cid}_open", "audio_id": cid, "audio_path": rel, "task": "toy", "qtype": "caption",
                     "instruction": "Write a short caption for this audio.", "input": "",
                     "output": f"The sound of {TOY_CLASSES[cls]}.", "open_ended": True, "options": []},
                ]
        (root / "instructions").mkdir(exist_ok=True)
        (root / "instructions" / f"{split}.json").write_text(json.dumps(recs, indent=0))
    return root
