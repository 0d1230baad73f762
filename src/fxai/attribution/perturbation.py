"""Attribution by evaluating masked inputs: Score-CAM, Ablation-CAM, RISE, occlusion.

Every method stacks its perturbed copies of the batch as rows ``[R * B, ...]``
(perturbation-major: row ``r`` perturbs input ``r % B``), builds them chunk by
chunk (``chunk_size`` rows at a time, so neither the masks nor the masked inputs
are ever held all at once) and scores them with one forward per chunk. K
targets share those forwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import vjp

from .._core import keys
from .._core.batching import _cat, row_chunks, unstack
from .._core.checks import check_choice, check_input, check_positive_int
from .._core.layers import forward_with_activations, resolve_layers, tapped, to_grid
from .._core.targets import Target, TargetLike, as_target, check_logits
from ..postprocess import normalize
from ..postprocess import upsample as _resize
from .integrated import _baseline

SCORES = ("softmax", "logit")
_MODES = ("bilinear", "nearest", "bicubic")


def _row_scores(model_fn, params, rows: torch.Tensor, target: Target, start: int, score: str = "logit"):
    """Target scores ``[n]`` (or ``[n, K]``) of ``n`` stacked rows starting at row ``start``."""
    logits = model_fn(params, rows)
    check_logits(logits, rows)
    return target.scores(logits.softmax(-1) if score == "softmax" else logits, start)


def _clean_forward(model_fn, params, x, target: TargetLike, layers=None):
    """One forward on the clean batch: ``(target with top-1 resolved, logits, activation or None)``."""
    if layers is None:
        logits, act = model_fn(params, x), None
    else:
        logits, (act,) = forward_with_activations(model_fn, params, x, layers)
    check_logits(logits, x)
    resolved = as_target(target, x)
    if resolved.top1:
        resolved = Target(x.shape[0], index=logits.detach().argmax(-1, keepdim=True))
    return resolved, logits, act


def _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size) -> list[str]:
    check_input(x, exact_ndim=4)
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
    if not isinstance(upsample, bool):
        check_choice(upsample, _MODES, name="upsample")
    if reshape is not None and not callable(reshape):
        raise TypeError(f"reshape must be a callable activation -> [N, C, h, w] or None, got {type(reshape).__name__}")
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    if len(layers) != 1:
        raise ValueError(f"layer must name one layer, got {len(layers)}: {layers!r}")
    return layers


def _interpolate(maps: torch.Tensor, size, *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``maps [..., h, w]`` to ``size``."""
    if not align_corners:
        return _resize(maps, size)
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=True)
    return out.reshape(*maps.shape[:-2], *out.shape[-2:])


def _cam_map(weights: torch.Tensor, act: torch.Tensor, size, upsample) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)`` from weights ``[C, B]`` (or ``[C, B, K]``) and activations ``[B, C, h, w]``."""
    if weights.ndim == 2:
        cam = torch.einsum("cb,bchw->bhw", weights, act)
    else:
        cam = torch.einsum("cbk,bchw->bkhw", weights, act)
    cam = cam.clamp(min=0)
    if upsample is False:
        return cam
    return _resize(cam, size, mode="bilinear" if upsample is True else upsample)


def _rows(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``x[i]``, without a copy for a batch of one."""
    return x.expand(len(i), *x.shape[1:]) if x.shape[0] == 1 else x[i]


