"""Probes on precomputed features and the fine-tuning augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.augment import class_balanced_weights, layerwise_lr_groups, mixup, roll_and_magnitude, spec_augment
from eval.probes import (
    LOGREG_CS,
    AttentiveProbe,
    LinearProbe,
    WeightedLayerProbe,
    evaluate_probe,
    fit_logreg,
    fit_probe,
    linear_probe_by_layer,
    predict,
)

N, L, D, C = 240, 4, 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These probes are tiny: on a shared machine, intra-op threads cost far more than they give (~3x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


INFORMATIVE = 2
FIT = dict(epochs=12, lr=1e-2, batch_size=60, weight_decay=0.0)


@pytest.fixture(scope="module")
def layered():
    """[N, L, D] features where only layer 2 carries the class (a shifted Gaussian blob per class)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    x = torch.randn(N, L, D, generator=g)
    centres = 2.0 * torch.randn(C, D, generator=g)
    x[:, INFORMATIVE] += centres[y]
    return x, y


def test_linear_probe_learns_the_informative_layer(layered):
    x, y = layered
    probe = LinearProbe(D, C)
    hist = fit_probe(probe, x[:160, INFORMATIVE], y[:160], x[160:200, INFORMATIVE], y[160:200], seed=0, **FIT)
    acc = evaluate_probe(probe, x[200:, INFORMATIVE], y[200:])["accuracy"]
    assert acc > 0.9  # chance is 1/3
    assert len(hist["train_loss"]) == FIT["epochs"] and hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["best_valid"] == max(hist["valid_metric"])
    assert hist["lr"][-1] == pytest.approx(0.0, abs=1e-9)  # cosine to zero
    # an uninformative layer stays near chance
    by_layer = linear_probe_by_layer(x[:160], y[:160], x[200:], y[200:], valid_x=x[160:200], valid_y=y[160:200])
    assert int(np.argmax(by_layer)) == INFORMATIVE and len(by_layer) == L


def test_fair_logreg_readout_chooses_c_on_valid_and_converges(layered):
    x, y = layered
    readout = fit_logreg(x[:160, INFORMATIVE], y[:160], x[160:200, INFORMATIVE], y[160:200])
    assert set(readout.valid_metric) == set(LOGREG_CS) and readout.valid_metric[readout.C] == max(
        readout.valid_metric.values())
    assert readout.evaluate(x[200:, INFORMATIVE], y[200:])["accuracy"] > 0.9
    # scale-free: multiplying the features by 1000 changes nothing (standardised inside)
    scaled = fit_logreg(1000 * x[:160, INFORMATIVE], y[:160], 1000 * x[160:200, INFORMATIVE], y[160:200])
    assert scaled.C == readout.C
    np.testing.assert_allclose(scaled.scores(1000 * x[200:, INFORMATIVE]), readout.scores(x[200:, INFORMATIVE]),
                               atol=1e-4)
    # converged where the budgeted SGD probe is not: on an easy separable problem it reaches training accuracy 1
    assert readout.evaluate(x[:160, INFORMATIVE], y[:160])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="both valid_x and valid_y"):
        fit_logreg(x[:10, 0], y[:10], x[:10, 0])


def test_fit_is_deterministic_for_a_seed(layered):
    x, y = layered
    a, b, c = LinearProbe(D, C), LinearProbe(D, C), LinearProbe(D, C)
    ha = fit_probe(a, x[:120, 0], y[:120], seed=3, epochs=3, lr=1e-2, batch_size=40)
    hb = fit_probe(b, x[:120, 0], y[:120], seed=3, epochs=3, lr=1e-2, batch_size=40)
    fit_probe(c, x[:120, 0], y[:120], seed=4, epochs=3, lr=1e-2, batch_size=40)
    assert ha["train_loss"] == hb["train_loss"]
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_weighted_layer_probe_picks_the_informative_layer(layered):
    x, y = layered
    probe = WeightedLayerProbe(L, D, C)
    fit_probe(probe, x[:200], y[:200], seed=0, **{**FIT, "lr": 3e-2})
    w = probe.layer_weights()
    assert w.sum().item() == pytest.approx(1.0)
    assert int(w.argmax()) == INFORMATIVE
    assert evaluate_probe(probe, x[200:], y[200:])["accuracy"] > 0.85


