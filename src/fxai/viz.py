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

from . import postprocess
from ._core.checks import check_choice

SIGNS = ("positive", "negative", "absolute", "all")


def _image_rgb(image) -> np.ndarray:
    """``[C, H, W]`` (C = 1, 3 or 4) or ``[H, W]`` tensor/array in [0, 1] -> float array ``[H, W, 3]``."""
    img = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3, 4):
        raise ValueError(f"image must be [C, H, W] with C in (1, 3, 4) or [H, W], got shape {tuple(img.shape)}")
    img = img[:3] if img.shape[0] == 4 else img.expand(3, -1, -1)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def _heat(amap, reduce: str | None, sign: str) -> torch.Tensor:
    amap = torch.as_tensor(amap).detach().to("cpu", torch.float32)
    if amap.ndim not in (2, 3):
        raise ValueError(f"map must be [H, W] or [C, H, W], got shape {tuple(amap.shape)}")
    reduce = reduce or ("abs_sum" if sign == "absolute" else "sum")
    return postprocess.heatmap(amap[None], reduce=reduce, name="map")[0]


def scale_map(amap, *, sign: str = "positive", clip: float = 99.0, reduce: str | None = None) -> torch.Tensor:
    r"""A map ``[H, W]`` (or ``[C, H, W]``, reduced over channels) scaled for display.

    ``sign``: ``"positive"`` shows :math:`\max(a, 0)`, ``"negative"`` shows
    :math:`\max(-a, 0)`, ``"absolute"`` shows :math:`|a|` (all in [0, 1]);
    ``"all"`` keeps the sign, in [-1, 1] (for a diverging colormap, 0 stays 0).
    Values above the ``clip`` percentile of the shown magnitudes are clipped
    (``clip=100`` keeps the maximum), then divided by the largest one.
    ``reduce`` collapses channels (:func:`fxai.postprocess.reduce_channels`;
    default ``"abs_sum"`` for ``"absolute"``, else ``"sum"``).

    Example:
        >>> fxai.viz.scale_map(torch.tensor([[-2.0, 1.0], [0.0, 4.0]]), sign="all", clip=100)
        tensor([[-0.5000,  0.2500],
                [ 0.0000,  1.0000]])
    """
    check_choice(sign, SIGNS, name="sign")
    if not isinstance(clip, (int, float)) or not 0 < clip <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100], got {clip!r}")
    heat = _heat(amap, reduce, sign)
    shown = {"positive": heat, "negative": -heat, "absolute": heat.abs(), "all": heat}[sign]
    magnitude = shown.abs() if sign == "all" else postprocess.positive(shown)
    magnitude = postprocess.clip_percentile(magnitude[None], 0.0, float(clip))[0]
    scaled = postprocess.normalize(magnitude[None], "maxabs")[0]
    return scaled * heat.sign() if sign == "all" else scaled


def colorize(amap, *, sign: str = "positive", cmap: str | None = None, clip: float = 99.0,
             reduce: str | None = None) -> np.ndarray:
    """A map as an RGB array ``[H, W, 3]`` in [0, 1] through a matplotlib colormap.

    ``cmap`` defaults to ``"jet"``, or ``"bwr"`` (diverging, white at 0) for
    ``sign="all"``. Other arguments as :func:`scale_map`.

    Example:
        >>> rgb = fxai.viz.colorize(cam[0], cmap="inferno")
    """
    import matplotlib

    scaled = scale_map(amap, sign=sign, clip=clip, reduce=reduce).numpy()
    values = (scaled + 1) / 2 if sign == "all" else scaled
    colormap = matplotlib.colormaps[cmap or ("bwr" if sign == "all" else "jet")]
    return colormap(values)[..., :3].astype(np.float32)