def _per_input(parts: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Row scores of consecutive chunks, ``[R * B, ...]`` in all, as ``[R, B, ...]``."""
    rows = _cat(parts)
    return unstack(rows, rows.shape[0] // batch)


def score_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
              score: str = "softmax", channel_softmax: bool = False, align_corners: bool = False,
              upsample: bool | str = True, reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Score-CAM: channels of a layer weighted by the score of the input masked by each.

    .. math:: M_k = \mathrm{minmax}\big(\mathrm{up}(A_k)\big),\quad
              s_k = f_c(x \odot M_k),\quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big),\quad
              w_k = s_k \ \text{or}\ \mathrm{softmax}_k(s)

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020. Each channel of the
    activation ``A`` at ``layer`` is upsampled bilinearly to the input size,
    min–max normalised to [0, 1] (a constant channel gives an all-zero mask)
    and multiplies the input; the B·C masked inputs are one stacked batch
    (built ``chunk_size`` rows at a time), and K targets share its forwards.

    Conventions: the paper's reference code weights channels by the softmax
    probability of the class on each masked input (``score="softmax"``, the
    default); the paper's Algorithm 1 takes logits and a softmax over channels
    (``score="logit", channel_softmax=True``; its baseline term cancels in that
    softmax). pytorch-grad-cam's ``ScoreCAM`` scores the raw output through its
    target callable, applies a softmax over channels and upsamples the masks
    with ``align_corners=True``: ``score="logit", channel_softmax=True,
    align_corners=True`` reproduces it (up to its min–max of the final map).

    Args:
        score: ``"softmax"`` (the target read from the softmax of the outputs; a
            callable target receives the probabilities) or ``"logit"`` (raw outputs).
        channel_softmax: replace the scores by their softmax over channels.
        align_corners: corner alignment of the bilinear upsampling of channels into masks.
        layer: dotted module name, or ``None`` (the last spatial feature map before global
            pooling); a model made by ``fxai.split(features, head)`` has the layer ``"features"``.
        reshape: callable turning the layer's output into ``[N, C, h, w]`` (default: automatic
            for ``[N, C, h, w]``, channels-last and ViT tokens; see ``fxai._core.layers.to_grid``).
        upsample: ``True`` (bilinear to ``x``'s size), ``False`` (the layer's resolution), or
            ``"nearest"``/``"bicubic"``.
        chunk_size: at most this many masked inputs per forward pass.
        Others as :func:`fxai.gradient`.

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; ``h, w`` with ``upsample=False``).

    Example:
        >>> m = fxai.score_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)
    """
    layers = _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size)
    check_choice(score, SCORES, name="score")
    size = tuple(x.shape[-2:])
    target, _, act = _clean_forward(model_fn, params, x, target, layers)
    act = to_grid(act, reshape, size=size)
    batch, channels = act.shape[:2]

    parts = []
    for a, b in row_chunks(channels * batch, chunk_size, target.group):
        r = torch.arange(a, b, device=x.device)
        k, i = r // batch, r % batch
        masks = normalize(_interpolate(act[i, k], size, align_corners=align_corners), "minmax")
        parts.append(_row_scores(model_fn, params, _rows(x, i) * masks[:, None], target, a, score))
    weights = _per_input(parts, batch)
    if channel_softmax:
        weights = weights.softmax(0)
    return _cam_map(weights, act, size, upsample)


def ablation_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
                 ablation_value: float = 0.0, upsample: bool | str = True, reshape=None,
                 chunk_size: int | None = None) -> torch.Tensor:
    r"""Ablation-CAM: channels weighted by the relative score drop when each is ablated.

    .. math:: w_k = \frac{y_c - y_c^{(k)}}{y_c},\quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020. :math:`y_c^{(k)}` is the
    target score with channel ``k`` of the activation ``A`` at ``layer`` set to
    ``ablation_value`` (0 in the paper). The B·C ablated forwards are one
    stacked batch: row ``(k, b)`` adds :math:`\delta = (v - A_k) e_k` to the
    layer's output of input ``b``, and K targets share the forwards. The weight
    divides by :math:`y_c`: a score near 0 makes it unstable and a negative
    score flips its sign (as in the paper). Token layers are ablated at the
    positions of the grid only (a ViT class token is left as is).

    pytorch-grad-cam's ``AblationCAM`` computes the same weights on the raw
    target output; it differs where the layer's activation has negative values
    (it then ablates to ``min(A) - 1e7`` instead of 0, re-reading the minimum
    after each channel of a batch is overwritten, so the k-th channel of a
    batch gets ``min(A) - (k + 1) 1e7``), for token layers (it
    also ablates the class token) and with ``ratio_channels_to_ablate < 1``
    (skipped channels get weight 0).

    Args:
        ablation_value: the value an ablated channel takes.
        layer: dotted module name, or ``None`` (the last spatial feature map before global
            pooling); a model made by ``fxai.split(features, head)`` has the layer ``"features"``.
        reshape: callable turning the layer's output into ``[N, C, h, w]`` (default: automatic
            for ``[N, C, h, w]``, channels-last and ViT tokens; see ``fxai._core.layers.to_grid``).
        upsample: ``True`` (bilinear to ``x``'s size), ``False`` (the layer's resolution), or
            ``"nearest"``/``"bicubic"``.
        chunk_size: at most this many ablated forwards per pass.
        Others as :func:`fxai.gradient`.

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; ``h, w`` with ``upsample=False``).

    Example:
        >>> m = fxai.ablation_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)
    """
    layers = _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size)
    if isinstance(ablation_value, bool) or not isinstance(ablation_value, (int, float)):
        raise TypeError(f"ablation_value must be a number, got {type(ablation_value).__name__}")
    size = tuple(x.shape[-2:])
    target, logits, native = _clean_forward(model_fn, params, x, target, layers)
    clean = target.scores(logits)
    act = to_grid(native, reshape, size=size)
    batch, channels = act.shape[:2]
    fn = tapped(model_fn, layers)
    eye = torch.eye(channels, dtype=act.dtype, device=act.device)

    parts = []
    for a, b in row_chunks(channels * batch, chunk_size, target.group):
        r = torch.arange(a, b, device=x.device)
        k, i = r // batch, r % batch
        delta = _to_native((ablation_value - act[i]) * eye[k][:, :, None, None], native[i], reshape, size)
        rows = x[i]
        out, _ = fn(params, rows, (delta,))
        check_logits(out, rows)
        parts.append(target.scores(out, a))
    weights = (clean - _per_input(parts, batch)) / clean
    return _cam_map(weights, act, size, upsample)


