"""Attribution by evaluating masked inputs: RISE and occlusion.

Each method stacks its perturbed copies of the batch as rows ``[R * B, ...]`` (:mod:`fxai._core.stacking`),
builds them chunk by chunk (``chunk_size`` rows at a time, so neither the masks nor the masked inputs are
ever held all at once) and scores them with one forward per chunk. K targets share those forwards.
"""

from __future__ import annotations

import math

import torch

from .._core import keys
from .._core.batching import auto_chunk, row_chunks
from .._core.checks import as_baseline, check_choice, check_input, check_positive_int
from .._core.docs import documented
from .._core.structured import accepts_structured
from .._core.stacking import SCORES, clean_forward, per_input, row_scores, rows_of
from .._core.targets import TargetLike, as_target
from ..postprocess import upsample as _resize


def _rise_masks(grid: torch.Tensor, shifts: torch.Tensor, size, cell) -> torch.Tensor:
    """Masks ``[n, H, W]``: grids ``[n, s, s]`` upsampled to ``(s + 1) * cell`` and cropped at ``shifts [n, 2]``."""
    s = grid.shape[-1]
    up = _resize(grid, ((s + 1) * cell[0], (s + 1) * cell[1]))
    rows = shifts[:, :1] + torch.arange(size[0], device=grid.device)
    cols = shifts[:, 1:] + torch.arange(size[1], device=grid.device)
    n = torch.arange(grid.shape[0], device=grid.device)
    return up[n[:, None, None], rows[:, :, None], cols[:, None, :]]


def _rise_draw(key, num_masks: int, cell_size: int, p: float, x: torch.Tensor):
    """The random grids ``[N, s, s]``, crop shifts ``[N, 2]`` and cell size ``(ch, cw)`` of RISE's masks."""
    gen = keys.generator(key)
    size = x.shape[-2:]
    cell = (math.ceil(size[0] / cell_size), math.ceil(size[1] / cell_size))
    grid = (keys.uniform(gen, (num_masks, cell_size, cell_size), x) < p).to(x.dtype)
    shifts = torch.stack([keys.integers(gen, cell[0], (num_masks,), x),
                          keys.integers(gen, cell[1], (num_masks,), x)], 1)
    return grid, shifts, cell


@accepts_structured(one_leaf=True)
@documented(num_masks="number of masks N.",
            cell_size="the grid has ``cell_size × cell_size`` cells (the paper's h = w = 7).",
            p="probability of keeping a cell, in (0, 1].",
            score="``\"softmax\"`` (target read from the softmax of the outputs, as in the paper) or ``\"logit\"`` "
                  "(from the raw outputs).",
            x="input batch ``[B, C, H, W]``, or a tuple or dict of batches whose one attributed leaf is the image (:func:`fxai.fixed` marks the others).",
            chunk_size="at most this many masked inputs per forward pass;"
                       " ``None``: as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).")
