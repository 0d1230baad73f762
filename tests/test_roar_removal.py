"""The altered datasets: which pixels go, what replaces them, and the controls."""

from __future__ import annotations

import math

import pytest
import torch

import fxai
from fxai.roar import methods, removal


def test_top_and_bottom_fractions_exactly():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])
    assert fxai.roar.removal_mask(maps, 0.5, "roar").tolist() == [[[False, True], [True, False]]]
    assert fxai.roar.removal_mask(maps, 0.5, "kar").tolist() == [[[True, False], [False, True]]]
    assert fxai.roar.removal_mask(maps, 0.25, "roar").tolist() == [[[False, True], [False, False]]]
    assert not fxai.roar.removal_mask(maps, 0.0, "roar").any() and fxai.roar.removal_mask(maps, 1.0, "kar").all()


def test_roar_and_kar_are_complements_and_counts_are_exact():
    maps = torch.rand(5, 7, 9, generator=torch.Generator().manual_seed(0))
    for t in (0.1, 0.33, 0.5, 0.9):
        k = round(t * 63)
        roar = removal.removal_mask(maps, t, "roar")
        assert (roar.flatten(1).sum(1) == k).all()
        assert torch.equal(roar, ~removal.removal_mask(maps, (63 - k) / 63, "kar"))
        kth = maps.flatten(1).sort(1, descending=True).values[:, k - 1]
        assert (maps[roar].view(5, k) >= kth[:, None]).all()


def test_ties_are_deterministic_and_spread_out():
    flat = torch.zeros(2, 16, 16)
    a = removal.removal_mask(flat, 0.25, "roar")
    assert torch.equal(a, removal.removal_mask(flat, 0.25, "roar"))
    assert torch.equal(a[0], a[1])
    rows = a[0].sum(1).float()  # row-major tie-breaking would remove the top 4 rows only
    assert rows.max() <= 10 and (rows > 0).sum() >= 12
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1
    top = removal.removal_mask(mask, 20 / 64, "roar")
    assert top[0, 2:6, 2:6].all() and top.sum() == 20


def test_mean_and_noisy_linear_fills():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    maps = torch.rand(3, 8, 8, generator=gen)
    mean = torch.tensor([0.1, 0.2, 0.3])
    out = fxai.roar.alter(x, maps, fraction=0.4, mode="roar", fill="mean", mean=mean, batch_size=2)
    m = removal.removal_mask(maps, 0.4, "roar")
    assert torch.equal(out.permute(0, 2, 3, 1)[m], mean.expand(int(m.sum()), 3))
    assert torch.equal(out.permute(0, 2, 3, 1)[~m], x.permute(0, 2, 3, 1)[~m])
    noisy = fxai.roar.alter(x, maps, fraction=0.4, mode="roar", fill="noisy_linear", noise=0.01, key=3, batch_size=2)
    want = torch.cat([fxai.metrics.noisy_linear(0.01)(x[:2], m[None, :2], key=torch.Generator().manual_seed(3))[0],
                      fxai.metrics.noisy_linear(0.01)(x[2:], m[None, 2:], key=torch.Generator().manual_seed(4))[0]])
    assert torch.equal(noisy, want)
    assert torch.equal(noisy.permute(0, 2, 3, 1)[~m], x.permute(0, 2, 3, 1)[~m])
    with pytest.raises(ValueError, match="mean"):
        fxai.roar.alter(x, maps, fraction=0.4, mode="roar", fill="mean")
    with pytest.raises(ValueError, match="fill"):
        fxai.roar.alter(x, maps, fraction=0.4, mode="roar", fill="zero")
    with pytest.raises(ValueError, match="fraction"):
        fxai.roar.alter(x, maps, fraction=1.5, mode="roar", fill="mean", mean=mean)


def test_random_control_removes_what_it_says():
    n, h, w, t = 400, 16, 16, 0.3
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0)) + 1.0  # never equal to the fill
    maps = fxai.roar.random_map(x, key=0)
    out = fxai.roar.alter(x, maps, fraction=t, mode="roar", fill="mean", mean=torch.zeros(3))
    changed = (out != x).any(1)
    assert changed.float().mean().item() == round(t * h * w) / (h * w)
    per_pixel = changed.float().mean(0)  # each position goes with probability t: binomial(n, t) / n
    sigma = math.sqrt(t * (1 - t) / n)
    assert (per_pixel - t).abs().max() < 5 * sigma
    assert abs(per_pixel.mean() - t) < 0.01


def test_sobel_against_scipy_and_a_ramp():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = x.mean(1).numpy()
    gx = torch.stack([torch.from_numpy(ndimage.sobel(im, axis=1, mode="nearest")) for im in g])
    gy = torch.stack([torch.from_numpy(ndimage.sobel(im, axis=0, mode="nearest")) for im in g])
    torch.testing.assert_close(methods.sobel_map(x), (gx**2 + gy**2).sqrt(), rtol=1e-12, atol=1e-12)
    ramp = (0.25 * torch.arange(10.0)).expand(1, 3, 6, 10)
    assert torch.allclose(methods.sobel_map(ramp)[0, :, 1:-1], torch.full((6, 8), 2.0))


def test_random_map_is_keyed():
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(fxai.roar.random_map(x, key=1), fxai.roar.random_map(x, key=1))
    assert not torch.equal(fxai.roar.random_map(x, key=1), fxai.roar.random_map(x, key=2))
    with pytest.raises(TypeError, match="key"):
        fxai.roar.random_map(x, key=None)
