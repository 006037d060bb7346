import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from encoder.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioError,
    FbankConfig,
    fbank,
    file_to_input,
    load_audio,
    mel_banks,
    normalise,
    num_frames,
    pad_or_crop,
    waveform_to_input,
)

FIX = Path(__file__).parent / "fixtures"


def test_fbank_matches_torchaudio_golden():
    from tests.fixtures.make_fbank_golden import golden_inputs

    golden = load_file(str(FIX / "fbank_golden.safetensors"))
    for name, wave in golden_inputs().items():
        ours = fbank(wave)
        assert ours.shape == golden[name].shape, name
        assert torch.allclose(ours, golden[name], atol=2e-3, rtol=1e-4), (name, (ours - golden[name]).abs().max())


def test_fbank_matches_kaldi_formula_for_a_tone():
    # A pure tone's energy lands in the mel bins whose triangle covers its frequency (mel = 1127 ln(1 + f/700)).
    sr, f0 = 16000, 1000.0
    t = torch.arange(sr) / sr
    spec = fbank(torch.sin(2 * math.pi * f0 * t))
    banks = mel_banks(128, 512, 16000.0, 20.0, 0.0)
    fft_bin = round(f0 / (sr / 512))
    expected_peak = int(banks[:, fft_bin].argmax())
    assert abs(int(spec.mean(0).argmax()) - expected_peak) <= 1
    # Filters are triangles on the mel scale: each one peaks at 1 near its center and sums of neighbours overlap.
    assert banks.max() <= 1.0 + 1e-6 and banks[:, -1].abs().sum() == 0


def test_batched_fbank_equals_single():
    w = torch.randn(3, 8000) * 0.1
    batched = fbank(w)
    for i in range(3):
        assert torch.allclose(batched[i], fbank(w[i]), atol=1e-5)


def test_frame_count_and_padding():
    cfg = FbankConfig(target_frames=128)
    assert num_frames(16000) == 98
    x = waveform_to_input(torch.randn(16000) * 0.1, cfg)
    assert x.shape == (128, 128)
    assert torch.equal(x[98:], normalise(torch.zeros(30, 128)))  # zero padding happens before normalisation
    long = pad_or_crop(torch.randn(300, 128), 128, offset=50)
    assert long.shape == (128, 128)


def test_normalisation_constants():
    spec = torch.full((4, 128), AUDIOSET_MEAN + 2 * AUDIOSET_STD)
    assert torch.allclose(normalise(spec), torch.ones(4, 128))


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "FLOAT")])
def test_load_audio_formats_resample_and_mono(tmp_path, fmt, subtype):
    sr = 44100
    t = np.arange(sr) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)], axis=1)
    path = tmp_path / f"tone ü.{fmt.lower()}"
    sf.write(path, stereo, sr, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.numel() - 16000) <= 2
    # mono = mean of channels: amplitude 0.3; resampling keeps the 440 Hz tone
    assert 0.25 < wave.abs().max() < 0.35
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(spectrum.argmax() * 16000 / wave.numel() - 440) < 3


def test_load_audio_errors_name_file_and_reason(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 1.0] * 1000, dtype=np.float32), 16000, subtype="FLOAT")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 3, dtype=np.float32), 16000)
    cases = [(empty, "empty"), (text, "cannot decode"), (nan, "NaN"), (tmp_path / "missing.wav", "does not exist")]
    for path, reason in cases:
        with pytest.raises(AudioError) as err:
            load_audio(path)
        assert str(path) in str(err.value) and reason in str(err.value)
    with pytest.raises(AudioError, match="above the 2 s maximum"):
        load_audio(long, max_seconds=2)


def test_file_to_input_is_finite_for_silence_and_tiny_clips(tmp_path):
    for name, data in {"silence": np.zeros(16000), "tiny": 0.1 * np.ones(160), "dc": np.full(8000, 0.5)}.items():
        p = tmp_path / f"{name}.wav"
        sf.write(p, data.astype(np.float32), 16000, subtype="FLOAT")
        x = file_to_input(p, FbankConfig(target_frames=128))
        assert x.shape == (128, 128) and torch.isfinite(x).all()
