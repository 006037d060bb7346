"""The MAE baseline: a real decoder, time-major pixel targets, a loss over the dropped patches only."""
import math

import pytest
import torch

from encoder.mae import MAEConfig, MAEPretrainModel, patchify_pixels, unpatchify_pixels
from encoder.masking import indices_to_grid
from encoder.vit import AudioMosaicViT, EncoderConfig


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread avoids oversubscription on shared CPUs (16x slower there with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(mae: MAEConfig | None = None, frames: int = 64) -> MAEPretrainModel:
    torch.manual_seed(0)
    enc = EncoderConfig(size="tiny", embed_dim=64, depth=2, num_heads=4, target_frames=frames)
    return MAEPretrainModel(enc, mae or MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=4))


def structured_batch(b: int = 8, frames: int = 64, seed: int = 1) -> torch.Tensor:
    """Harmonic-like spectrograms: frequency stripes of a per-clip period (4, 8, 16 or 32 bins), amplitude-modulated
    in time at a per-clip rate, plus a weak 16-frame ripple: each clip's dropped patches follow from its kept ones."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32).view(1, -1, 1)
    f = torch.arange(128, dtype=torch.float32).view(1, 1, -1)
    period = torch.tensor([4.0, 8.0, 16.0, 32.0])[torch.randint(0, 4, (b,), generator=g)].view(b, 1, 1)
    rate = 0.05 + 0.1 * torch.rand(b, 1, 1, generator=g)
    ripple = 0.1 * torch.cos(2 * math.pi * t / 16)
    return torch.cos(2 * math.pi * f / period) * (1.0 + 0.5 * torch.sin(rate * t)) + ripple


def test_pixel_target_is_time_major_like_the_encoder_tokens():
    x = torch.randn(2, 48, 128)
    model = small(frames=48)
    target = model.patchify_pixels(x)
    n_time, n_freq = 3, 8
    assert target.shape == (2, n_time * n_freq, 256)
    for b in range(2):
        for t in range(n_time):
            for f in range(n_freq):
                assert torch.equal(target[b, t * n_freq + f], x[b, t * 16:(t + 1) * 16, f * 16:(f + 1) * 16].flatten())
    # the encoder's conv + flatten(2) order matches: a patch-embed that reads one pixel gives the same order
    enc = AudioMosaicViT(EncoderConfig(size="tiny", depth=1, target_frames=48))
    with torch.no_grad():
        enc.patch_embed.weight.zero_()
        enc.patch_embed.bias.zero_()
        enc.patch_embed.weight[0, 0, 3, 5] = 1.0
        tokens, grid = enc.patchify(x)
        tokens = tokens - enc.pos_embed(*grid, x.device, x.dtype)
    assert grid == (n_time, n_freq)
    assert torch.allclose(tokens[..., 0], target[..., 3 * 16 + 5])
    assert torch.equal(unpatchify_pixels(target, n_time, n_freq), x)
    assert torch.equal(patchify_pixels(x.unsqueeze(1)), target)


def test_mask_marks_the_dropped_patches_and_loss_is_mse_over_them_only():
    model = small().eval()
    x = structured_batch(3)
    out = model(x, generator=torch.Generator().manual_seed(1))
    mask, keep, pred = out["mask"], out["keep"], out["pred"]
    n = 4 * 8
    assert mask.shape == (3, n) and pred.shape == (3, n, 256)
    assert keep.shape == (3, int(math.floor(n * 0.2 + 1e-9)))  # ratio is the fraction dropped
    expected = torch.ones(3, n)
    expected.scatter_(1, keep, 0.0)
    assert torch.equal(mask, expected)
    # manual MSE over mask == 1 with per-patch normalised targets (eps 1e-6)
    target = patchify_pixels(x)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    sel = mask.bool()
    manual = ((pred[sel] - target[sel]) ** 2).mean()
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)
    # the kept patches receive no gradient from the loss
    model.train()
    out = model(x, generator=torch.Generator().manual_seed(1))
    out["pred"].retain_grad()
    out["loss"].backward()
    g = out["pred"].grad
    assert torch.count_nonzero(g[~sel]) == 0 and torch.count_nonzero(g[sel]) > 0


def test_raw_pixel_loss_and_structured_masks():
    model = small(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=4, norm_pix_loss=False,
                            mask_kind="time", mask_ratio=0.5)).eval()
    x = structured_batch(2)
    out = model(x, generator=torch.Generator().manual_seed(0))
    grid = indices_to_grid(out["keep"], 4, 8)
    assert (grid.all(dim=2) | ~grid.any(dim=2)).all()  # whole time columns kept or dropped
    assert grid.all(dim=2).sum(dim=1).tolist() == [2, 2]
    sel = out["mask"].bool()
    manual = ((out["pred"][sel] - patchify_pixels(x)[sel]) ** 2).mean()
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)
    freq = small(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=4, mask_kind="freq", mask_ratio=0.5))
    grid = indices_to_grid(freq(x)["keep"], 4, 8)
    assert (grid.all(dim=1) | ~grid.any(dim=1)).all() and grid.all(dim=1).sum(dim=1).tolist() == [4, 4]


def test_deterministic_given_the_generator():
    model = small().eval()
    x = structured_batch(2)
    a = model(x, generator=torch.Generator().manual_seed(7))
    b = model(x, generator=torch.Generator().manual_seed(7))
    c = model(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["pred"], b["pred"]) and a["loss"] == b["loss"]
    assert not torch.equal(a["mask"], c["mask"])


def test_gradients_reach_the_encoder_and_adam_reduces_the_loss():
    model = small().train()
    x = structured_batch(8)
    out = model(x, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    for name in ["encoder.patch_embed.weight", "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.1.mlp.0.weight",
                 "encoder.norm.weight", "mask_token", "decoder_embed.weight", "decoder_pred.weight"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()

    target = model.target(x)
    per_position_mean = ((target - target.mean(0, keepdim=True)) ** 2).mean().item()  # best clip-blind guess
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(123)
    losses = []
    for _ in range(60):
        loss = model(x, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = sum(model(x, generator=torch.Generator().manual_seed(s))["loss"].item() for s in range(3)) / 3
    assert final < 0.5 * losses[0], (losses[0], final)
    # and it beats guessing each position's batch-mean patch: the kept patches tell the decoder which clip it is
    assert final < 0.8 * per_position_mean, (per_position_mean, final)


def test_encoder_exports_like_the_contrastive_one():
    model = small()
    plain = AudioMosaicViT(model.encoder.cfg)
    plain.load_state_dict(model.encoder.state_dict())
    x = structured_batch(2)
    assert torch.allclose(plain.eval()(x), model.eval().encoder(x))
    assert all(not k.startswith("encoder.") or k[8:] in plain.state_dict() for k in model.state_dict())


def test_bad_configs_and_inputs_are_clear_errors():
    for kw in [dict(mask_kind="none"), dict(mask_kind="lattice"), dict(mask_ratio=0.0), dict(mask_ratio=1.0),
               dict(decoder_dim=30, decoder_heads=4), dict(decoder_dim=18, decoder_heads=6)]:
        with pytest.raises(ValueError):
            MAEConfig(**kw)
    model = small()
    with pytest.raises(ValueError, match="spectrogram"):
        model(torch.randn(1, 50, 128))
    with pytest.raises(ValueError, match="spectrogram"):
        model(torch.randn(1, 64, 64))
