import math

import pytest
import torch

import fxai

from fxai import metrics as M


def test_pointing_game_with_tolerance():
    amap = torch.zeros(3, 20, 20)
    amap[:, 10, 10] = 1.0
    mask = torch.zeros(3, 20, 20, dtype=torch.bool)
    mask[0, 9:12, 9:12] = True      # contains the maximum
    mask[1, 10, 14] = True          # 4 px away
    mask[2, 13, 14] = True          # 5 px away
    assert M.pointing_game(amap, mask, tolerance=0).tolist() == [1.0, 0.0, 0.0]
    assert M.pointing_game(amap, mask, tolerance=4).tolist() == [1.0, 1.0, 0.0]
    assert M.pointing_game(amap, mask, tolerance=5).tolist() == [1.0, 1.0, 1.0]
    # a pixel map is reduced over channels
    assert M.pointing_game(torch.stack([amap, amap], 1), mask, tolerance=0).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="mask"):
        M.pointing_game(amap, mask[:, :5])


def test_relevance_mass_and_rank():
    amap = torch.tensor([[[4.0, 3.0], [-2.0, 1.0]], [[0.0, 0.0], [0.0, -1.0]]])
    mask = torch.tensor([[[True, False], [True, False]], [[True, False], [False, False]]])
    # positive relevance 8, inside 4 -> 0.5; no positive relevance -> 0
    torch.testing.assert_close(M.relevance_mass(amap, mask), torch.tensor([0.5, 0.0]))
    # K = 2: top-2 pixels are (0,0), (0,1): one inside -> 0.5; K = 1: top-1 is (0,0) (first of the tied zeros) -> 1
    torch.testing.assert_close(M.relevance_rank(amap, mask), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(M.relevance_rank(amap, torch.zeros_like(mask)), torch.tensor([0.0, 0.0]))


def test_sparseness_and_complexity_closed_forms():
    one_hot = torch.tensor([[0.0, 0.0, 0.0, -2.0]])
    uniform = torch.full((1, 2, 2), -0.5)
    torch.testing.assert_close(M.sparseness(one_hot), torch.tensor([0.75]))
    torch.testing.assert_close(M.sparseness(uniform), torch.tensor([0.0]))
    torch.testing.assert_close(M.complexity(one_hot), torch.tensor([0.0]))
    assert not torch.signbit(M.complexity(one_hot)).any()  # 0, not -0
    torch.testing.assert_close(M.complexity(uniform), torch.tensor([math.log(4)]))
    a = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    # Gini by its definition as a mean absolute difference: sum_ij |a_i - a_j| / (2 n sum_i a_i)
    f = a.flatten(1).abs()
    gini = (f[:, :, None] - f[:, None, :]).abs().sum((1, 2)) / (2 * f.shape[1] * f.sum(1))
    torch.testing.assert_close(M.sparseness(a), gini, rtol=1e-12, atol=1e-12)
    p = f / f.sum(1, keepdim=True)
    torch.testing.assert_close(M.complexity(a), -(p * p.log()).sum(1), rtol=1e-12, atol=1e-12)
    assert torch.equal(M.sparseness(torch.zeros(2, 4)), torch.zeros(2))


def test_coherence_grid_writes_a_png(tmp_path):
    # The coherence figure is fxai.viz.grid: one row per image, one column per method (pixel and CAM maps).
    from PIL import Image

    x = torch.rand(2, 3, 16, 16)
    fig = fxai.viz.grid(x, {"a": torch.randn(2, 3, 16, 16), "b": torch.randn(2, 16, 16)}, sign="all", cmap="bwr",
                        cell=1.0)
    path = fxai.viz.save(fig, tmp_path / "c.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (440, 220)  # 3 columns of 1-inch cells + 1.4 in of colour bar
    with pytest.raises(ValueError, match=r"maps\['a'\] has 3 rows for 2 images"):
        fxai.viz.grid(x, {"a": torch.randn(3, 16, 16)})