def overlay(image, amap, *, alpha: float = 0.5, sign: str = "positive", cmap: str | None = None,
            clip: float = 99.0, reduce: str | None = None) -> np.ndarray:
    r"""The map blended over the image: :math:`(1 - \alpha)\,\mathrm{image} + \alpha\,\mathrm{cmap}(\mathrm{map})`.

    Args:
        image: ``[C, H, W]`` (C = 1, 3 or 4; values in [0, 1], not normalised) or ``[H, W]``.
        amap: ``[H, W]`` or ``[C, H, W]`` map of the same spatial size (resize
            with :func:`fxai.postprocess.upsample` first if needed).
        alpha: weight of the colour map, in [0, 1].
        Others as :func:`colorize`.

    Returns:
        An RGB float array ``[H, W, 3]`` in [0, 1].

    Example:
        >>> rgb = fxai.viz.overlay(x[0], fxai.gradient(model_fn, params, x)[0], sign="absolute")
    """
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    rgb = _image_rgb(image)
    colours = colorize(amap, sign=sign, cmap=cmap, clip=clip, reduce=reduce)
    if colours.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"map of size {colours.shape[:2]} does not match image of size {rgb.shape[:2]}; "
                         "resize it with fxai.postprocess.upsample(map, size)")
    return ((1 - alpha) * rgb + alpha * colours).astype(np.float32)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def grid(images, maps: Mapping[str, object] | None = None, *, masks=None, row_titles: Sequence[str] | None = None,
         alpha: float = 0.5, sign: str | Mapping[str, str] = "positive", cmap: str | None = None,
         clip: float = 99.0, cell: float = 1.6, title: str | None = None, transpose: bool = False):
    """A grid figure: one row per image; columns are the image, its mask (if given) and each named map over it.

    Args:
        images: ``[B, C, H, W]`` in [0, 1], or a list of ``[C, H, W]`` images (of any sizes).
        maps: ``{column title: maps [B, H, W] or [B, C, H, W]}`` in column order, or per column a list of
            one map per image (``None`` leaves that cell empty).
        masks: optional ``[B, H, W]`` ground truth, shown as a column.
        row_titles: one label per image.
        sign: one sign for every column, or ``{column title: sign}`` (default ``"positive"``).
        transpose: one column per image and one row per map instead (for many maps).
        Others as :func:`overlay`; ``cell`` is the size of one panel in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (save it with :func:`save`).

    Example:
        >>> fig = fxai.viz.grid(x, {"gradient": g, "IG": ig}, sign="absolute")
        >>> fxai.viz.save(fig, "grid.png")
        'grid.png'
    """
    if isinstance(images, torch.Tensor) and images.ndim != 4:
        raise ValueError(f"images must be a batch [B, C, H, W] or a list of [C, H, W], got shape {tuple(images.shape)}")
    count = len(images)
    maps = dict(maps or {})
    for name, m in maps.items():
        if len(m) != count:
            raise ValueError(f"maps[{name!r}] has {len(m)} rows for {count} images")
    if row_titles is not None and len(row_titles) != count:
        raise ValueError(f"row_titles has {len(row_titles)} labels for {count} images")
    kinds = ["input"] + (["ground truth"] if masks is not None else []) + list(maps)
    rows, cols = (len(kinds), count) if transpose else (count, len(kinds))
    head = 0.22 * (title.count("\n") + 1) + 0.1 if title else 0.0
    fig = _figure(max(cell * cols + 0.3, 3.0 if title else 0.0), cell * rows + 0.1 + head)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(count):
        panels = [_image_rgb(images[i])]
        if masks is not None:
            panels.append(overlay(images[i], torch.as_tensor(masks[i]).float(), alpha=0.6, cmap="gray", clip=100))
        for name, m in maps.items():
            s = sign.get(name, "positive") if isinstance(sign, Mapping) else sign
            panels.append(None if m[i] is None else
                          overlay(images[i], torch.as_tensor(m[i]), alpha=alpha, sign=s, cmap=cmap, clip=clip))
        for k, panel in enumerate(panels):
            ax = axes[k][i] if transpose else axes[i][k]
            if panel is not None:
                ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            first_row, first_col = (k == 0, i == 0) if transpose else (i == 0, k == 0)
            top, side = (row_titles[i] if row_titles is not None else None, kinds[k]) if transpose else \
                (kinds[k], row_titles[i] if row_titles is not None else None)
            if first_row and top is not None:
                ax.set_title(top, fontsize=8)
            if first_col and side is not None:
                ax.set_ylabel(side, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - head / fig.get_figheight()))
    return fig