def _token_data(n: int, seed: int):
    """Variable-length token sequences; the class lives in ONE token at a random position."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(C, D, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, C, (n,), generator=g)
    seqs = []
    for i in range(n):
        t = int(torch.randint(2, 9, (1,), generator=g))
        s = torch.randn(t, D, generator=g)
        s[int(torch.randint(0, t, (1,), generator=g))] += centres[y[i]]
        seqs.append(s)
    return seqs, y


def test_attentive_probe_on_variable_token_counts():
    train, ytr = _token_data(240, 0)
    test, yte = _token_data(60, 1)
    probe = AttentiveProbe(D, C, num_heads=4)
    fit_probe(probe, train, ytr, seed=0, epochs=12, lr=3e-3, batch_size=60)
    assert evaluate_probe(probe, test, yte)["accuracy"] > 0.8

    # padding is masked out: a padded batch with garbage in the padding gives the same logits as the list
    t_max = max(s.shape[0] for s in test)
    padded = torch.full((len(test), t_max, D), 1e3)
    mask = torch.zeros(len(test), t_max, dtype=torch.bool)
    for i, s in enumerate(test):
        padded[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    torch.testing.assert_close(predict(probe, (padded, mask)), predict(probe, test), atol=1e-5, rtol=1e-5)


def test_attentive_probe_equals_the_multihead_attention_block():
    """The query-side computation is the same function as nn.MultiheadAttention over norm_kv(tokens), with and
    without padding, for trained (non-default) parameters; and gradients agree too."""
    torch.manual_seed(0)
    probe = AttentiveProbe(D, C, num_heads=4).double()
    with torch.no_grad():
        for prm in probe.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x = 2.0 * torch.randn(7, 11, D, dtype=torch.float64) + 0.5
    mask = torch.rand(7, 11) > 0.4
    mask[:, 0] = True
    probe.fit_standardiser(x, mask)

    def reference(x, mask):
        kv = probe.norm_kv(probe.standardise(x))
        q = probe.query.expand(x.shape[0], -1, -1)
        out, _ = probe.attn(probe.norm_q(q), kv, kv, key_padding_mask=None if mask is None else ~mask,
                            need_weights=False)
        q = q + out
        q = q + probe.mlp(probe.norm_mlp(q))
        return probe.head(probe.norm_out(q[:, 0]))

    for m in (mask, None):
        torch.testing.assert_close(probe(x, m), reference(x, m), atol=1e-10, rtol=1e-10)
    grads = []
    for fn in (lambda: probe(x, mask), lambda: reference(x, mask)):
        probe.zero_grad()
        fn().pow(2).sum().backward()
        grads.append([p.grad.clone() for p in probe.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_multilabel_fit_reports_map(layered):
    x, y = layered
    targets = torch.nn.functional.one_hot(y, C).float()
    targets[:, 0] = torch.maximum(targets[:, 0], targets[:, 1])  # overlapping labels
    probe = LinearProbe(D, C)
    hist = fit_probe(probe, x[:200, INFORMATIVE], targets[:200], x[200:, INFORMATIVE], targets[200:],
                     multilabel=True, seed=0, **FIT)
    assert hist["metric"] == "mAP"
    res = evaluate_probe(probe, x[200:, INFORMATIVE], targets[200:], multilabel=True)
    assert res["mAP"] > 0.9 and res["AUC"] > 0.9 and res["d_prime"] > 1.0


def test_probe_input_validation():
    with pytest.raises(ValueError, match="feature dim"):
        fit_probe(LinearProbe(D, C), torch.randn(10, D + 1), torch.zeros(10, dtype=torch.long), epochs=1)
    with pytest.raises(ValueError, match="class indices"):
        fit_probe(LinearProbe(D, C), torch.randn(10, D), torch.full((10,), C), epochs=1)
    with pytest.raises(ValueError, match="layers"):
        fit_probe(WeightedLayerProbe(L, D, C), torch.randn(10, L + 1, D), torch.zeros(10, dtype=torch.long), epochs=1)
    with pytest.raises(ValueError, match="divisible"):
        AttentiveProbe(10, C, num_heads=4)


# ----------------------------------------------------------------------------------------------------------------
# fine-tuning augmentations
# ----------------------------------------------------------------------------------------------------------------
def test_mixup_mixes_inputs_and_targets_consistently():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(4, dtype=torch.float)[:, None, None].expand(4, 5, 3).clone()
    y = torch.tensor([0, 1, 2, 3])
    mx, my = mixup(x, y, alpha=0.5, num_classes=4, generator=g)
    assert my.shape == (4, 4)
    torch.testing.assert_close(my.sum(1), torch.ones(4))
    # the mixed input value equals the label-weighted mean of the source values (x_i = i)
    torch.testing.assert_close(mx[:, 0, 0], my @ torch.arange(4, dtype=torch.float))
    same_x, same_y = mixup(x, y, alpha=0.0, num_classes=4)
    assert torch.equal(same_x, x) and torch.equal(same_y, torch.eye(4))


def test_spec_augment_masks_the_right_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 16) + 5.0
    only_time = spec_augment(x, time_mask=10, freq_mask=0, n_masks=2, generator=g)
    zero = only_time == 0
    # time masking zeroes whole frames: every masked cell's full row along frequency is masked
    assert zero.any() and torch.equal(zero.all(dim=2), zero.any(dim=2))
    assert (zero.all(dim=2).sum(dim=1) <= 20).all()
    only_freq = spec_augment(x, time_mask=0, freq_mask=4, n_masks=1, generator=g)
    zero = only_freq == 0
    assert zero.any() and torch.equal(zero.all(dim=1), zero.any(dim=1))
    assert (zero.all(dim=1).sum(dim=1) <= 4).all()
    mean_fill = spec_augment(x, 10, 4, fill="mean", generator=torch.Generator().manual_seed(1))
    changed = mean_fill != x
    torch.testing.assert_close(mean_fill[changed][:1], x[changed.any(2).any(1)][0].mean().reshape(1))
    assert torch.equal(x, x.clone())  # input untouched
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        spec_augment(torch.randn(64, 16), 5, 5)


def test_roll_and_magnitude():
    x = torch.randn(4, 32, 8)
    out = roll_and_magnitude(x, gain_db=(3.0, 3.0), generator=torch.Generator().manual_seed(0))
    gain = 3.0 * math.log(10) / 10
    for b in range(4):  # each example is a circular time shift of its input plus a constant
        matches = [s for s in range(32) if torch.allclose(out[b] - gain, torch.roll(x[b], s, dims=0), atol=1e-6)]
        assert len(matches) == 1
    no_shift = roll_and_magnitude(x, max_shift=0, gain_db=(0.0, 0.0))
    assert torch.equal(no_shift, x)


def test_class_balanced_weights_equalise_class_frequency():
    y = np.zeros((103, 3), dtype=int)
    y[:90, 0] = 1  # common
    y[90:100, 1] = 1  # rarer
    y[100:, 2] = 1  # rare
    y[0, 2] = 1  # one clip with two labels
    w = class_balanced_weights(y).numpy()
    assert w[1] == pytest.approx(1 / 90) and w[95] == pytest.approx(1 / 10) and w[0] == pytest.approx(1 / 90 + 1 / 4)
    # expected sampling mass per class is (about) equal
    mass = (w[:, None] * y).sum(0)
    assert mass == pytest.approx([1 + 1 / 4, 1.0, 1 + 1 / 90])  # the two-label clip adds to both classes
    sampler = torch.utils.data.WeightedRandomSampler(class_balanced_weights(y), 3000,
                                                     generator=torch.Generator().manual_seed(0))
    counts = y[list(sampler)].sum(0)
    assert counts.min() > 0.6 * counts.max()


def test_layerwise_lr_groups():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = torch.nn.Linear(4, 8)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
            self.blocks = torch.nn.ModuleList(
                [torch.nn.ModuleDict({"norm": torch.nn.LayerNorm(8), "fc": torch.nn.Linear(8, 8)}) for _ in range(3)]
            )
            self.norm = torch.nn.LayerNorm(8)
            self.head = torch.nn.Linear(8, 2)

    model = Tiny()
    groups = layerwise_lr_groups(model.named_parameters(), num_layers=3, base_lr=1e-3, decay=0.5, weight_decay=0.05)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named)
    lr = lambda n: by_param[id(named[n])]["lr"]  # noqa: E731
    wd = lambda n: by_param[id(named[n])]["weight_decay"]  # noqa: E731
    assert lr("head.weight") == pytest.approx(1e-3) and lr("norm.weight") == pytest.approx(1e-3)
    assert lr("blocks.2.fc.weight") == pytest.approx(1e-3 * 0.5)
    assert lr("blocks.0.fc.weight") == pytest.approx(1e-3 * 0.5**3)
    assert lr("patch_embed.weight") == pytest.approx(1e-3 * 0.5**4) and lr("cls_token") == lr("patch_embed.weight")
    assert wd("blocks.1.fc.weight") == 0.05 and wd("head.weight") == 0.05
    for n in ("blocks.1.fc.bias", "blocks.1.norm.weight", "cls_token", "norm.bias", "patch_embed.bias"):
        assert wd(n) == 0.0, n
    torch.optim.AdamW(groups)  # accepted as-is
    with pytest.raises(ValueError, match="block 3"):
        layerwise_lr_groups([("encoder.blocks.3.fc.weight", torch.nn.Parameter(torch.zeros(2, 2)))], 3, 1e-3, 0.5, 0.0)
