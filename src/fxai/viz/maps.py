"""Plots: heat maps over images, grids of maps, metric curves.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas
(no pyplot, no global backend change, no display needed); :func:`save` writes
them as PNG. Maps are shown after an explicit choice of sign and percentile
clipping (see :mod:`fxai.postprocess`), never silently min–max normalised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .. import postprocess
from .._core.checks import check_choice
from .._core.files import write_atomic
from .canvas import figure, image_rgb

SIGNS = ("positive", "negative", "absolute", "all")
ORIGINS = ("zero", "min")


def origin_for(kind: str, family: str) -> str:
    """Where a method's maps have their zero, for display: ``"min"`` for masked-input score maps, else ``"zero"``.

    CAM-kind maps of the mask family (RISE) average the model's score over random masks: every pixel
    carries the mean score as a large positive offset, and the map reads by its variation above its
    minimum. Gradient maps, CAMs and occlusion differences have a meaningful 0 and are shown from 0.

    Example:
        >>> fxai.viz.origin_for("cam", "mask"), fxai.viz.origin_for("pixel", "gradient")
        ('min', 'zero')
    """
    return "min" if kind == "cam" and family == "mask" else "zero"


def _heat(amap, reduce: str | None, sign: str) -> torch.Tensor:
    amap = torch.as_tensor(amap).detach().to("cpu", torch.float32)
    if amap.ndim not in (2, 3):
        raise ValueError(f"map must be [H, W] or [C, H, W], got shape {tuple(amap.shape)}")
    reduce = reduce or ("abs_sum" if sign == "absolute" else "sum")
    return postprocess.heatmap(amap[None], reduce=reduce, name="map")[0]


def _scaled(amap, sign: str, clip: float, reduce: str | None, origin: str) -> tuple[torch.Tensor, float, float]:
    """``(scaled map, low, high)``: the raw values that the ends of the colour scale stand for."""
    check_choice(sign, SIGNS, name="sign")
    check_choice(origin, ORIGINS, name="origin")
    if not isinstance(clip, (int, float)) or not 0 < clip <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100], got {clip!r}")
    heat = _heat(amap, reduce, sign)
    if sign == "absolute":
        heat = heat.abs()
    base = float(heat.min()) if origin == "min" else 0.0
    heat = heat - base
    shown = -heat if sign == "negative" else heat
    magnitude = shown.abs() if sign == "all" else postprocess.positive(shown)
    clipped = postprocess.clip_percentile(magnitude[None], 0.0, float(clip))[0]
    top = float(clipped.max())
    scaled = postprocess.normalize(clipped[None], "maxabs")[0]
    if sign == "all":
        return scaled * heat.sign(), base - top, base + top
    if sign == "negative":
        return scaled, base, base - top
    return scaled, base, base + top


def scale_map(amap, *, sign: str = "positive", clip: float = 99.0, reduce: str | None = None,
              origin: str = "zero") -> torch.Tensor:
    r"""A map ``[H, W]`` (or ``[C, H, W]``, reduced over channels) scaled for display.

    ``sign``: ``"positive"`` shows :math:`\max(a, 0)`, ``"negative"`` shows
    :math:`\max(-a, 0)`, ``"absolute"`` shows :math:`|a|` (all in [0, 1]);
    ``"all"`` keeps the sign, in [-1, 1] (for a diverging colormap, 0 stays 0).
    ``origin="min"`` first subtracts the map's minimum (of :math:`|a|` for
    ``"absolute"``): a map with a constant offset (see :func:`origin_for`) is
    shown by its variation. Values above the ``clip`` percentile of the shown
    magnitudes are clipped (``clip=100`` keeps the maximum), then divided by the
    largest one. ``reduce`` collapses channels (:func:`fxai.postprocess.reduce_channels`;
    default ``"abs_sum"`` for ``"absolute"``, else ``"sum"``).

    Example:
        >>> fxai.viz.scale_map(torch.tensor([[-2.0, 1.0], [0.0, 4.0]]), sign="all", clip=100)
        tensor([[-0.5000,  0.2500],
                [ 0.0000,  1.0000]])
        >>> fxai.viz.scale_map(torch.tensor([[5.0, 6.0], [7.0, 9.0]]), origin="min", clip=100)
        tensor([[0.0000, 0.2500],
                [0.5000, 1.0000]])
    """
    return _scaled(amap, sign, clip, reduce, origin)[0]


SEQUENTIAL = "inferno"    # perceptually uniform, dark at 0: |a| and positive parts
DIVERGING = "coolwarm"    # Moreland's diverging map, centred on 0: signed maps


def _cmap_name(cmap: str | None, sign: str) -> str:
    return cmap or (DIVERGING if sign == "all" else SEQUENTIAL)


def colorize(amap, *, sign: str = "positive", cmap: str | None = None, clip: float = 99.0,
             reduce: str | None = None, origin: str = "zero") -> np.ndarray:
    """A map as an RGB array ``[H, W, 3]`` in [0, 1] through a matplotlib colormap.

    ``cmap`` defaults to :data:`SEQUENTIAL` (``"inferno"``, perceptually uniform), or :data:`DIVERGING`
    (``"coolwarm"``, centred on 0) for ``sign="all"``. Other arguments as :func:`scale_map`.

    Example:
        >>> rgb = fxai.viz.colorize(cam[0], cmap="inferno")
    """
    import matplotlib

    scaled = scale_map(amap, sign=sign, clip=clip, reduce=reduce, origin=origin).numpy()
    values = (scaled + 1) / 2 if sign == "all" else scaled
    return matplotlib.colormaps[_cmap_name(cmap, sign)](values)[..., :3].astype(np.float32)


def overlay(image, amap, *, alpha: float = 0.8, sign: str = "positive", cmap: str | None = None,
            clip: float = 99.0, reduce: str | None = None, origin: str = "zero") -> np.ndarray:
    r"""The map blended over the image, as much as it is large: with :math:`s` the scaled map
    (:func:`scale_map`, in [0, 1], or [-1, 1] signed), :math:`w = \alpha\,|s|` and
    :math:`(1 - w)\,\mathrm{image} + w\,\mathrm{cmap}(s)`: where the map is 0 the input shows unchanged.

    Args:
        image: ``[C, H, W]`` (C = 1, 3 or 4; values in [0, 1], not normalised) or ``[H, W]``.
        amap: ``[H, W]`` or ``[C, H, W]`` map of the same spatial size (resize
            with :func:`fxai.postprocess.upsample` first if needed).
        alpha: weight of the colour map where the map is largest, in [0, 1].
        Others as :func:`colorize`.

    Returns:
        An RGB float array ``[H, W, 3]`` in [0, 1].

    Example:
        >>> rgb = fxai.viz.overlay(x[0], fxai.gradient(model_fn, params, x)[0], sign="absolute")
    """
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    rgb = image_rgb(image)
    colours = colorize(amap, sign=sign, cmap=cmap, clip=clip, reduce=reduce, origin=origin)
    if colours.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"map of size {colours.shape[:2]} does not match image of size {rgb.shape[:2]}; "
                         "resize it with fxai.postprocess.upsample(map, size)")
    weight = alpha * scale_map(amap, sign=sign, clip=clip, reduce=reduce, origin=origin).abs().numpy()[..., None]
    return ((1 - weight) * rgb + weight * colours).astype(np.float32)


def _colorbar(fig, axes, cmap: str, low: float, high: float, label: str):
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if low == high:                                  # a constant map: a scale of one unit, said in the label
        label += f"\nthe map is {'0' if low == 0 else f'{low:.3g}'} everywhere"
        high = low + (1.0 if low >= 0 else -1.0)
    mappable = ScalarMappable(Normalize(min(low, high), max(low, high)), matplotlib.colormaps[cmap])
    if high < low:                                   # "negative": the top of the scale is the most negative value
        mappable = ScalarMappable(Normalize(high, low), matplotlib.colormaps[cmap].reversed())
    height = fig.get_figheight()
    bar = fig.colorbar(mappable, ax=axes, shrink=min(0.8, 3.2 / height), aspect=18, pad=0.02,
                       fraction=0.04 * min(1.0, 8.0 / fig.get_figwidth()))
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


_SIGN_LABEL = {"positive": "max(a, 0)", "negative": "max(-a, 0)", "absolute": "|a|", "all": "a"}


def explanation(image, amap, *, title: str | None = None, sign: str = "positive", origin: str = "zero",
                alpha: float = 0.8, cmap: str | None = None, clip: float = 99.0, reduce: str | None = None,
                cell: float = 3.0, outline=None):
    """A figure of one explanation: the input, the map over it, and a colour bar in the map's own units.

    The colour bar runs from the map's origin (0, or its minimum for ``origin="min"``) to the ``clip``
    percentile of what is shown; its label states the sign shown. ``cell`` is one panel's size in inches
    (at 100 dpi). ``outline``: a bool mask ``[H, W]`` drawn in white over the map (superpixel boundaries,
    :func:`fxai.boundaries`). Other arguments as :func:`overlay`.

    Example:
        >>> fig = fxai.viz.explanation(x[0], fxai.grad_cam(model_fn, params, x, 3, layer="layer4")[0], title="Grad-CAM")
    """
    scaled, low, high = _scaled(amap, sign, clip, reduce, origin)
    rgb = overlay(image, amap, alpha=alpha, sign=sign, cmap=cmap, clip=clip, reduce=reduce, origin=origin)
    if outline is not None:
        edge = torch.as_tensor(outline, dtype=torch.bool).cpu().numpy()[..., None]
        rgb = np.where(edge, 0.35 * rgb + 0.65, rgb)
    fig = figure(2 * cell + 1.0, cell + (0.45 * (title.count("\n") + 1) if title else 0.1))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, panel, name in zip(axes, (image_rgb(image), rgb), ("input", "map")):
        ax.imshow(panel, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    shown = _SIGN_LABEL[sign]
    if origin == "min":                              # ticks in the label's units: the variation above the minimum
        shown = "|a| − min(|a|)" if sign == "absolute" else "a − min(a)"
        low, high = 0.0, high - low
    _colorbar(fig, axes[1], _cmap_name(cmap, sign), low, high, f"{shown} (clipped at the {clip:g}th percentile)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def grid(images, maps: Mapping[str, object] | None = None, *, masks=None, row_titles: Sequence[str] | None = None,
         alpha: float = 0.8, sign: str | Mapping[str, str] = "positive", origin: str | Mapping[str, str] = "zero",
         cmap: str | None = None, clip: float = 99.0, cell: float = 1.6, title: str | None = None,
         transpose: bool = False, wrap: int | None = None, colorbar: bool = True):
    """A grid figure: one row per image; columns are the image, its mask (if given) and each named map over it.

    Each map is scaled on its own (:func:`scale_map`), so the colour bar reads as a share of each map's
    ``clip`` percentile value.

    Args:
        images: ``[B, C, H, W]`` in [0, 1], or a list of ``[C, H, W]`` images (of any sizes).
        maps: ``{column title: maps [B, H, W] or [B, C, H, W]}`` in column order, or per column a list of
            one map per image (``None`` leaves that cell empty).
        masks: optional ``[B, H, W]`` ground truth, shown as a column.
        row_titles: one label per image.
        sign: one sign for every column, or ``{column title: sign}`` (default ``"positive"``).
        origin: ``"zero"`` or ``"min"`` (see :func:`scale_map`), for every column or ``{column title: origin}``.
        transpose: one column per image and one row per map instead (for many maps).
        wrap: at most this many panels in a row; an image's panels continue on the next rows.
        colorbar: add the colour scale.
        Others as :func:`overlay`; ``cell`` is the size of one panel in inches (100 dpi).

    Returns:
        A ``matplotlib.figure.Figure`` (save it with :func:`save`).

    Example:
        >>> fig = fxai.viz.grid(x, {"gradient": g, "IG": ig}, sign="absolute")
        >>> fxai.viz.save(fig, "grid.png")
        'grid.png'
    """
    if isinstance(images, torch.Tensor) and images.ndim != 4:
        raise ValueError(f"images must be a batch [B, C, H, W] or a list of [C, H, W], got shape {tuple(images.shape)}")
    if wrap is not None and (not isinstance(wrap, int) or wrap < 1):
        raise ValueError(f"wrap must be a positive int or None, got {wrap!r}")
    count = len(images)
    maps = dict(maps or {})
    for name, m in maps.items():
        if len(m) != count:
            raise ValueError(f"maps[{name!r}] has {len(m)} rows for {count} images")
    if row_titles is not None and len(row_titles) != count:
        raise ValueError(f"row_titles has {len(row_titles)} labels for {count} images")
    signs = {n: sign.get(n, "positive") if isinstance(sign, Mapping) else sign for n in maps}
    origins = {n: origin.get(n, "zero") if isinstance(origin, Mapping) else origin for n in maps}
    kinds = ["input"] + (["ground truth"] if masks is not None else []) + list(maps)
    per_row = len(kinds) if transpose or wrap is None else min(wrap, len(kinds))
    bands = -(-len(kinds) // per_row)                 # rows of panels per image
    rows, cols = (len(kinds), count) if transpose else (count * bands, per_row)
    head = 0.22 * (title.count("\n") + 1) + 0.1 if title else 0.0
    fig = figure(max(cell * cols + (1.4 if colorbar else 0.3), 3.0 if title else 0.0), cell * rows + 0.2 + head)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for i in range(count):
        panels = [image_rgb(images[i])]
        if masks is not None:
            mask = torch.as_tensor(masks[i]).float().cpu().numpy()[..., None]
            panels.append(image_rgb(images[i]) * (0.25 + 0.75 * mask))     # outside the object: darkened
        for name, m in maps.items():
            panels.append(None if m[i] is None else overlay(images[i], torch.as_tensor(m[i]), alpha=alpha,
                                                            sign=signs[name], cmap=cmap, clip=clip,
                                                            origin=origins[name]))
        for k, panel in enumerate(panels):
            ax = axes[k][i] if transpose else axes[i * bands + k // per_row][k % per_row]
            ax.set_frame_on(True)
            if panel is not None:
                ax.imshow(panel, interpolation="nearest")
            if transpose:
                if k == 0 and row_titles is not None:
                    ax.set_title(row_titles[i], fontsize=8)
                if i == 0:
                    ax.set_ylabel(kinds[k], fontsize=8)
            else:
                if i == 0 or bands > 1:
                    ax.set_title(kinds[k], fontsize=8)
                if k % per_row == 0 and row_titles is not None:
                    ax.set_ylabel(row_titles[i], fontsize=8)
    if colorbar and maps:
        for name in dict.fromkeys(_cmap_name(cmap, signs[n]) for n in maps):
            diverging = any(signs[n] == "all" and _cmap_name(cmap, "all") == name for n in maps)
            _colorbar(fig, axes, name, -1.0 if diverging else 0.0, 1.0,
                      f"share of each map's {clip:g}th-percentile value" + (" (signed)" if diverging else ""))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


_STYLES = ("-", "--", ":", "-.")


def curves(data: Mapping[str, tuple], *, title: str | None = None, xlabel: str = "fraction of pixels",
           ylabel: str = "score", ax_titles: Sequence[str] | None = None, reference: str | None = None,
           highlight: int | None = None):
    """Line plots of metric curves: ``{label: (x [T], y [T])}``, or a list of such dicts for side-by-side panels.

    Lines keep the dicts' order (pass them ordered by score) and no two share both colour and line style
    (10 colours × 4 styles); ``reference`` names a line drawn thick, black and dashed (e.g. a random map). The
    legend sits beside each plot, off the data. ``highlight``: only the first ``highlight`` lines of each panel
    in colour (the best, when ordered by score), the others thin and gray under one legend entry (readable
    with 20 and more methods).

    Example:
        >>> fractions = torch.linspace(0, 1, 11)
        >>> fig = fxai.viz.curves({"gradient": (fractions, 1 - fractions), "random": (fractions, 0.5 + 0 * fractions)},
        ...                       title="deletion", reference="random")
    """
    import matplotlib

    panels = [data] if isinstance(data, Mapping) else list(data)
    colours = matplotlib.colormaps["tab10"].colors
    longest = max((len(p) for p in panels), default=0)
    if highlight is not None and (isinstance(highlight, bool) or not isinstance(highlight, int) or highlight < 0):
        raise ValueError(f"highlight must be a non-negative int or None, got {highlight!r}")
    if highlight is not None:
        longest = min(longest, highlight + 2)
    fig = figure((4.2 + (2.8 if longest else 0)) * len(panels), max(3.4, 0.17 * longest + 1.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        k = 0
        others = [name for name in panel if name != reference][highlight:] if highlight is not None else []
        for label, (x, y) in panel.items():
            xs, ys = np.asarray(torch.as_tensor(x).cpu()), np.asarray(torch.as_tensor(y).detach().cpu())
            if label == reference:
                ax.plot(xs, ys, label=label, color="black", linestyle="--", linewidth=2.4, zorder=3)
                continue
            if label in others:
                ax.plot(xs, ys, color="0.7", linewidth=0.8, zorder=1,
                        label=f"{len(others)} other methods" if label == others[0] else None)
                continue
            ax.plot(xs, ys, label=label, color=colours[k % 10], linestyle=_STYLES[(k // 10) % 4], linewidth=1.6,
                    zorder=2)
            k += 1
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax_titles is not None:
            ax.set_title(ax_titles[i], fontsize=10)
        if panel:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save(fig, path) -> str:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created; written whole or not at all)."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def save_rgb(rgb: np.ndarray, path) -> str:
    """Write an RGB float array ``[H, W, 3]`` in [0, 1] (as from :func:`overlay`) as an 8-bit PNG."""
    from PIL import Image

    image = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
