"""Plots: sign handling, percentile clipping, colour mapping, overlays, grids and curves written as real PNGs."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import fxai
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
    diverging = matplotlib.colormaps["coolwarm"]        # centred on 0 for signed maps
    assert np.allclose(rgb[1, 0], diverging(0.5)[:3])  # 0 stays at the centre of the diverging map
    assert np.allclose(rgb[1, 1], diverging(1.0)[:3]) and np.allclose(rgb[0, 0], diverging(0.25)[:3])
    inferno = matplotlib.colormaps["inferno"]          # perceptually uniform, dark at 0, for magnitudes
    assert np.allclose(viz.colorize(MAP, clip=100)[1, 1], inferno(1.0)[:3])
    assert np.allclose(viz.colorize(MAP, cmap="viridis", clip=100)[1, 1], matplotlib.colormaps["viridis"](1.0)[:3])


def test_overlay_blends_image_and_colours():
    image = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
    assert np.allclose(viz.overlay(image, MAP, alpha=0.0), image.permute(1, 2, 0).numpy())
    colours = viz.colorize(MAP, sign="positive")
    weight = viz.scale_map(MAP, sign="positive").numpy()[..., None]          # as much colour as the map is large
    full = viz.overlay(image, MAP, alpha=1.0)
    assert np.allclose(full, (1 - weight) * image.permute(1, 2, 0).numpy() + weight * colours)
    assert np.allclose(full[weight[..., 0] == 0], image.permute(1, 2, 0).numpy()[weight[..., 0] == 0])  # input visible
    assert np.allclose(full[weight[..., 0] == 1], colours[weight[..., 0] == 1])
    half = viz.overlay(image, MAP, alpha=0.5)
    assert np.allclose(half, (1 - 0.5 * weight) * image.permute(1, 2, 0).numpy() + 0.5 * weight * colours)
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
    assert len(fig.axes) == 3 * 4 + 2                  # two colour bars: inferno for "a", coolwarm for the signed "b"
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


def test_offset_map_is_shown_by_its_variation():
    """A RISE-like map (a large constant offset plus a small bump) is no uniform wash with origin="min"."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bump = torch.exp(-((yy - 8) ** 2 + (xx - 20) ** 2) / 20)
    rise_like = 0.00441 + 0.00046 * bump
    zero = viz.scale_map(rise_like, clip=100)
    assert zero.min() > 0.9                              # from 0: everything near the top of the scale
    varied = viz.scale_map(rise_like, clip=100, origin="min")
    torch.testing.assert_close(varied, (bump - bump.min()) / (bump.max() - bump.min()), rtol=0, atol=2e-4)
    assert viz.origin_for("cam", "mask") == "min" and viz.origin_for("pixel", "mask") == "zero"
    assert viz.origin_for("cam", "cam") == "zero"
    with pytest.raises(ValueError, match="origin must be one of"):
        viz.scale_map(rise_like, origin="mean")


def test_explanation_figure_has_a_colour_bar_in_the_maps_units(tmp_path):
    image = torch.full((3, 32, 32), 0.5)
    amap = torch.linspace(0, 2, 32).expand(32, 32).clone()             # 0 ... 2 from left to right
    fig = viz.explanation(image, amap, title="grad_cam · class 3 (p = 0.900)", sign="positive", clip=100)
    bar = fig.axes[-1]
    low, high = sorted(bar.get_ylim())
    assert (low, high) == pytest.approx((0.0, 2.0)) and "max(a, 0)" in bar.get_ylabel()
    assert fig._suptitle.get_text().startswith("grad_cam · class 3")
    fig = viz.explanation(image, 5 + amap, origin="min", clip=100)
    bar = fig.axes[-1]
    assert sorted(bar.get_ylim()) == pytest.approx([0.0, 2.0]) and "a − min(a)" in bar.get_ylabel()  # ticks = label
    pixels = _png(viz.save(fig, tmp_path / "e.png"))
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600          # panels of 300 px at 100 dpi
    inferno = matplotlib.colormaps["inferno"]
    right = np.asarray(inferno(1.0)[:3]) * 0.8 + 0.2 * 0.5              # the map's right edge blended over gray
    assert np.abs(pixels.reshape(-1, 3) / 255 - right).sum(1).min() < 0.02
    fig = viz.explanation(image, torch.zeros(32, 32))                  # a zero map: a 0..1 scale that says so
    bar = fig.axes[-1]
    assert sorted(bar.get_ylim()) == pytest.approx([0.0, 1.0]) and "the map is 0 everywhere" in bar.get_ylabel()


def test_grid_wraps_into_rows_of_large_cells(tmp_path):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = {f"m{k}": torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(k)) for k in range(13)}
    fig = viz.grid(images, maps, wrap=6, cell=2.4, colorbar=False)
    assert len(fig.axes) == 2 * 3 * 6                      # 14 panels per image in 3 rows of 6
    assert [ax.get_title() for ax in fig.axes[6:12]] == [f"m{k}" for k in range(5, 11)]
    pixels = _png(viz.save(fig, tmp_path / "g.png"))
    assert pixels.shape[1] >= 6 * 224 and pixels.shape[0] >= 6 * 224 and pixels.shape[1] < 2 * pixels.shape[0]


def test_curves_reference_and_distinct_styles():
    x = torch.linspace(0, 1, 5)
    data = {f"m{k}": (x, x * k / 30) for k in range(25)} | {"random": (x, 0.5 + 0 * x)}
    fig = viz.curves(data, reference="random")
    ax = fig.axes[0]
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.get_lines()[:25]}
    assert len(styles) == 25                                # no two methods look alike
    ref = ax.get_lines()[-1]
    assert ref.get_label() == "random" and ref.get_color() == "black" and ref.get_linestyle() == "--"
    legend = ax.get_legend()
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert box.x0 >= ax.get_window_extent().x1               # the legend sits beside the data, not on it


def test_explanation_outlines_the_features_of_a_per_feature_map(tmp_path):
    """A map constant on superpixels is drawn with their boundaries (``fxai.boundaries``) in white; nothing else
    changes."""
    feature_mask = fxai.grid_mask((32, 32), 4)
    amap = (feature_mask.float() + 1)[None].expand(3, -1, -1)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = viz.explanation(image, amap)
    edges = fxai.boundaries(feature_mask)
    assert torch.equal(edges, fxai.boundaries(amap[0]))          # the map's own changes are the features' edges
    lined = viz.explanation(image, amap, outline=edges)
    plain.canvas.draw()
    lined.canvas.draw()
    a, b = (np.asarray(f.canvas.buffer_rgba(), dtype=float) for f in (plain, lined))
    changed = np.abs(a - b).sum(-1) > 0
    assert changed.any() and not changed[:, : changed.shape[1] * 45 // 100].any()   # the input panel is untouched
    assert b[changed][:, :3].mean() > a[changed][:, :3].mean()                     # lines are lighter
