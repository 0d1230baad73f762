r"""Faithfulness over regions: the score as whole patches (region perturbation) or superpixels (IROF) are
removed in order of relevance.

Both remove regions cumulatively, most relevant first, and score every perturbed copy in stacked forward
passes of ``chunk_size`` rows; the regions themselves are integer label maps ``[B, H, W]``.
"""

from __future__ import annotations

import torch

from .._core.batching import auto_chunk
from .._core.batching import scores as stacked_scores
from .._core.checks import check_choice, check_input, check_positive_int
from .._core.targets import TargetLike, one_per_input, scored_model
from ..attribution.features import superpixels
from .features import block_scores, feature_map, fill_values


def patch_labels(height: int, width: int, patch: int, *, device=None) -> torch.Tensor:
    """Label of the ``patch × patch`` patch of each pixel, ``LongTensor [H, W]``, on a grid centred on the image
    (a size that ``patch`` does not divide is padded by ``floor`` / ``ceil`` of the remainder on each side, as
    Quantus), labels row-major.

    Example:
        >>> fxai.metrics.patch_labels(4, 5, 2)
        tensor([[0, 0, 1, 1, 2],
                [0, 0, 1, 1, 2],
                [3, 3, 4, 4, 5],
                [3, 3, 4, 4, 5]])
    """
    def axis(n):
        pad = (patch - n % patch) % patch
        return (torch.arange(n, device=device) + pad // 2) // patch, -(-n // patch)

    rows, _ = axis(height)
    cols, n_cols = axis(width)
    return rows[:, None] * n_cols + cols[None, :]


def _region_rows(x, labels, order_rank, fills, *, per_region=False):
    """Rows maker for :func:`~fxai.metrics.features.block_scores`: at step ``k`` the regions ranked ``<= k``
    take their fill (``fills [B, R]`` per region with ``per_region``, else ``[B, N]`` per feature)."""
    flat = x.flatten(1)
    rank = order_rank.gather(1, labels.flatten(1))  # rank of each pixel's region, [B, H*W]
    rank = rank[:, None].expand(x.shape[0], x.shape[1], -1).flatten(1)  # per feature
    fill = fills if not per_region else fills.gather(1, labels.flatten(1)[:, None].expand(
        x.shape[0], x.shape[1], -1).flatten(1))

    def rows(s, e):
        ks = torch.arange(s, e, device=x.device).view(-1, 1, 1)
        return torch.where(rank[None] <= ks, fill, flat)
    return rows


def _rank_regions(sums, descending=True):
    order = sums.argsort(dim=1, descending=descending, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(sums.shape[1], device=sums.device)
                                            .expand_as(order))


def region_perturbation(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                        patch: int = 8, regions: int = 100, order: str = "morf", baseline="black",
                        softmax: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    r"""Region perturbation: the score drop as the ``regions`` most (or least) relevant ``patch × patch`` patches
    are removed one after another.

    .. math:: \big(f(x) - f(x^{(k)})\big)_{k = 1..R},\quad x^{(k)} = x \text{ with the } k
              \text{ first patches set to } \bar x

    Samek et al., "Evaluating the Visualization of What a Deep Neural Network Has Learned", IEEE TNNLS 2017.
    Patches lie on a grid centred on the image (:func:`patch_labels`) and are ranked by the sum of the map over
    them (all channels; a map ``[B, H, W]`` counts once per channel). With ``order="morf"`` a faithful map makes
    the drop large early: higher is better for the area (:func:`~fxai.metrics.aopc`-like mean of the curve);
    with ``"lerf"``, lower. Cost: ``min(regions, patches)`` forward passes per input (plus one for ``f(x)``).

    Returns:
        ``[B, min(regions, patches)]`` score drops.

    Example:
        >>> fxai.metrics.region_perturbation(model_fn, params, x, None, amap, patch=8, regions=10).shape
        torch.Size([2, 10])
    """
    check_input(x, exact_ndim=4)
    check_positive_int(patch, name="patch")
    check_positive_int(regions, name="regions")
    check_choice(order, ("morf", "lerf"), name="order")
    a = feature_map(attribution, x).view(x.shape)
    labels = patch_labels(x.shape[-2], x.shape[-1], patch, device=x.device).expand(x.shape[0], -1, -1)
    n = int(labels.max()) + 1
    sums = torch.zeros(x.shape[0], n, dtype=a.dtype, device=x.device).scatter_add_(1, labels.flatten(1),
                                                                                 a.sum(1).flatten(1))
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    chunk_size = auto_chunk(chunk_size, x)
    with torch.no_grad():
        y = stacked_scores(fn, params, x, tgt)
    rows = _region_rows(x, labels, _rank_regions(sums, order == "morf"), fill_values(baseline, x))
    return y[:, None] - block_scores(fn, params, x, tgt, rows, min(regions, n), chunk_size=chunk_size)


def slic_segments(x: torch.Tensor, **options) -> torch.Tensor:
    """SLIC superpixels of each image as Quantus calls ``skimage.segmentation.slic`` (the image as ``H × W × C``
    float64, unscaled, skimage's defaults, ``start_label=0``; ``options`` go to ``slic``): :func:`fxai.superpixels`
    with those settings, a ``LongTensor [B, H, W]`` on ``x``'s device. Needs scikit-image.

    Example:
        >>> fxai.metrics.slic_segments(x, n_segments=20).shape
        torch.Size([2, 32, 32])
    """
    return superpixels(x, "slic", rescale=False, **{"n_segments": 100, **options})  # skimage's own default


def irof(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, segments=None,
         baseline="running_mean", softmax: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    r"""IROF, iterative removal of features: the area over the curve of the relative score as superpixels are
    removed in order of mean relevance, most relevant first.

    .. math:: \mathrm{IROF} = S - \sum_{k=1}^{S-1} \frac{p_k + p_{k+1}}{2},\quad p_k = \frac{f(x^{(k)})}{f(x)}

    Rieger & Hansen, "IROF: a low resource evaluation metric for explanation methods", 2020; the area as
    Quantus computes it (trapezoids of width 1 over the ``S`` removal steps). Superpixels ``segments``
    (``[B, H, W]`` labels ``0..S-1``; default :func:`slic_segments`, as Quantus) are ranked by the mean of the
    map over their pixels and channels. ``baseline="running_mean"`` (Quantus's ``"mean"``) fills the superpixel
    removed at step ``k`` with the mean of the image after step ``k - 1``; any :func:`fill_values` baseline
    gives a fixed fill. Higher is better. Cost: ``S`` forward passes per input (plus one for ``f(x)``), and the
    segmentation on the CPU.

    Returns:
        ``[B]`` areas over the curve.

    Example:
        >>> seg = fxai.metrics.slic_segments(x, n_segments=10)
        >>> fxai.metrics.irof(model_fn, params, x, None, amap, segments=seg).shape
        torch.Size([2])
    """
    check_input(x, exact_ndim=4)
    a = feature_map(attribution, x).view(x.shape)
    if segments is None:
        segments = slic_segments(x)
    if not isinstance(segments, torch.Tensor) or segments.shape != (x.shape[0], *x.shape[2:]) \
            or segments.is_floating_point() or segments.min() < 0:
        raise ValueError(f"segments must be a LongTensor [B, H, W] = {(x.shape[0], *x.shape[2:])} of labels >= 0")
    labels = segments.to(x.device).long()
    b, c = x.shape[:2]
    n = int(labels.max()) + 1
    flat_labels = labels.flatten(1)
    count = torch.zeros(b, n, dtype=x.dtype, device=x.device).scatter_add_(1, flat_labels,
                                                                          torch.ones_like(flat_labels, dtype=x.dtype))
    present = count > 0
    mean_a = torch.zeros_like(count).scatter_add_(1, flat_labels, a.sum(1).flatten(1)) / (c * count.clamp_min(1))
    mean_a = torch.where(present, mean_a, torch.full_like(mean_a, -torch.inf))
    rank = _rank_regions(mean_a)
    steps = present.sum(1)  # S per image; absent labels rank last and are never removed
    running = isinstance(baseline, str) and baseline == "running_mean"
    fills = _running_means(x, flat_labels, count, rank) if running else fill_values(baseline, x)
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    chunk_size = auto_chunk(chunk_size, x)
    with torch.no_grad():
        y = stacked_scores(fn, params, x, tgt)
    rows = _region_rows(x, labels, rank, fills, per_region=running)
    curve = block_scores(fn, params, x, tgt, rows, int(steps.max()), chunk_size=chunk_size) / y[:, None]
    k = torch.arange(curve.shape[1], device=x.device)
    inside = k[None] < steps[:, None]
    p = torch.where(inside, curve, torch.zeros_like(curve))
    area = ((p[:, 1:] + p[:, :-1]) / 2 * inside[:, 1:]).sum(1)
    return steps.to(x.dtype) - area


def _running_means(x, flat_labels, count, rank):
    """Fill of each region ``[B, R]``: the mean of the image (all channels) just before the region is removed,
    regions removed in ``rank`` order and each filled with that mean."""
    b, c = x.shape[:2]
    seg_sum = torch.zeros_like(count).scatter_add_(1, flat_labels, x.sum(1).flatten(1))
    size = x[0].numel()
    total = x.flatten(1).sum(1)
    order = rank.argsort(1)
    fills = torch.zeros_like(count)
    for k in range(count.shape[1]):
        r = order[:, k]
        m = total / size
        fills.scatter_(1, r[:, None], m[:, None])
        total = total - seg_sum.gather(1, r[:, None])[:, 0] + m * c * count.gather(1, r[:, None])[:, 0]
    return fills
