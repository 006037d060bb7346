"""The frozen encoder's token cache on disk (mosaic_alm.featurizer): a second featurizer -- in this process or
another -- runs no encoder forward; the key follows the encoder's weights and the preprocessing; cached tokens equal
fresh ones; a corrupt or planted shard is refused and rebuilt."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoder.hf import resolve_encoder
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.toy import make_toy_data
from mosaic_core.runtime import autocast

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    toy = make_toy_data(tmp_path_factory.mktemp("toy"), per_class={"train": 2, "test": 1})
    return sorted(str(p) for p in (toy / "clips").glob("*.wav"))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return resolve_encoder("random:tiny").eval()


def _forwards(enc) -> list[int]:
    """Counts real forward passes through the encoder (its patch embedding) (a hook, not the featurizer's own
    counter)."""
    calls = [0]
    enc.encoder.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_second_featurizer_hits_the_disk_cache_without_encoding(clips, encoder, tmp_path):
    enc = resolve_encoder("random:tiny")
    enc.load_state_dict(encoder.state_dict())
    calls = _forwards(enc.eval())
    a = AudioFeaturizer(enc, 256, cache_dir=tmp_path)
    assert a.precompute(clips, batch_size=4) == len(clips) and calls[0] == -(-len(clips) // 4)
    first = a.tokens(clips)
    assert calls[0] == -(-len(clips) // 4)  # served from memory
    b = AudioFeaturizer(enc, 256, cache_dir=tmp_path)
    again = b.tokens(clips)
    assert calls[0] == -(-len(clips) // 4) and b.encoded == 0 and b.hits == len(clips)
    assert torch.equal(first, again) and first.dtype == torch.float32 and first.shape == (len(clips), 128, 192)
    shards = list(b.cache_dir.glob("*.safetensors"))
    assert shards and (b.cache_dir / "key.json").is_file()


def test_another_process_reuses_the_cache(clips, encoder, tmp_path):
    weights = tmp_path / "enc"
    encoder.save_pretrained(str(weights))
    a = AudioFeaturizer(resolve_encoder(str(weights)).eval(), 256, cache_dir=tmp_path / "cache")
    want = a.tokens(clips[:3])
    code = ("import sys, torch; from encoder.hf import resolve_encoder; from mosaic_alm.featurizer import "
            "AudioFeaturizer as F; f = F(resolve_encoder(sys.argv[1]).eval(), 256, cache_dir=sys.argv[2]); "
            "t = f.tokens(sys.argv[3:]); torch.save(t, sys.argv[2] + '/out.pt'); print(f.encoded, f.hits)")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(weights), str(tmp_path / "cache"), *clips[:3]],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["0", "3"]
    assert torch.equal(torch.load(tmp_path / "cache" / "out.pt"), want)


def test_key_follows_weights_and_preprocessing(encoder, tmp_path):
    first = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)
    base = first.cache_dir
    assert AudioFeaturizer(encoder, 256, cache_dir=tmp_path).cache_dir == base
    assert AudioFeaturizer(encoder, 512, cache_dir=tmp_path).cache_dir != base  # target frames
    flip = "fp32" if first.bf16 else "bf16"  # auto is bf16 on CPUs with native bf16
    assert AudioFeaturizer(encoder, 256, cache_dir=tmp_path, precision=flip).cache_dir != base  # precision
    other = resolve_encoder("random:tiny")
    other.load_state_dict(encoder.state_dict())
    assert AudioFeaturizer(other, 256, cache_dir=tmp_path).cache_dir == base  # same weights, another object
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert AudioFeaturizer(other, 256, cache_dir=tmp_path).cache_dir != base  # one weight moved
    norm = resolve_encoder("random:tiny")
    norm.load_state_dict(encoder.state_dict())
    norm.config.norm_mean += 0.5  # the fbank normalisation is preprocessing
    assert AudioFeaturizer(norm, 256, cache_dir=tmp_path).cache_dir != base


def test_cached_tokens_equal_fresh_ones(clips, encoder, tmp_path):
    fresh = AudioFeaturizer(encoder, 256, cache=False).tokens(clips[:4])
    AudioFeaturizer(encoder, 256, cache_dir=tmp_path).precompute(clips[:4])
    cached = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)
    assert torch.equal(cached.tokens(clips[:4]), fresh) and cached.encoded == 0
    with torch.no_grad(), autocast(cached.bf16, cached.device):  # what the encoder gives, in the same precision
        direct = encoder.encoder.forward_features(cached.spectrograms(clips[:4]))["tokens"]
    if cached.bf16:  # bf16 kernels may round differently from call to call: a bf16 mantissa's worth
        torch.testing.assert_close(direct.float(), fresh, atol=0.1, rtol=0.05)
    else:
        assert torch.equal(direct, fresh)


@pytest.mark.parametrize("damage", ["truncate", "pickle", "wrong_shape"])
def test_corrupt_or_planted_shard_is_refused_and_rebuilt(clips, encoder, tmp_path, damage, caplog):
    from safetensors.torch import save_file

    a = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)
    want = a.tokens(clips[:2])
    (shard,) = list(a.cache_dir.glob("*.safetensors"))
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "pickle":
        shard.write_bytes(pickle.dumps({"x": 1}))
    else:
        keys = list(a._index)
        save_file({k: torch.zeros(3, 3) for k in keys}, str(shard))
    writing = a.cache_dir / ".0123.tmp.safetensors"  # another process's shard being written: left alone
    writing.write_bytes(b"partial")
    b = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)
    got = b.tokens(clips[:2])
    assert writing.is_file()
    assert b.encoded == 2 and torch.equal(got, want)
    assert "refused" in caplog.text
    c = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)  # the rebuilt shard is good
    assert torch.equal(c.tokens(clips[:2]), want) and c.encoded == 0


def test_waveforms_are_encoded_not_cached(clips, encoder, tmp_path):
    from encoder.features import load_audio

    wave = load_audio(clips[0])
    f = AudioFeaturizer(encoder, 256, cache_dir=tmp_path)
    f.tokens([wave])
    f.tokens([wave])
    assert f.encoded == 2 and not list(tmp_path.rglob("*.safetensors"))
