"""Mistakes a user can make end in ONE line on stderr naming the thing and the reason, exit code 1, no traceback,
with no library warning or weight-loading progress bar around it; ``--debug`` shows the traceback. Each case runs
the ``mosaic-alm`` console script in a subprocess, as a user would."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "mosaic-alm"


def run_cli(*args, debug: bool = False) -> tuple[int, str]:
    cmd = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "recipes.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*cmd, *(["--debug"] if debug else []), *map(str, args)], capture_output=True, text=True,
                         check=False,
                         cwd=REPO, env=env, timeout=300)
    return out.returncode, out.stderr


def one_line_error(command: str, *args) -> str:
    rc, err = run_cli(command, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, f"rc={rc}\n{err}"
    assert lines[0].startswith(f"mosaic-alm {command}: error: "), lines[0]
    return lines[0]


def _pickle_in_place(path: Path) -> None:
    """Replace a safetensors file by a torch.save pickle of the same tensors (what a user may have lying around)."""
    from safetensors.torch import load_file

    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    path.unlink()
    torch.save(tensors, path)


def _encoder_folder(folder: Path, **changes) -> Path:
    from encoder.pretraining import export_encoder
    from encoder.vit import AudioMosaicViT, EncoderConfig

    torch.manual_seed(0)
    export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=1, target_frames=256, **changes)), folder)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, embedded_instructions):
    """A small real ALM artifact (SmolLM2 + a 1-block random encoder), its encoder folder and the data root."""
    from mosaic_alm.artifact import save_artifact
    from mosaic_alm.audio_lm import ALMConfig, AudioLanguageModel

    embedded_root = embedded_instructions
    tmp = tmp_path_factory.mktemp("errors")
    enc = _encoder_folder(tmp / "encoder")
    cfg = ALMConfig()
    cfg.audio.encoder = str(enc)
    model = AudioLanguageModel.build(cfg)
    run_cfg = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("llm", "lora", "audio", "projector", "trainable",
                                                                "prompt")}
    art = save_artifact(model, tmp / "artifact", run_cfg, meta={"stage": 1})
    clip = next((embedded_root / "keywords" / "clips").glob("*.wav"))
    return {"tmp": tmp, "artifact": art, "encoder": enc, "root": embedded_root, "clip": clip}


def _copy(work, name: str) -> Path:
    dst = work["tmp"] / name
    if dst.exists():
        shutil.rmtree(dst)
    return Path(shutil.copytree(work["artifact"], dst))


# ------------------------------------------------------------------------------------- a missing audio file
@pytest.mark.parametrize("command", ["ask", "caption"])
def test_missing_audio_file(work, command):
    missing = work["tmp"] / "no-such-clip.wav"
    extra = ["--question", "Which word is spoken?"] if command == "ask" else []
    line = one_line_error(command, "--artifact", work["artifact"], "--audio", work["clip"], missing, *extra)
    assert line.endswith(f"{missing}: file does not exist")


def test_debug_shows_the_traceback(work):
    rc, err = run_cli("ask", "--artifact", work["artifact"], "--audio", work["tmp"] / "nope.wav", "-q", "hi",
                      debug=True)
    assert rc == 1 and "Traceback" in err and "AudioError" in err and "nope.wav: file does not exist" in err


# -------------------------------------------------------------------- a pickle where safetensors belongs
def test_pickle_weights_in_the_artifacts_encoder(work):
    art = _copy(work, "art-pickled-encoder")
    _pickle_in_place(art / "encoder" / "model.safetensors")
    line = one_line_error("ask", "--artifact", art, "--audio", work["clip"], "-q", "Which word is spoken?")
    assert f"{art / 'encoder' / 'model.safetensors'} is a pickle (torch.save) file" in line
    assert "safetensors only" in line and "weights_only" not in line


def test_pickle_projector_in_the_artifact(work):
    art = _copy(work, "art-pickled-projector")
    _pickle_in_place(art / "projector.safetensors")
    line = one_line_error("caption", "--artifact", art, "--audio", work["clip"])
    assert f"ALM artifact {art}: {art / 'projector.safetensors'} is a pickle (torch.save) file" in line


def test_encoder_folder_with_pickle_weights_only(work):
    enc = work["tmp"] / "encoder-bin"
    shutil.copytree(work["encoder"], enc)
    _pickle_in_place(enc / "model.safetensors")
    (enc / "model.safetensors").rename(enc / "pytorch_model.bin")
    line = one_line_error("eval-encoder", "--config", REPO / "configs/eval/encoder_embedded.yaml",
                          f"data_root={work['root']}", f"run_dir={work['tmp'] / 'eval-bin'}", f"encoders={{a: {enc}}}")
    assert f"encoder '{enc}': no model.safetensors in {enc} (it holds pytorch_model.bin: pickle weights" in line


# ------------------------------------------------------------------------------- an LLM that is no causal LM
def test_llm_path_that_is_not_a_causal_lm(work):
    line = one_line_error("train-alm", "--config", REPO / "configs/alm/stage1.yaml", f"data.root={work['root']}",
                          f"output_dir={work['tmp'] / 'alm-llm'}", "audio.encoder=random:tiny",
                          f"llm.name_or_path={work['encoder']}")
    assert f"LLM '{work['encoder']}': config.json says model_type 'audiomosaic', which is not a causal language " \
           "model" in line


# ---------------------------------------------------------------- an encoder whose preprocessing does not match
def test_artifact_encoder_with_other_preprocessing(work):
    art = _copy(work, "art-other-norm")
    conf = json.loads((art / "encoder" / "config.json").read_text())
    conf["norm_mean"] = -2.0
    (art / "encoder" / "config.json").write_text(json.dumps(conf))
    line = one_line_error("ask", "--artifact", art, "--audio", work["clip"], "-q", "Which word is spoken?")
    assert f"ALM artifact {art}: its encoder's preprocessing does not match what the ALM was trained with" in line
    assert "norm_mean -2.0 (encoder/config.json) vs -4.2677393 (trained)" in line


def test_next_stage_with_an_encoder_of_other_preprocessing(work):
    other = _encoder_folder(work["tmp"] / "encoder-64-bins", num_mel_bins=64)
    line = one_line_error("train-alm", "--config", REPO / "configs/alm/stage2.yaml", f"data.root={work['root']}",
                          f"output_dir={work['tmp'] / 'alm-next'}", f"train.init_from={work['artifact']}",
                          f"audio.encoder={other}", "lora.enabled=false", "trainable.lora=false")
    assert f"audio.encoder {other}: its preprocessing does not match the encoder of the artifact" in line
    assert "num_mel_bins 64 vs 128" in line
