"""Plots: sign handling, percentile clipping, colour mapping, overlays, grids and curves written as real PNGs."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from fxai import viz

MAP = torch.tensor([[-2.0, 1.0], [0.0, 4.0]])


@pytest.mark.parametrize("sign, expected", [
    ("all", [[-0.5, 0.25], [0.0, 1.0]]),
    ("positive", [[0.0, 0.25], [0.0, 1.0]]),
    ("negative", [[1.0, 0.0], [0.0, 0.0]]),
    ("absolute", [[0.5, 0.25], [0.0, 1.0]]),
])
def test_scale_map_signs(sign, expected):
    assert torch.equal(viz.scale_map(MAP, sign=sign, clip=100), torch.tensor(expected))


def test_scale_map_percentile_clipping_and_channels():
    heat = torch.arange(100.0).view(10, 10)
    heat[3, 3] = 1e6                                    # one outlier
    scaled = viz.scale_map(heat, clip=99)
    q = torch.quantile(heat.flatten(), 0.99)
    assert scaled[3, 3] == 1 and torch.allclose(scaled[0, 1], 1 / q)
    three = torch.stack([MAP, MAP, -MAP])               # channel sum = MAP, abs-sum = 3|MAP|
    assert torch.equal(viz.scale_map(three, sign="all", clip=100), viz.scale_map(MAP, sign="all", clip=100))
    assert torch.equal(viz.scale_map(three, sign="absolute", clip=100), viz.scale_map(MAP, sign="absolute", clip=100))
    assert torch.equal(viz.scale_map(torch.zeros(4, 4)), torch.zeros(4, 4))


def test_colorize_uses_the_colormap():
    rgb = viz.colorize(MAP, sign="all", clip=100)
    bwr = matplotlib.colormaps["bwr"]
    assert np.allclose(rgb[1, 0], bwr(0.5)[:3])        # 0 stays at the centre of the diverging map
    assert np.allclose(rgb[1, 1], bwr(1.0)[:3]) and np.allclose(rgb[0, 0], bwr(0.25)[:3])
    assert np.allclose(viz.colorize(MAP, cmap="viridis", clip=100)[1, 1], matplotlib.colormaps["viridis"](1.0)[:3])


def test_overlay_blends_image_and_colours():
    image = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
    assert np.allclose(viz.overlay(image, MAP, alpha=0.0), image.permute(1, 2, 0).numpy())
    colours = viz.colorize(MAP, sign="positive")
    assert np.allclose(viz.overlay(image, MAP, alpha=1.0), colours)
    half = viz.overlay(image, MAP, alpha=0.5)
    assert np.allclose(half, 0.5 * image.permute(1, 2, 0).numpy() + 0.5 * colours)
    gray = viz.overlay(image[:1], MAP, alpha=0.0)      # one channel shown as gray
    assert np.allclose(gray[..., 0], gray[..., 2]) and np.allclose(gray[..., 0], image[0].numpy())


def test_bad_arguments():
    with pytest.raises(ValueError, match="sign must be one of"):
        viz.scale_map(MAP, sign="up")
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(torch.rand(3, 2, 2), MAP, alpha=2)
    with pytest.raises(ValueError, match="does not match image"):
        viz.overlay(torch.rand(3, 4, 4), MAP)
    with pytest.raises(ValueError, match="clip"):
        viz.scale_map(MAP, clip=0)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_grid_and_curves_write_pngs(tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=gen)
    maps = {"a": torch.randn(3, 16, 16, generator=gen), "b": torch.randn(3, 3, 16, 16, generator=gen)}
    masks = torch.rand(3, 16, 16, generator=gen) > 0.7
    fig = viz.grid(images, maps, masks=masks, row_titles=["x", "y", "z"], sign={"b": "all"}, title="t")
    assert len(fig.axes) == 3 * 4 + 2                  # two colour bars: jet for "a", bwr for the signed "b"
    assert [ax.get_title() for ax in fig.axes[:4]] == ["input", "ground truth", "a", "b"]
    pixels = _png(viz.save(fig, tmp_path / "sub" / "grid.png"))
    assert pixels.shape[0] > 100 and pixels.std() > 10
    x = torch.linspace(0, 1, 5)
    fig = viz.curves([{"m": (x, x ** 2)}, {"m": (x, 1 - x)}], ax_titles=["deletion", "insertion"])
    pixels = _png(viz.save(fig, tmp_path / "curves.png"))
    assert pixels.std() > 10
    rgb = viz.overlay(images[0], maps["a"][0])
    saved = _png(viz.save_rgb(rgb, tmp_path / "o.png"))
    assert saved.shape == (16, 16, 3) and np.abs(saved / 255 - rgb).max() <= 0.5 / 255 + 1e-6
    fig = viz.grid(images, maps, masks=masks, row_titles=["x", "y", "z"], transpose=True, colorbar=False)
    assert len(fig.axes) == 4 * 3 and [ax.get_title() for ax in fig.axes[:3]] == ["x", "y", "z"]
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["input", "ground truth", "a", "b"]
    with pytest.raises(ValueError, match="rows"):
        viz.grid(images, {"a": maps["a"][:2]})