def _to_native(delta: torch.Tensor, native: torch.Tensor, reshape, size) -> torch.Tensor:
    """A change ``delta`` of the grid read by ``to_grid`` as a change of the layer's own output ``native``.

    ``to_grid`` only moves and selects entries, so its adjoint maps a grid change
    back to the entries it was read from (zeros for dropped tokens).
    """
    if reshape is None and to_grid(native, None, size=size) is native:
        return delta
    _, pullback = vjp(lambda a: to_grid(a, reshape, size=size), native)
    return pullback(delta)[0]


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

    Args:
        num_masks: number of masks N.
        cell_size: the grid has ``cell_size × cell_size`` cells (the paper's h = w = 7).
        p: probability of keeping a cell, in (0, 1].
        score: ``"softmax"`` (target read from the softmax of the outputs, as in
            the paper) or ``"logit"`` (from the raw outputs).
        key: int seed or ``torch.Generator`` (required).
        chunk_size: at most this many masked inputs per forward pass (set it:
            N·B masked inputs at once rarely fit in memory).
        Others as :func:`fxai.gradient`.

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.rise(model_fn, params, x, 3, num_masks=4000, key=0, chunk_size=100)
    """
    check_input(x, exact_ndim=4)
    check_positive_int(num_masks, name="num_masks")
    check_positive_int(cell_size, name="cell_size")
    check_choice(score, SCORES, name="score")
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
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
        s = _row_scores(model_fn, params, _rows(x, i) * masks[j][:, None], target, a, score)
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

    Args:
        window: ``(h, w)`` (or an int) occluding all channels at once, or one
            size per feature dimension, e.g. ``(1, 8, 8)`` over ``(C, H, W)``
            (Captum's ``sliding_window_shapes``).
        stride: an int or one step per dimension of ``window``; at most the window.
        baseline: a number, a tensor broadcastable to ``x`` or a callable ``x -> baseline``.
        chunk_size: at most this many occluded inputs per forward pass.
        Others as :func:`fxai.gradient`.

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets).

    Example:
        >>> a = fxai.occlusion(model_fn, params, x, 3, window=(8, 8), stride=4)
    """
    check_input(x, min_ndim=3)
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
    shape = tuple(x.shape[1:])
    indicators = [t.to(x.device) for t in _windows(window, stride, shape)]
    counts = [t.shape[0] for t in indicators]
    base = _baseline(baseline, x)
    target, logits, _ = _clean_forward(model_fn, params, x, target)
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
        parts.append(_row_scores(model_fn, params, torch.where(mask, _rows(base, i), _rows(x, i)), target, a))
    drops = clean - _per_input(parts, batch)
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
