"""Reliability, item 1: every kind of bad or unusual audio file, generated at run time.

Each input is either decoded correctly (the decoded waveform and the features are checked) or raises the kit's one
audio error type, :class:`encoder.features.AudioError`, whose message names the file and the reason. Nothing that
comes out is ever NaN or inf. The dataset layer (what pretraining and evaluation read through) is checked over the
same files: a bad file is replaced and reported, never passed on.
"""
from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from encoder.features import AudioError, FbankConfig, file_to_input, load_audio

torch.set_num_threads(1)
CFG = FbankConfig(target_frames=128, max_seconds=30.0)


def _sine(sr: int, seconds: float = 1.0, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: torch.Tensor, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


def _wav_header(n_bytes: int, sr: int = 16000, channels: int = 1, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", (36 + n_bytes) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, bits)
            + b"data" + struct.pack("<I", n_bytes & 0xFFFFFFFF))


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:max(1, int(len(data) * fraction))])
    return dst


def _expect_error(path: Path, *needles: str) -> AudioError:
    with pytest.raises(AudioError) as info:
        file_to_input(path, CFG)
    err = info.value
    msg = str(err)
    assert str(path) in msg and err.source == str(path), msg
    assert err.reason and len(err.reason) > 5, msg
    for needle in needles:
        assert needle.lower() in msg.lower(), (needle, msg)
    return err


def _expect_ok(path: Path) -> torch.Tensor:
    x = file_to_input(path, CFG)
    assert x.shape == (CFG.target_frames, CFG.num_mel_bins)
    assert torch.isfinite(x).all()
    return x


# ------------------------------------------------------------------------------------------------- refused inputs
def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    _expect_error(p, "empty")


def test_header_only_wav(tmp_path):
    p = tmp_path / "header_only.wav"
    p.write_bytes(_wav_header(0))
    _expect_error(p, "no audio samples")


def test_missing_file_and_directory(tmp_path):
    _expect_error(tmp_path / "nope.wav", "does not exist")
    d = tmp_path / "dir.wav"
    d.mkdir()
    _expect_error(d, "directory")


def test_text_file_named_wav(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n" * 50)
    _expect_error(p, "cannot decode")


@pytest.mark.parametrize("n", [1, 7, 44, 1000, 65536])
def test_random_bytes(tmp_path, n):
    p = tmp_path / f"random_{n}.wav"
    p.write_bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes())
    _expect_error(p)


def test_random_bytes_after_a_valid_riff_header(tmp_path):
    p = tmp_path / "riff_noise.wav"
    p.write_bytes(b"RIFF" + os.urandom(4) + b"WAVE" + os.urandom(3000))
    _expect_error(p)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_wav_with_non_finite_samples(tmp_path, value):
    x = _sine(16000)
    x[1234] = value
    p = tmp_path / f"nonfinite_{value}.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    _expect_error(p, "NaN/inf")


def test_file_declaring_hours_is_refused_without_allocating(tmp_path):
    """A sparse WAV whose header (and size) claim 3 hours: refused from the header, nothing big allocated."""
    n_bytes = 16000 * 2 * 3600 * 3
    p = tmp_path / "hours.wav"
    with open(p, "wb") as f:
        f.write(_wav_header(n_bytes))
        f.truncate(44 + n_bytes)  # sparse: no disk used
    tracemalloc.start()
    try:
        _expect_error(p, "10800.0 s", "30 s maximum")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # the 3 h would be 691 MB as float32
    # the maximum is configurable: a 40 s file passes at 60 s and fails at 30 s
    p40 = tmp_path / "forty.wav"
    sf.write(p40, np.zeros(16000 * 40, np.int16), 16000)
    assert load_audio(p40, max_seconds=60).shape == (16000 * 40,)
    with pytest.raises(AudioError, match="above the 30 s maximum"):
        load_audio(p40, max_seconds=30)