def curves(data: Mapping[str, tuple], *, title: str | None = None, xlabel: str = "fraction of pixels",
           ylabel: str = "score", ax_titles: Sequence[str] | None = None):
    """Line plots of metric curves: ``{label: (x [T], y [T])}``, or a list of such dicts for side-by-side panels.

    Example:
        >>> fractions = torch.linspace(0, 1, 11)
        >>> fig = fxai.viz.curves({"gradient": (fractions, 1 - fractions)}, title="deletion")
    """
    panels = [data] if isinstance(data, Mapping) else list(data)
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        for label, (x, y) in panel.items():
            ax.plot(np.asarray(torch.as_tensor(x).cpu()), np.asarray(torch.as_tensor(y).detach().cpu()),
                    label=label, linewidth=1.3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax_titles is not None:
            ax.set_title(ax_titles[i], fontsize=10)
        if panel:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, path) -> str:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created) and return the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


def save_rgb(rgb: np.ndarray, path) -> str:
    """Write an RGB float array ``[H, W, 3]`` in [0, 1] (as from :func:`overlay`) as an 8-bit PNG."""
    from PIL import Image

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path, format="PNG")
    return path


# ---------------------------------------------------------------- concepts (Deep Feature Factorization)


def concept_colours(count: int) -> np.ndarray:
    """``count`` colours ``[count, 3]``: ``gist_rainbow`` at ``k / count`` (the palette of the DFF paper's code)."""
    import matplotlib

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    return matplotlib.colormaps["gist_rainbow"](np.arange(count) / count)[:, :3].astype(np.float32)


def concept_overlay(image, maps, *, colours=None, alpha: float = 0.7) -> np.ndarray:
    r"""Each pixel coloured by its strongest concept, as bright as that concept is there, over the image.

    With :math:`k^* = \arg\max_k m_k` at a pixel, the colour is :math:`c_{k^*}\,\mathrm{clip}(m_{k^*}, 0, 1)
    / \max(c_{k^*})` (the colour's HSV value set to the map's, as pytorch-grad-cam's
    ``show_factorization_on_image``), blended as :math:`(1 - \alpha)\,\mathrm{image} + \alpha\,\mathrm{colour}`.
    Maps of :func:`fxai.deep_feature_factorization` peak at 1 per concept over the batch, so the
    brightness compares across its images; other maps are clipped to [0, 1] as they are.

    Args:
        image: ``[C, H, W]`` (C = 1, 3 or 4; values in [0, 1]) or ``[H, W]``.
        maps: ``[K, H, W]`` concept maps of the image's size.
        colours: ``[K, 3]`` RGB in [0, 1] (default :func:`concept_colours`).
        alpha: weight of the colours, in [0, 1].

    Returns:
        An RGB float array ``[H, W, 3]`` in [0, 1].

    Example:
        >>> dff = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=0)
        >>> rgb = fxai.viz.concept_overlay(x[0], dff.maps[0])
    """
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    rgb = _image_rgb(image)
    maps = torch.as_tensor(maps).detach().to("cpu", torch.float32)
    if maps.ndim != 3 or tuple(maps.shape[1:]) != rgb.shape[:2]:
        raise ValueError(f"maps must be [K, H, W] with the image's size {rgb.shape[:2]}, got shape {tuple(maps.shape)}"
                         " (resize with fxai.postprocess.upsample(maps, size))")
    colours = concept_colours(maps.shape[0]) if colours is None else np.asarray(colours, dtype=np.float32)
    if colours.shape != (maps.shape[0], 3):
        raise ValueError(f"colours must be [K, 3] = [{maps.shape[0]}, 3] RGB values, got shape {colours.shape}")
    value, best = maps.max(0)
    unit = colours / np.maximum(colours.max(1, keepdims=True), 1e-12)
    shown = unit[best.numpy()] * value.clamp(0, 1).numpy()[..., None]
    return ((1 - alpha) * rgb + alpha * shown).astype(np.float32)


