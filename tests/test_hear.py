"""The HEAR 2021 API of ``encoder.hear``: every check of the official ``hear-validator`` (hearvalidator/validate.py,
which needs TensorFlow and Python < 3.9) ported here, plus batch == one-at-a-time and frame-centred timestamps.

Runs on a random-init tiny encoder saved to a temporary folder (short ``target_frames``, so 4 s of audio spans
several chunks), on an imported release of the paper's pretrain class (the golden fixture's small model) and, when
``MOSAIC_ALM_HEAR_ENCODER`` names one, on a pipeline-trained encoder folder."""
from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

from encoder.features import AudioError, FbankConfig, num_frames

ACCEPTABLE_SAMPLE_RATE = [16000, 22050, 44100, 48000]  # hear-validator's list
TIMESTAMP_CLIPS = [(2, 1.07), (2, 1.98), (2, 4.0)]  # (num_audio, seconds) of check_timestamp_embeddings
SCENE_CLIPS = (4, 2.74)  # check_scene_embeddings


def _encoders():
    yield "random-tiny"
    yield "release-pretrained"  # the reference's pretrain class (learned positions, CLS-inclusive pooling), imported
    if os.environ.get("MOSAIC_ALM_HEAR_ENCODER"):
        yield os.environ["MOSAIC_ALM_HEAR_ENCODER"]


@pytest.fixture(scope="module")
def hear():
    """The module is found by name, as hear-validator / hear-eval-kit import it."""
    module = importlib.import_module("encoder.hear")
    for name in ("load_model", "get_timestamp_embeddings", "get_scene_embeddings"):
        assert callable(getattr(module, name, None)), f"HEAR API must include a function {name!r}"
    return module


@pytest.fixture(scope="module", params=list(_encoders()))
def model(request, hear, tmp_path_factory):
    torch.set_num_threads(1)
    if request.param == "random-tiny":
        from encoder.pretraining import export_encoder
        from encoder.vit import AudioMosaicViT, EncoderConfig

        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("hear") / "encoder"
        export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=2, target_frames=64)), folder)
        path = str(folder)
    elif request.param == "release-pretrained":
        from pathlib import Path

        from encoder.hf import import_release

        fixture = Path(__file__).resolve().parent / "fixtures" / "audiomosaic" / "pretrained" / "hub"
        path = str(import_release(fixture, tmp_path_factory.mktemp("hear-release") / "encoder"))
    else:
        path = request.param
    m = hear.load_model(path)
    assert isinstance(m, torch.nn.Module)  # hear-validator: a PyTorch (or TensorFlow) module
    return m.to("cpu")  # hear-validator moves it to the device it runs on


def _white_noise(num_audio: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((num_audio, int(seconds * sample_rate)), generator=g) * 2 - 1  # as hear-validator makes it


def test_sample_rate_and_embedding_sizes(model):
    assert model.sample_rate in ACCEPTABLE_SAMPLE_RATE and model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)


@pytest.mark.parametrize("num_audio,seconds", TIMESTAMP_CLIPS)
def test_timestamp_embeddings(hear, model, num_audio, seconds):
    audio = _white_noise(num_audio, seconds, model.sample_rate)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32
    emb, ts = embeddings.detach().cpu().numpy(), timestamps.detach().cpu().numpy()
    assert emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == num_audio and emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    assert np.isfinite(emb).all()
    length_ms = 1000 * seconds
    assert ts.shape[1] > 1
    diff = np.diff(ts)
    avg = diff.mean()
    assert np.max(np.abs(diff - avg)) <= 1, "timestamps must be evenly spaced (deviation <= 1 ms)"
    # hear-validator warns past 50 ms; the default hop is 40 ms (a patch column is 160 ms)
    assert diff.max() <= 50.0 and avg == pytest.approx(model.hop_ms)
    assert ts.min() >= 0 and ts.min() <= avg, f"timestamps begin at {ts.min()} ms"  # validator: warns if > avg
    assert ts.max() <= length_ms, "timestamps past the end of the audio"
    assert ts.max() >= length_ms - 2 * avg, "no embeddings for the end of the audio"  # validator: error
    assert ts.max() >= length_ms - avg and ts.max() >= length_ms - 50  # validator: warning
    assert (ts == ts[:1]).all()  # same-length clips share their stamps