def test_header_claiming_hours_over_a_small_body_reads_only_what_is_there(tmp_path):
    p = tmp_path / "liar.wav"
    body = (_sine(16000, 0.25) * 32767).astype("<i2").tobytes()
    p.write_bytes(_wav_header(16000 * 2 * 3600 * 3) + body)
    wave = load_audio(p)
    assert wave.shape == (4000,)
    assert abs(_peak_hz(wave) - 440) < 8


# ------------------------------------------------------------------------------------------- partial / truncated
def test_wav_declaring_more_data_than_it_holds(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, _sine(16000), 16000, subtype="PCM_16")
    p = _truncate(full, tmp_path / "short.wav", 0.5)
    # the header still declares 1 s; what is there decodes, exactly the samples present
    wave = load_audio(p)
    assert 7900 <= wave.shape[0] < 8000
    assert torch.allclose(wave, torch.from_numpy(_sine(16000)[:wave.shape[0]]), atol=1e-4)
    _expect_ok(p)


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_compressed_files(tmp_path, fmt, ext, fraction):
    full = tmp_path / f"full.{ext}"
    sf.write(full, _sine(16000, 2.0), 16000, format=fmt)
    p = _truncate(full, tmp_path / f"cut_{int(fraction * 100)}.{ext}", fraction)
    try:
        wave = load_audio(p)
    except AudioError as err:  # refusing is fine, if it says so
        assert str(p) in str(err) and err.reason
        return
    # decoding what is there is fine too, if what comes out is the start of the real signal
    assert 0 < wave.shape[0] <= 32000 + 2048 and torch.isfinite(wave).all()
    if wave.shape[0] > 4000:
        assert abs(_peak_hz(wave[:4000]) - 440) < 10
    _expect_ok(p)


# ---------------------------------------------------------------------------------------------- odd but valid
def test_all_zero_silence(tmp_path):
    p = tmp_path / "silence.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)
    x = _expect_ok(p)
    n = 98  # frames of 1 s; the rest is padding
    assert torch.allclose(x[:n], x[0, 0].expand_as(x[:n]))  # the log-eps floor everywhere, finite


def test_dc_only_equals_silence(tmp_path):
    p, q = tmp_path / "dc.wav", tmp_path / "zero.wav"
    sf.write(p, np.full(16000, 0.7, np.float32), 16000, subtype="FLOAT")
    sf.write(q, np.zeros(16000, np.float32), 16000, subtype="FLOAT")
    assert torch.allclose(_expect_ok(p), _expect_ok(q), atol=1e-3)  # DC is removed before the fbank


def test_full_scale_square_wave(tmp_path):
    t = np.arange(16000)
    x = np.where((t // 20) % 2 == 0, 32767, -32768).astype(np.int16)  # 400 Hz, full scale
    p = tmp_path / "square.wav"
    sf.write(p, x, 16000, subtype="PCM_16")
    wave = load_audio(p)
    assert wave.abs().max() <= 1.0 and abs(_peak_hz(wave) - 400) < 5
    x = _expect_ok(p)
    assert x.max() > 0  # loud


def test_ten_ms_clip(tmp_path):
    p = tmp_path / "ten_ms.wav"
    sf.write(p, _sine(16000, 0.010), 16000)
    assert load_audio(p).shape == (160,)
    x = _expect_ok(p)
    assert (x[1:] == x[-1]).all()  # one frame of audio, then the zero padding


@pytest.mark.parametrize("subtype,tol", [("PCM_U8", 1e-2), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6),
                                         ("FLOAT", 1e-7), ("DOUBLE", 1e-7)])
def test_sample_formats_decode_to_the_same_signal(tmp_path, subtype, tol):
    x = _sine(16000, 0.5)
    p = tmp_path / f"fmt_{subtype}.wav"
    sf.write(p, x, 16000, subtype=subtype)
    wave = load_audio(p)
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert (wave - torch.from_numpy(x)).abs().max() < tol
    _expect_ok(p)


def test_six_channels_are_averaged(tmp_path):
    x = np.zeros((16000, 6), np.float32)
    x[:, 2] = _sine(16000, amp=0.6)
    x[:, 5] = 0.3  # DC on one channel
    p = tmp_path / "six.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    wave = load_audio(p)
    assert torch.allclose(wave, torch.from_numpy(x.mean(1)), atol=1e-6)
    _expect_ok(p)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000])