def rise(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, num_masks: int = 4000,
         cell_size: int = 7, p: float = 0.5, score: str = "softmax", key: keys.Key | None = None,
         chunk_size: int | None = None) -> torch.Tensor:
    r"""RISE: the mean of random masks weighted by the score of the input they mask.

    .. math:: S(\lambda) = \frac{1}{N p} \sum_{i=1}^N f_c(x \odot M_i)\, M_i(\lambda)

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. Each mask is a ``cell_size × cell_size`` grid
    of independent Bernoulli(``p``) cells, upsampled bilinearly to
    :math:`(s + 1)\,C` with :math:`C = \lceil H / s \rceil` pixels per cell, then
    cropped to ``H × W`` at a uniformly random shift in :math:`[0, C)` per axis.
    Since :math:`E[M(\lambda)] = p`, :math:`S` is an unbiased estimate of
    :math:`E[f_c(x \odot M) M(\lambda)] / p`. The same masks serve every input
    of the batch; they are drawn from ``key`` up front, so a key gives the same
    map whatever the chunk size. Upsampling clamps at the borders (torch's
    ``align_corners=False``); the reference code's ``reflect`` mode differs in
    the outer half cell only.

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.rise(model_fn, params, x, 3, num_masks=4000, key=0, chunk_size=100)
    """
    check_input(x, exact_ndim=4)
    check_positive_int(num_masks, name="num_masks")
    check_positive_int(cell_size, name="cell_size")
    check_choice(score, SCORES, name="score")
    chunk_size = auto_chunk(chunk_size, x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p must be a keep probability in (0, 1], got {p!r}")
    grid, shifts, cell = _rise_draw(key, num_masks, cell_size, p, x)
    target = as_target(target, x).fixed(model_fn, params, x)
    batch, size = x.shape[0], x.shape[-2:]

    total = None
    for a, b in row_chunks(num_masks * batch, chunk_size, target.group):
        first, last = a // batch, (b - 1) // batch + 1
        masks = _rise_masks(grid[first:last], shifts[first:last], size, cell)
        r = torch.arange(a, b, device=x.device)
        j, i = r // batch - first, r % batch
        s = row_scores(model_fn, params, rows_of(x, i) * masks[j][:, None], target, a, score)
        w = s.new_zeros((batch, last - first, *s.shape[1:])).index_put((i, j), s)
        part = torch.einsum("bm...,mhw->b...hw", w, masks)
        total = part if total is None else total + part
    return total / (num_masks * p)


def _as_dims(value, n: int, name: str) -> tuple[int, ...]:
    dims = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(dims) != n or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{name} must be a positive int or a tuple of {n} positive ints, got {value!r}")
    return dims


def _windows(window, stride, shape) -> list[torch.Tensor]:
    """Per feature dimension ``d``, which of its ``D_d`` positions each of the ``n_d`` window positions covers."""
    if isinstance(window, int) and not isinstance(window, bool):
        window = (window, window)
    window = tuple(window) if isinstance(window, (tuple, list)) else window
    if not isinstance(window, tuple) or len(window) not in (2, len(shape)):
        raise ValueError(f"window must be an int, a 2-tuple (h, w) applied to all channels, or a tuple of "
                         f"{len(shape)} sizes over {tuple(shape)}; got {window!r}")
    full = len(window) == len(shape)
    window = _as_dims(window, len(window), "window")
    stride = _as_dims(stride, len(window), "stride")
    if not full:
        window, stride = tuple(shape[:-2]) + window, (1,) * (len(shape) - 2) + stride
    if any(w > d for w, d in zip(window, shape)):
        raise ValueError(f"window {window} is larger than the input's feature shape {tuple(shape)}")
    if any(s > w for s, w, d in zip(stride, window, shape) if w < d):
        raise ValueError(f"stride {stride} must not exceed the window {window} (pixels would be left uncovered)")
    indicators = []
    for w, s, d in zip(window, stride, shape):
        starts = torch.arange(math.ceil((d - w) / s) + 1) * s
        pos = torch.arange(d)
        indicators.append(((pos >= starts[:, None]) & (pos < starts[:, None] + w)))
    return indicators


@accepts_structured(one_leaf=True)
@documented(window="``(h, w)`` (or an int) occluding all channels at once, or one size per feature dimension, "
                   "e.g. ``(1, 8, 8)`` over ``(C, H, W)`` (Captum's ``sliding_window_shapes``).",
            stride="an int or one step per dimension of ``window``; at most the window.",
            x="input batch ``[B, ...]`` (any feature shape), or a tuple or dict of batches whose one attributed leaf is occluded (:func:`fxai.fixed` marks the others).",
            chunk_size="at most this many occluded inputs per forward pass;"
                       " ``None``: as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).")
def occlusion(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, window, stride,
              baseline=0.0, chunk_size: int | None = None) -> torch.Tensor:
    r"""Occlusion: the score drop when a sliding window is replaced by a baseline, averaged per pixel.

    .. math:: a(j) = \frac{1}{|W_j|} \sum_{w \in W_j} \big(f_c(x) - f_c(x^{(w)})\big)

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014. :math:`x^{(w)}` is ``x`` with window ``w`` set to ``baseline``;
    :math:`W_j` are the windows covering element ``j``. Windows start at 0 and
    step by ``stride`` until the dimension is covered (the last one may be cut
    off at the border), as Captum's ``Occlusion``. All windows of the batch
    are one stacked batch; K targets share its forwards.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets).

    Example:
        >>> a = fxai.occlusion(model_fn, params, x, 3, window=(8, 8), stride=4)
    """
    check_input(x, min_ndim=3)
    chunk_size = auto_chunk(chunk_size, x)
    shape = tuple(x.shape[1:])
    indicators = [t.to(x.device) for t in _windows(window, stride, shape)]
    counts = [t.shape[0] for t in indicators]
    base = as_baseline(baseline, x)
    target, logits, _ = clean_forward(model_fn, params, x, target)
    clean = target.scores(logits)
    batch, num = x.shape[0], math.prod(counts)

    parts = []
    for a, b in row_chunks(num * batch, chunk_size, target.group):
        r = torch.arange(a, b, device=x.device)
        w, i = r // batch, r % batch
        mask = None
        for d, idx in enumerate(torch.unravel_index(w, counts)):
            m = indicators[d][idx].reshape(-1, *[shape[d] if e == d else 1 for e in range(len(shape))])
            mask = m if mask is None else mask & m
        parts.append(row_scores(model_fn, params, torch.where(mask, rows_of(base, i), rows_of(x, i)), target, a))
    drops = clean - per_input(parts, batch)
    windows = tuple(range(len(counts)))
    drops = drops.reshape(*counts, *drops.shape[1:]).movedim(windows, tuple(d - len(counts) for d in windows))
    return _occlusion_average(drops, indicators)


def _occlusion_average(drops: torch.Tensor, indicators: list[torch.Tensor]) -> torch.Tensor:
    """``sum_w drop_w 1[j in w] / #windows covering j`` from drops ``[B, (K,) n_1, ..., n_D]``.

    Windows are products of per-dimension intervals, so the sum over windows
    contracts one dimension at a time with its indicators ``[n_d, D_d]``.
    """
    out, cover, d = drops, None, len(indicators)
    for ind in indicators:
        ind = ind.to(drops.dtype)
        out = torch.tensordot(out, ind, dims=([out.ndim - d], [0]))
        cover = ind.sum(0) if cover is None else torch.tensordot(cover, ind.sum(0), dims=0)
    return out / cover