def concept_labels(class_scores, *, labels: Sequence[str] | None = None, top: int = 2,
                   softmax: bool = True) -> list[str]:
    """One legend line per concept: its ``top`` classes by score, e.g. ``"disc 0.81, ring 0.12"``.

    ``class_scores`` ``[K, classes]`` as from :func:`fxai.deep_feature_factorization`; shown as softmax
    probabilities over the classes (``softmax=False``: the raw scores). ``labels`` names the classes
    (default: their indices).

    Example:
        >>> fxai.viz.concept_labels(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), labels=["cat", "dog"], top=1)
        ['cat 0.88', 'dog 0.73']
    """
    scores = torch.as_tensor(class_scores).detach().to("cpu", torch.float32)
    if scores.ndim != 2:
        raise ValueError(f"class_scores must be [K, classes], got shape {tuple(scores.shape)}")
    if labels is not None and len(labels) != scores.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {scores.shape[1]} classes")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    shown = scores.softmax(-1) if softmax else scores
    values, index = shown.topk(min(top, shown.shape[1]), dim=-1)
    names = [str(i) for i in range(shown.shape[1])] if labels is None else list(labels)
    return [", ".join(f"{names[i]} {v:.2f}" for v, i in zip(vs.tolist(), ix.tolist())) for vs, ix in zip(values, index)]


def factorization(images, result, *, labels: Sequence[str] | None = None, top: int = 2, alpha: float = 0.7,
                  colours=None, cell: float = 2.0, columns: int | None = None, title: str | None = None):
    """A figure of Deep Feature Factorization: each image with its regions coloured by concept, and a legend.

    The legend gives each concept its colour and, when ``result.class_scores`` is set, its ``top``
    classes (:func:`concept_labels`), what pytorch-grad-cam's ``show_factorization_on_image`` shows.

    Args:
        images: ``[B, C, H, W]`` in [0, 1], the batch that was factorised.
        result: the :class:`fxai.Factorization` of ``images`` (maps upsampled to their size).
        labels: class names for the legend.
        columns: panels per row (default: all in one row, up to 6).
        Others as :func:`concept_overlay`; ``cell`` is the size of one panel in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (save it with :func:`save`).

    Example:
        >>> dff = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, head="auto",
        ...                                       key=0)
        >>> fig = fxai.viz.factorization(x, dff, labels=["a", "b", "c", "d", "e"])
    """
    from matplotlib.lines import Line2D

    images = torch.as_tensor(images)
    maps = getattr(result, "maps", None)
    if maps is None:
        raise TypeError(f"result must be the Factorization returned by fxai.deep_feature_factorization, "
                        f"got {type(result).__name__}")
    if images.ndim != 4 or maps.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images [B, C, H, W] and result.maps [B, K, H, W] must have the same batch; got shapes "
                         f"{tuple(images.shape)} and {tuple(maps.shape)}")
    count, k = images.shape[0], maps.shape[1]
    colours = concept_colours(k) if colours is None else np.asarray(colours, dtype=np.float32)
    names = [f"concept {i}" for i in range(k)]
    if getattr(result, "class_scores", None) is not None:
        names = [f"{n}: {text}" for n, text in zip(names, concept_labels(result.class_scores, labels=labels, top=top))]
    columns = min(count, 6) if columns is None else columns
    rows = -(-count // columns)
    legend_height = 0.2 * k + 0.2
    head = 0.3 if title else 0.0
    fig = _figure(max(cell * columns, 3.5), cell * rows + legend_height + head)
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.set_axis_off()
            continue
        ax.imshow(concept_overlay(images[i], maps[i], colours=colours, alpha=alpha), interpolation="nearest")
    handles = [Line2D([0], [0], color=tuple(c), lw=6) for c in colours]
    fig.legend(handles, names, loc="lower center", ncol=1, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1 - head / fig.get_figheight()))
    return fig