def test_scene_embeddings(hear, model):
    num_audio, seconds = SCENE_CLIPS
    embeddings = hear.get_scene_embeddings(_white_noise(num_audio, seconds, model.sample_rate), model)
    assert embeddings.dtype == torch.float32
    emb = embeddings.detach().cpu().numpy()
    assert emb.dtype == np.float32 and emb.ndim == 2
    assert emb.shape == (num_audio, model.scene_embedding_size) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])  # different clips, different embeddings


@pytest.mark.parametrize("seconds", [1.07, 4.0])
def test_batch_equals_one_at_a_time(hear, model, seconds):
    audio = _white_noise(3, seconds, model.sample_rate, seed=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    for i in range(len(audio)):
        e1, t1 = hear.get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(e1[0], emb[i], rtol=1e-4, atol=1e-5)
        assert torch.equal(t1[0], ts[i])
        torch.testing.assert_close(hear.get_scene_embeddings(audio[i:i + 1], model)[0], scene[i], rtol=1e-4,
                                   atol=1e-5)


def test_timestamps_are_the_centres_of_their_frames(hear, model):
    """With one stamp per patch column (hop 160 ms) each stamp is the centre of the 16 fbank frames of its column:
    column t spans frame 16t's start to frame 16t+15's end, i.e. samples [16t * shift, (16t+15) * shift + window)."""
    one_per_column = hear.HearEncoder(model.encoder, hop_ms=160)
    seconds = 4.0
    _, ts = hear.get_timestamp_embeddings(_white_noise(1, seconds, 16000), one_per_column)
    fb = FbankConfig()
    n_frames = num_frames(int(seconds * 16000), fb)
    centres = [(16 * t * fb.window_shift + (16 * t + 15) * fb.window_shift + fb.window_size) / 2 / 16 for t in
               range(-(-n_frames // 16))]
    assert ts[0].tolist() == [c for c in centres if c <= 1000 * seconds]
    _, fine = hear.get_timestamp_embeddings(_white_noise(1, seconds, 16000), model)  # 40 ms: the same grid, x4
    assert set(ts[0].tolist()) <= set(fine[0].tolist())


def test_long_audio_is_chunked_and_each_chunk_matters(hear, model):
    """Audio longer than the encoder's frames runs as consecutive chunks: changing the last second of a 4 s clip
    changes the embeddings stamped there and leaves the first chunk's alone."""
    a = _white_noise(1, 4.0, model.sample_rate, seed=2)
    b = a.clone()
    b[:, -16000:] = _white_noise(1, 1.0, model.sample_rate, seed=3)
    (ea, ts), (eb, _) = hear.get_timestamp_embeddings(a, model), hear.get_timestamp_embeddings(b, model)
    late = ts[0] > 3200
    assert not torch.allclose(ea[0, late], eb[0, late])
    early = ts[0] < 3000 - model.chunk_frames * 10 - 200  # stamps whose chunks end before the changed second
    if model.chunk_frames * 10 < 2000:  # the tiny test encoder: 640 ms chunks
        assert early.sum() > 0
        torch.testing.assert_close(ea[0, early], eb[0, early])


def test_bad_audio_and_bad_hop_are_one_line_errors(hear, model):
    with pytest.raises(AudioError, match=r"\[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(AudioError, match="NaN"):
        hear.get_timestamp_embeddings(torch.full((1, 16000), float("nan")), model)
    with pytest.raises(ValueError, match="hop_ms=30: choose one of"):
        hear.HearEncoder(model.encoder, hop_ms=30)


def test_load_model_default_and_file_path(hear, tmp_path):
    """No path: an untrained tiny baseline (seeded, so twice the same); a file inside a folder: that folder."""
    a, b = hear.load_model(), hear.load_model("")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    if os.environ.get("MOSAIC_ALM_HEAR_ENCODER"):
        folder = os.environ["MOSAIC_ALM_HEAR_ENCODER"]
        assert hear.load_model(os.path.join(folder, "model.safetensors")).scene_embedding_size > 0
