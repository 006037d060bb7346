"""Structured masking is proven by construction: which (time, frequency) patches survive in each view."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder.masking import freq_view_indices, indices_to_grid, kept_count, random_view_indices, time_view_indices
from encoder.vit import AudioMosaicViT, EncoderConfig


def test_paper_counts_on_64x8_grid():
    assert kept_count(64, 0.6) == 25 and kept_count(8, 0.4) == 4
    assert time_view_indices(2, 64, 8, 0.6).shape == (2, 200)
    assert freq_view_indices(2, 64, 8, 0.4).shape == (2, 256)


def test_time_view_keeps_whole_time_columns():
    g = torch.Generator().manual_seed(0)
    grid = indices_to_grid(time_view_indices(16, 64, 8, 0.6, g), 64, 8)  # [B, time, freq]
    cols = grid.any(dim=2)
    assert torch.equal(grid, cols.unsqueeze(2).expand_as(grid))  # a kept time column keeps every freq row
    assert (cols.sum(1) == 25).all()
    assert grid.all(dim=1).sum() == 0  # no frequency row survives across all time: it is not a freq view


def test_freq_view_keeps_whole_frequency_rows():
    g = torch.Generator().manual_seed(1)
    grid = indices_to_grid(freq_view_indices(16, 64, 8, 0.4, g), 64, 8)
    rows = grid.any(dim=1)  # [B, freq]
    assert torch.equal(grid, rows.unsqueeze(1).expand_as(grid))  # a kept freq row keeps every time column
    assert (rows.sum(1) == 4).all()


def test_views_select_the_right_spectrogram_regions_through_the_model():
    """End to end: mark one spectrogram region, check the kept patch embeddings come from it (not transposed)."""
    cfg = EncoderConfig(size="tiny", target_frames=256)
    model = AudioMosaicViT(cfg)
    n_time, n_freq = cfg.grid()
    assert (n_time, n_freq) == (16, 8)
    x = torch.zeros(1, 256, 128)
    x[0, 3 * 16:4 * 16, :] = 1.0  # time column 3, every frequency
    x[0, :, 5 * 16:6 * 16] = 2.0  # frequency row 5, every time
    with torch.no_grad():
        tokens, grid = model.patchify(x)
        pos = model.pos_embed(n_time, n_freq, x.device, x.dtype)
        content = (tokens - pos).view(n_time, n_freq, -1)
        base = model.patch_embed.bias
    assert grid == (16, 8)
    differs = ~torch.isclose(content, base.expand_as(content), atol=1e-5).all(-1)
    expected = torch.zeros(16, 8, dtype=torch.bool)
    expected[3, :] = True
    expected[:, 5] = True
    assert torch.equal(differs, expected)


def test_position_embedding_is_laid_on_the_time_freq_grid():
    from encoder.vit import sincos_1d, sincos_2d

    pe = sincos_2d(64, 16, 8)
    t_part, f_part = pe[:, :32], pe[:, 32:]
    for t in range(16):
        for f in range(8):
            i = t * 8 + f
            assert torch.allclose(t_part[i], sincos_1d(32, torch.tensor([t])).float()[0])
            assert torch.allclose(f_part[i], sincos_1d(32, torch.tensor([f])).float()[0])


def test_random_view_is_unstructured():
    idx = random_view_indices(4, 64, 8, 0.75, torch.Generator().manual_seed(0))
    assert idx.shape == (4, 128) and (idx.diff(dim=1) > 0).all()


@settings(max_examples=60, deadline=None)
@given(n_time=st.integers(1, 80), n_freq=st.integers(1, 16), ratio=st.floats(0.0, 0.95), b=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_masking_property(n_time, n_freq, ratio, b, seed):
    g = torch.Generator().manual_seed(seed)
    kt, kf = kept_count(n_time, ratio), kept_count(n_freq, ratio)
    assert kt == max(1, int(n_time * (1 - ratio) + 1e-9))
    tg = indices_to_grid(time_view_indices(b, n_time, n_freq, ratio, g), n_time, n_freq)
    fg = indices_to_grid(freq_view_indices(b, n_time, n_freq, ratio, g), n_time, n_freq)
    assert (tg.any(2).sum(1) == kt).all() and torch.equal(tg, tg.any(2, keepdim=True).expand_as(tg))
    assert (fg.any(1).sum(1) == kf).all() and torch.equal(fg, fg.any(1, keepdim=True).expand_as(fg))
