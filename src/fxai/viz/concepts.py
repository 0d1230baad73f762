"""Figures of Deep Feature Factorization: each image's regions coloured by concept, with a legend naming each
concept by its top classes (reachable as ``fxai.viz.factorization`` and friends)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .canvas import figure, image_rgb




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
    rgb = image_rgb(image)
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
                  colours=None, cell: float = 2.0, columns: int | None = None, title: str | None = None,
                  image_titles: Sequence[str] | None = None, gray: bool = True):
    """A figure of Deep Feature Factorization: each image with its regions coloured by concept, and a legend.

    The legend gives each concept its colour and, when ``result.class_scores`` is set, its ``top``
    classes (:func:`concept_labels`), what pytorch-grad-cam's ``show_factorization_on_image`` shows.

    Args:
        images: ``[B, C, H, W]`` in [0, 1], the batch that was factorised.
        result: the :class:`fxai.Factorization` of ``images`` (maps upsampled to their size).
        labels: class names for the legend.
        columns: panels per row (default: all in one row, up to 6).
        title: the figure's title (default: "Deep Feature Factorization: K concepts").
        image_titles: one label per image (e.g. its class), above its panel.
        gray: show the images in gray under the concepts' colours, so that no object's own colour can be
            read as a concept's.
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
    if image_titles is not None and len(image_titles) != count:
        raise ValueError(f"image_titles has {len(image_titles)} labels for {count} images")
    columns = min(count, 6) if columns is None else columns
    rows = -(-count // columns)
    legend_height = 0.22 * k + 0.3
    title = f"Deep Feature Factorization: {k} concepts" if title is None else title
    head = 0.25 * (title.count("\n") + 1) + 0.1
    fig = figure(max(cell * columns, 4.5), cell * rows + legend_height + head + (0.25 if image_titles else 0))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.set_axis_off()
            continue
        shown = images[i]
        if gray:
            shown = image_rgb(shown).mean(-1)
        ax.imshow(concept_overlay(shown, maps[i], colours=colours, alpha=alpha), interpolation="nearest")
        if image_titles is not None:
            ax.set_title(image_titles[i], fontsize=8)
    handles = [Line2D([0], [0], color=tuple(c), lw=6) for c in colours]
    fig.legend(handles, names, loc="outside lower center", ncol=1, fontsize=8, frameon=False,
               title="each pixel coloured by its strongest concept; concept: its top classes", title_fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig
