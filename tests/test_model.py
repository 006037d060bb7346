import math

import pytest
import torch
import torch.nn.functional as F

from encoder.loss import nt_xent
from encoder.masking import freq_view_indices, time_view_indices
from encoder.vit import AudioMosaicPretrainModel, AudioMosaicViT, EncoderConfig, PretrainProjectorConfig
from mosaic_core.config import ConfigError, apply_overrides, from_dict


def naive_nt_xent(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = z @ z.T / tau
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(sim[i, j]) for j in range(2 * n) if j != i)
        total += -(sim[i, pos].item() - math.log(denom))
    return total / (2 * n)


def test_nt_xent_matches_the_formula():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    out = nt_xent(z1, z2, temperature=0.1)
    assert out["loss"].item() == pytest.approx(naive_nt_xent(z1, z2, 0.1), rel=1e-5)
    same = nt_xent(z1, z1 + 1e-3 * torch.randn(5, 8), 0.1)
    assert same["accuracy"].item() == 1.0 and same["loss"] < out["loss"]


def test_pooling_excludes_cls_and_tokens_are_time_major():
    cfg = EncoderConfig(size="tiny", target_frames=64, depth=2)
    model = AudioMosaicViT(cfg).eval()
    x = torch.randn(2, 64, 128)
    out = model.forward_features(x, output_hidden_states=True)
    h = out["hidden_states"][-1]
    assert torch.allclose(out["pooled"], model.fc_norm(h[:, 1:].mean(1)), atol=1e-6)
    assert not torch.allclose(out["pooled"], model.fc_norm(h.mean(1)), atol=1e-4)
    assert out["tokens"].shape == (2, 4 * 8, 192) and out["grid"] == (4, 8)


def test_keep_indices_equal_running_on_the_kept_patches_only():
    cfg = EncoderConfig(size="tiny", target_frames=64, depth=2)
    model = AudioMosaicViT(cfg).eval()
    x = torch.randn(3, 64, 128)
    keep = time_view_indices(3, 4, 8, 0.5, torch.Generator().manual_seed(0))
    full_tokens, _ = model.patchify(x)
    out = model.forward_features(x, keep)
    assert out["tokens"].shape == (3, 16, 192)
    # gathering happens after positions are added, so every kept token carries its own (t, f) position
    picked = torch.gather(full_tokens, 1, keep.unsqueeze(-1).expand(-1, -1, 192))
    assert torch.allclose(model.patchify(x)[0].gather(1, keep.unsqueeze(-1).expand(-1, -1, 192)), picked)


def test_variable_lengths_and_bad_shapes():
    model = AudioMosaicViT(EncoderConfig(size="tiny", target_frames=128, depth=1))
    assert model(torch.randn(1, 48, 128)).shape == (1, 192)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 50, 128))
    with pytest.raises(ValueError, match="F=128"):
        model(torch.randn(1, 48, 64))


def test_config_rejects_unknown_keys_and_bad_overrides():
    with pytest.raises(ConfigError, match="patch_stride"):
        from_dict(EncoderConfig, {"size": "tiny", "patch_stride": 10})
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides({"model": {"size": "tiny"}}, ["model.sise=base"])
    assert apply_overrides({"model": {"lr": 1.0}}, ["model.lr=1e-3"])["model"]["lr"] == 1e-3


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = AudioMosaicViT(EncoderConfig(size="tiny", target_frames=64, depth=2))
    b = AudioMosaicViT(EncoderConfig(size="tiny", target_frames=64, depth=2, checkpoint_fraction=1.0))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 64, 128)
    a(x).sum().backward()
    b(x).sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), n


def test_projector_bn_sees_both_views_at_once():
    """Projector statistics are over the concatenation of both views (no per-view statistics leak)."""
    torch.manual_seed(0)
    m = AudioMosaicPretrainModel(EncoderConfig(size="tiny", target_frames=64, depth=1), PretrainProjectorConfig())
    x = torch.randn(4, 64, 128)
    k1, k2 = time_view_indices(4, 4, 8, 0.6), freq_view_indices(4, 4, 8, 0.4)
    z1, z2 = m(x, k1, x, k2)
    z = torch.cat([z1, z2])
    # bn2 has no affine: the joint batch is standardised, each view separately is not
    assert torch.allclose(z.mean(0), torch.zeros(128), atol=1e-5)
    assert not torch.allclose(z1.mean(0), torch.zeros(128), atol=1e-3)
