"""Explicit post-processing: channel reductions, per-map normalisation, percentile clipping, upsampling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fxai import postprocess as pp

A = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]], [[2.0, 2.0]]]])  # [1, 3, 1, 2]


@pytest.mark.parametrize("how, expected", [
    ("sum", [[0.0, 0.5]]),
    ("mean", [[0.0, 0.5 / 3]]),
    ("abs_sum", [[6.0, 4.5]]),
    ("abs_max", [[3.0, 2.0]]),
    ("l2", [[14 ** 0.5, 8.25 ** 0.5]]),
    ("max", [[2.0, 2.0]]),
])
def test_reduce_channels(how, expected):
    torch.testing.assert_close(pp.reduce_channels(A, how), torch.tensor([expected]))


def test_reduce_channels_k_maps_and_errors():
    maps = torch.randn(2, 4, 3, 5, 6)  # [B, K, C, H, W]
    torch.testing.assert_close(pp.reduce_channels(maps, "abs_max"), maps.abs().amax(2))
    with pytest.raises(ValueError, match="how must be one of"):
        pp.reduce_channels(maps, "median")


def test_normalize_minmax_per_map():
    maps = torch.stack([torch.linspace(-1, 3, 6).view(2, 3), torch.full((2, 3), 7.0)])
    out = pp.normalize(maps, "minmax")
    torch.testing.assert_close(out[0], torch.linspace(0, 1, 6).view(2, 3))
    torch.testing.assert_close(out[1], torch.zeros(2, 3))  # a constant map becomes zeros


def test_normalize_maxabs_and_sum():
    m = torch.tensor([[[-4.0, 2.0], [1.0, 0.0]]])
    torch.testing.assert_close(pp.normalize(m, "maxabs"), m / 4)
    torch.testing.assert_close(pp.normalize(m, "sum"), m / 7)
    torch.testing.assert_close(pp.normalize(torch.zeros(1, 2, 2), "maxabs"), torch.zeros(1, 2, 2))


def test_normalize_batch_dims():
    maps = torch.randn(2, 3, 4, 4)  # [B, K, H, W]
    out = pp.normalize(maps, "minmax", batch_dims=2)
    torch.testing.assert_close(out.flatten(2).amin(-1), torch.zeros(2, 3))
    torch.testing.assert_close(out.flatten(2).amax(-1), torch.ones(2, 3))
    whole = pp.normalize(maps, "minmax", batch_dims=1)
    assert not torch.allclose(out, whole)
    with pytest.raises(ValueError, match="mode must be one of"):
        pp.normalize(maps, "zscore")


def test_normalize_is_differentiable():
    m = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: pp.normalize(m, "maxabs"), (m,))


def test_clip_percentile_matches_numpy():
    maps = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = pp.clip_percentile(maps, 5, 95)
    for m, o in zip(maps.numpy(), out):
        lo, hi = np.percentile(m, [5, 95])
        torch.testing.assert_close(o, torch.from_numpy(np.clip(m, lo, hi)).float())
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        pp.clip_percentile(maps, 50, 10)


def test_positive():
    torch.testing.assert_close(pp.positive(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0.0, 0.0, 2.0]))


def test_upsample_keeps_leading_axes():
    maps = torch.randn(2, 3, 4, 5)
    out = pp.upsample(maps, (8, 10))
    assert out.shape == (2, 3, 8, 10)
    torch.testing.assert_close(out[1, 2], F.interpolate(maps[1, 2][None, None], size=(8, 10), mode="bilinear",
                                                        align_corners=False)[0, 0])
    torch.testing.assert_close(pp.upsample(maps, (4, 5)), maps)
    nearest = pp.upsample(maps, (8, 10), mode="nearest")
    torch.testing.assert_close(nearest[..., ::2, ::2], maps)


def test_inputs_not_mutated():
    maps = torch.randn(2, 3, 4, 4)
    copy = maps.clone()
    for fn in (lambda m: pp.normalize(m), lambda m: pp.clip_percentile(m, 1, 99), pp.positive,
               lambda m: pp.reduce_channels(m, "abs_sum")):
        fn(maps)
    torch.testing.assert_close(maps, copy, rtol=0, atol=0)
