"""XRAI against PAIR's ``saliency`` 0.2 (test-only oracle): the same segments, the same regions given the same IG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_cnn

import fxai
from fxai.attribution.xrai import xrai_regions, xrai_segments

saliency_core = pytest.importorskip("saliency.core")
pair_xrai = pytest.importorskip("saliency.core.xrai")

IMAGE = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def segments():
    return xrai_segments(IMAGE)


def test_segments_are_pairs(segments):
    ref = pair_xrai._get_segments_felzenszwalb(IMAGE.permute(1, 2, 0).numpy())
    assert len(ref) == segments.shape[0] > 20
    for ours, theirs in zip(segments, ref):
        assert np.array_equal(ours.numpy(), theirs)


def test_segments_at_the_image_size_are_pairs_without_resizing():
    ours = xrai_segments(IMAGE, segment_size=None, dilation_radius=2)
    ref = pair_xrai._get_segments_felzenszwalb(IMAGE.permute(1, 2, 0).numpy(), resize_image=False, dilation_rad=2)
    assert len(ref) == ours.shape[0]
    assert all(np.array_equal(o.numpy(), r) for o, r in zip(ours, ref))


@pytest.mark.parametrize("algorithm", ["full", "fast"])
@pytest.mark.parametrize("seed", [0, 1])
def test_regions_equal_pairs_given_the_same_attribution(segments, algorithm, seed):
    attr = torch.randn(40, 48, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    params = saliency_core.XRAIParameters(algorithm=algorithm, return_xrai_segments=True)
    ref = saliency_core.XRAI().GetMaskWithDetails(IMAGE.permute(1, 2, 0).numpy(), None, base_attribution=attr.numpy(),
                                                  segments=list(segments.numpy()), extra_parameters=params)
    per_pixel, ranks = xrai_regions(attr.amax(-1), segments, algorithm=algorithm)
    np.testing.assert_allclose(per_pixel.numpy(), ref.attribution_mask, rtol=0, atol=1e-12)
    assert np.array_equal(ranks.numpy(), ref.segments)
    assert ranks.max() > 10


def test_area_threshold_and_min_pixel_diff_as_pair(segments):
    attr = torch.randn(40, 48, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = saliency_core.XRAIParameters(area_threshold=0.3, return_xrai_segments=True)
    params.experimental_params["min_pixel_diff"] = 120
    ref = saliency_core.XRAI().GetMaskWithDetails(IMAGE.permute(1, 2, 0).numpy(), None, base_attribution=attr.numpy(),
                                                  segments=list(segments.numpy()), extra_parameters=params)
    per_pixel, ranks = xrai_regions(attr.amax(-1), segments, area_threshold=0.3, min_pixel_diff=120)
    assert (ranks == ranks.max()).float().mean() > 0.3  # the uncovered rest is one region
    np.testing.assert_allclose(per_pixel.numpy(), ref.attribution_mask, rtol=0, atol=1e-12)
    assert np.array_equal(ranks.numpy(), ref.segments)


def test_regions_keep_the_sum_and_rank_by_density(segments):
    attr = torch.randn(40, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    per_pixel, ranks = xrai_regions(attr, segments)
    torch.testing.assert_close(per_pixel.sum(), attr.sum())
    density = [float(per_pixel[ranks == r][0]) for r in range(1, int(ranks.max()) + 1)]
    assert density[:-1] == sorted(density[:-1], reverse=True)  # the uncovered rest comes last, whatever its value


def test_xrai_equals_pair_given_our_ig(segments):
    # The whole method: IG from the image's min and max (PAIR's black and white), mean, channel max, regions.
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = IMAGE[None]
    ours, ranks = fxai.xrai(model_fn, params, x, 2, steps=8, return_ranks=True)
    ig = sum(fxai.integrated_gradients(model_fn, params, x, 2, baseline=float(b), steps=8)
             for b in (x.min(), x.max())) / 2
    params_ = saliency_core.XRAIParameters(return_xrai_segments=True)
    ref = saliency_core.XRAI().GetMaskWithDetails(x[0].permute(1, 2, 0).numpy(), None,
                                                  base_attribution=ig[0].permute(1, 2, 0).numpy(),
                                                  segments=list(segments.numpy()), extra_parameters=params_)
    np.testing.assert_allclose(ours[0].numpy(), ref.attribution_mask, rtol=0, atol=1e-12)
    assert np.array_equal(ranks[0].numpy(), ref.segments)


def test_xrai_options_are_checked():
    model_fn, params = fxai.functional(make_tiny_cnn())
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="min_pixel_diff"):
        fxai.xrai(model_fn, params, x, 1, steps=2, segment_size=None, min_pixel_diff=0)
    with pytest.raises(ValueError, match="algorithm"):
        fxai.xrai(model_fn, params, x, 1, steps=2, segment_size=None, algorithm="greedy")
    with pytest.raises(ValueError, match="baselines"):
        fxai.xrai(model_fn, params, x, 1, steps=2, baselines=[])
    with pytest.raises(ValueError, match="xrai_regions"):
        xrai_regions(torch.rand(16, 16), torch.ones(3, 8, 8, dtype=torch.bool))


def test_pair_baselines_are_the_images_extremes_not_black_and_white():
    # The paper's XRAI integrates from a black and a white image; PAIR (and fxai's default) from the image's
    # own minimum and maximum, which are black and white only for images that reach 0 and 1.
    model_fn, params = fxai.functional(make_tiny_cnn().double())
    x = 0.1 + 0.8 * torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    opts = dict(steps=8, segment_size=(64, 64), min_pixel_diff=4, dilation_radius=1)
    paper = fxai.xrai(model_fn, params, x, 1, baselines=[0.0, 1.0], **opts)
    ig = sum(fxai.integrated_gradients(model_fn, params, x, 1, baseline=b, steps=8) for b in (0.0, 1.0)) / 2
    expected, ranks = xrai_regions(ig[0].amax(0), xrai_segments(x[0], segment_size=(64, 64), dilation_radius=1),
                                   min_pixel_diff=4)
    assert ranks.max() > 5
    torch.testing.assert_close(paper[0], expected)
    default = fxai.xrai(model_fn, params, x, 1, **opts)
    extremes = fxai.xrai(model_fn, params, x, 1, baselines=[float(x.min()), float(x.max())], **opts)
    torch.testing.assert_close(default, extremes)
    assert (default - paper).abs().max() > 0.05 * paper.abs().max()
