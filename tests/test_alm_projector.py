"""Projector shapes and pooling (no LLM needed)."""
import pytest
import torch

from mosaic_alm.projector import AudioProjector, AudioProjectorConfig, num_audio_tokens


@pytest.mark.parametrize("frames,expected", [(1024, 32), (256, 8), (128, 4), (208, 6)])
def test_token_counts(frames, expected):
    assert num_audio_tokens(frames) == expected
    proj = AudioProjector(192, 576)
    tokens = torch.randn(2, (frames // 16) * 8, 192)
    assert proj(tokens).shape == (2, expected, 576)


def test_pooling_is_freq_mean_then_time_pairs():
    d = 4
    proj = AudioProjector(d, 6, cfg=AudioProjectorConfig(scale=0.5))
    n_time = 4
    grid = torch.randn(1, n_time, 8, d)  # [B, time, freq, D]
    tokens = grid.reshape(1, n_time * 8, d)  # time-major: index = t * 8 + f
    pooled = proj.pool_tokens(tokens)
    per_t = grid.mean(2)
    expected = torch.stack([(per_t[:, 0] + per_t[:, 1]) / 2, (per_t[:, 2] + per_t[:, 3]) / 2], 1) * 0.5
    torch.testing.assert_close(pooled, expected)


def test_output_rms_matches_target():
    torch.manual_seed(0)
    proj = AudioProjector(192, 576, target_rms=0.05)
    with torch.no_grad():
        out = proj(torch.randn(4, 16 * 8, 192) * 3 + 1)
    assert 0.04 < float(out.pow(2).mean().sqrt()) < 0.06


def test_rejects_wrong_shapes():
    proj = AudioProjector(192, 576)
    with pytest.raises(ValueError, match="encoder tokens"):
        proj(torch.randn(1, 13, 192))
    with pytest.raises(ValueError, match="encoder tokens"):
        proj(torch.randn(1, 16, 100))


def test_standardisation_removes_the_shared_direction():
    torch.manual_seed(0)
    common = torch.randn(16) * 50  # every clip shares it: what a frozen encoder's pooled tokens look like
    pooled = common + 0.1 * torch.randn(32, 4, 16)
    proj = AudioProjector(16, 8, n_freq=1, cfg=AudioProjectorConfig(pool=1))
    with pytest.raises(ValueError, match="two"):
        proj.set_feature_stats(pooled[:1, :1])
    before = proj(pooled)  # identity statistics: outputs nearly the same for every clip
    proj.set_feature_stats(pooled)
    assert int(proj.stats_count) == 32
    z = (pooled - proj.feat_mean) / proj.feat_std
    assert torch.allclose(z.reshape(-1, 16).mean(0), torch.zeros(16), atol=1e-4)
    assert torch.allclose(z.reshape(-1, 16).std(0), torch.ones(16), atol=1e-3)
    after = proj(pooled)

    def spread(y):
        return float(y.reshape(-1, 8).std(0).mean() / y.reshape(-1, 8).mean(0).abs().mean())

    assert spread(after) > 20 * spread(before)
    off = AudioProjector(16, 8, n_freq=1, cfg=AudioProjectorConfig(pool=1, standardize=False))
    off.load_state_dict(proj.state_dict())
    assert torch.allclose(off(pooled), before)
    const = torch.ones(10, 2, 16)  # a constant feature keeps finite statistics
    proj.set_feature_stats(const)
    assert torch.isfinite(proj(const)).all()


def test_attentive_projector_reads_every_patch_token():
    cfg = AudioProjectorConfig(kind="attentive", heads=4)
    with pytest.raises(ValueError, match="n_audio"):
        AudioProjector(16, 8, n_freq=2, cfg=cfg)
    torch.manual_seed(0)
    proj = AudioProjector(16, 8, n_freq=2, cfg=cfg, n_audio=3)
    tokens = torch.randn(2, 10, 16)
    assert proj(tokens).shape == (2, 3, 8)
    moved = tokens.clone()
    moved[:, 1] = 3.0 * torch.randn(16)  # one frequency patch of one time step (a constant shift LayerNorm removes)
    assert not torch.allclose(proj(tokens), proj(moved))


def test_attentive_projector_is_the_multihead_attention_block():
    """The query-side computation (encoder.query_attention) is the same function as nn.MultiheadAttention over
    norm_kv(tokens), with the same gradients, for non-default parameters (in float64)."""
    torch.manual_seed(0)
    proj = AudioProjector(16, 8, n_freq=2, cfg=AudioProjectorConfig(kind="attentive", heads=4), n_audio=3).double()
    with torch.no_grad():
        for prm in proj.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        proj.feat_mean.normal_()
        proj.feat_std.uniform_(0.5, 2.0)
    tokens = 2.0 * torch.randn(5, 12, 16, dtype=torch.float64) + 0.5

    def reference(tokens):
        x = (proj.features(tokens) - proj.feat_mean) / proj.feat_std
        kv = proj.norm_kv(x)
        q = proj.query.expand(x.shape[0], -1, -1)
        q = q + proj.attn(proj.norm_q(q), kv, kv, need_weights=False)[0]
        q = q + proj.mlp(proj.norm_mlp(q))
        return proj.linear(proj.norm(q))

    torch.testing.assert_close(proj(tokens), reference(tokens), atol=1e-10, rtol=1e-10)
    grads = []
    for fn in (proj, reference):
        proj.zero_grad()
        fn(tokens).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in proj.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
