"""Feature masks: grids, superpixels, how a mask is read, boundaries."""

from __future__ import annotations

import sys

import pytest
import torch

import fxai
from fxai.attribution import features


def test_grid_mask_cells_and_errors():
    g = fxai.grid_mask((5, 7), (2, 3))
    assert g.tolist()[0] == [0, 0, 0, 1, 1, 2, 2] and g.tolist()[4] == [3, 3, 3, 4, 4, 5, 5]
    assert torch.equal(torch.bincount(fxai.grid_mask((16, 16), 4).flatten()), torch.full((16,), 16))
    with pytest.raises(ValueError, match="cells"):
        fxai.grid_mask((4, 4), 5)


def test_feature_groups_reading():
    x = torch.zeros(2, 3, 4, 4)
    per_image = torch.stack([torch.full((4, 4), 7), fxai.grid_mask((4, 4), 2) * 10 + 3])
    groups, present = features.feature_groups(per_image, x)            # [B, H, W]: ids relabelled per image
    assert groups.shape == (2, 1, 4, 4) and present.tolist() == [[True, False, False, False], [True] * 4]
    assert groups[1, 0].tolist() == fxai.grid_mask((4, 4), 2).tolist() and groups[0].max() == 0
    channels = torch.arange(3).view(1, 3, 1, 1).expand(1, 3, 4, 4)    # features per channel
    assert features.feature_groups(channels, x)[0].shape == (2, 3, 4, 4)
    assert features.feature_groups("grid:2x1", x)[0][0, 0, :, 0].tolist() == [0, 0, 1, 1]
    with pytest.raises(TypeError, match="integer"):
        features.feature_groups(torch.zeros(4, 4), x)
    with pytest.raises(ValueError, match="broadcast"):
        features.feature_groups(torch.zeros(5, 4, dtype=torch.long), x)
    with pytest.raises(ValueError, match="feature_mask 'blobs:3'"):
        features.feature_groups("blobs:3", x)
    with pytest.raises(ValueError, match="number after"):
        features.feature_groups("slic:many", x)


@pytest.mark.parametrize("method, options", [("slic", {"n_segments": 9}), ("quickshift", {"max_dist": 10}),
                                             ("felzenszwalb", {"scale": 50})])
def test_superpixels(method, options):
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(2, 3, 3, 3, generator=gen)          # a 3×3 patchwork of colours, a little noise
    x = colours.repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.03 * torch.rand(2, 3, 24, 24, generator=gen)
    seg = fxai.superpixels(x, method, **options)
    assert seg.shape == (2, 24, 24) and seg.dtype == torch.long and int(seg.min()) == 0
    assert all(len(torch.unique(s)) > 1 for s in seg)
    for b in range(2):  # per image: the same as segmenting that image alone
        assert torch.equal(fxai.superpixels(x[b:b + 1], method, **options)[0], seg[b])


def test_superpixels_without_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match=r"fxai\[superpixels\]"):
        fxai.superpixels(torch.rand(1, 3, 8, 8))


def test_boundaries():
    edge = features.boundaries(torch.stack([fxai.grid_mask((4, 6), (2, 3)), torch.zeros(4, 6, dtype=torch.long)]))
    assert edge[0].int().tolist()[0] == [0, 1, 0, 1, 0, 0] and edge[0, 1].all() and not edge[1].any()