def test_sample_rates_are_resampled_to_16k(tmp_path, sr):
    p = tmp_path / f"rate_{sr}.wav"
    sf.write(p, _sine(sr, 1.0, freq=1000.0), sr, subtype="PCM_24")
    wave = load_audio(p)
    assert abs(wave.shape[0] - 16000) <= 2
    assert abs(_peak_hz(wave) - 1000) < 3
    assert 0.45 < float(wave[1000:-1000].abs().max()) < 0.55
    _expect_ok(p)


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_compressed_formats_decode(tmp_path, fmt, ext):
    p = tmp_path / f"ok.{ext}"
    sf.write(p, _sine(16000), 16000, format=fmt)
    wave = load_audio(p)
    assert abs(wave.shape[0] - 16000) < 2400 and abs(_peak_hz(wave) - 440) < 5
    _expect_ok(p)


def test_path_with_spaces_and_non_ascii(tmp_path):
    d = tmp_path / "my clips — été 音声"
    d.mkdir()
    p = d / "chœur à l'aube 🎵.flac"
    sf.write(p, _sine(16000), 16000, format="FLAC")
    assert abs(_peak_hz(load_audio(p)) - 440) < 5
    _expect_ok(p)
    bad = d / "ça ne va pas 音.wav"
    bad.write_text("nope")
    err = _expect_error(bad)
    assert "音" in str(err)


# --------------------------------------------------------------------------------- through the dataset layer
def test_dataset_replaces_and_reports_every_bad_file(tmp_path):
    """All the refused inputs above, mixed with good clips, through PretrainDataset (decode + augmentation):
    every returned view is finite and every bad file is reported, with its reason."""
    from encoder.data.dataset import PretrainDataset, WaveAugmentConfig, collate_views

    rows, bad_ids = [], set()
    for i in range(6):
        p = tmp_path / f"good_{i}.wav"
        sf.write(p, _sine(16000, 0.5 + 0.1 * i, freq=300 + 100 * i), 16000)
        rows.append({"id": f"good_{i}", "path": str(p)})
    makers = {
        "empty": lambda p: p.write_bytes(b""),
        "header_only": lambda p: p.write_bytes(_wav_header(0)),
        "text": lambda p: p.write_text("text " * 100),
        "random": lambda p: p.write_bytes(os.urandom(4096)),
        "nan": lambda p: sf.write(p, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT"),
        "missing": lambda p: None,
    }
    for name, make in makers.items():
        p = tmp_path / f"{name}.wav"
        make(p)
        rows.append({"id": name, "path": str(p)})
        bad_ids.add(name)
    cfg = FbankConfig(target_frames=64, max_seconds=10)
    ds = PretrainDataset(rows, cfg, WaveAugmentConfig(), seed=3)
    items = [ds[(0, i)] for i in range(len(rows))]
    batch = collate_views(items)
    assert batch["views"].shape == (len(rows), 2, 64, 128)
    assert torch.isfinite(batch["views"]).all()
    assert set(batch["ids"]) <= {r["id"] for r in rows} - bad_ids
    reported = {b["id"] for b in batch["bad"]}
    assert reported == bad_ids
    for b in batch["bad"]:
        assert b["id"] in b["error"] or tmp_path.name in b["error"]
    # deterministic replacements: the same key gives the same clip and views
    again = ds[(0, len(rows) - 1)]
    assert again["id"] == items[-1]["id"] and torch.equal(again["views"], items[-1]["views"])
