"""Localisation against ground-truth masks: pointing game, relevance mass and relevance rank accuracy.

These judge a map against a mask ``[B, H, W]`` (``True`` inside the object)
and need no model. Pixel maps ``[B, C, H, W]`` are reduced over channels with
``reduce`` first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ranking import relevance_map


def _check(attribution, mask, reduce):
    amap = relevance_map(attribution, reduce=reduce)
    if not isinstance(mask, torch.Tensor) or mask.shape != amap.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"attribution and mask must cover the same images and pixels: the map reads as "
                         f"[B, H, W] = {tuple(amap.shape)}, the mask is {got} (a bool tensor [B, H, W])")
    return amap, mask.to(device=amap.device, dtype=torch.bool)


def pointing_game(attribution: torch.Tensor, mask: torch.Tensor, *, tolerance: float | None = None,
                  reduce: str = "sum") -> torch.Tensor:
    r"""Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    A hit (1.0) when the map's maximum lies in the mask or within ``tolerance``
    pixels (Euclidean) of it, else 0.0. The maximum is the first one in
    row-major order when several pixels tie; a constant map (no maximum) is a miss.

    Args:
        attribution: map ``[B, H, W]`` or ``[B, C, H, W]``.
        mask: ground truth ``[B, H, W]`` (bool, or nonzero = inside).
        tolerance: radius in pixels; ``None`` scales the paper's 15 pixels at 224×224 with the image,
            :math:`15 \min(H, W) / 224` (1.07 pixels at 16×16).

    Returns:
        ``[B]`` of 0.0/1.0; its mean is the accuracy.

    Example:
        >>> hits = fxai.metrics.pointing_game(amap, masks, tolerance=15)
    """
    amap, m = _check(attribution, mask, reduce)
    if tolerance is None:
        tolerance = 15 * min(amap.shape[-2:]) / 224
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float("inf"):
        raise ValueError(f"tolerance must be a non-negative number of pixels or None, got {tolerance!r}")
    r = math.floor(tolerance)
    if r > 0:
        t = torch.arange(-r, r + 1, device=amap.device, dtype=torch.float32)
        disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= tolerance**2).float()[None, None]
        m = F.conv2d(m[:, None].float(), disk, padding=r)[:, 0] > 0.5
    flat = amap.flatten(1)
    hit = m.flatten(1).gather(1, flat.argmax(1, keepdim=True))[:, 0]
    return (hit & (flat.amax(1) > flat.amin(1))).to(amap.dtype)


def relevance_mass(attribution: torch.Tensor, mask: torch.Tensor, *, reduce: str = "sum") -> torch.Tensor:
    r"""Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022).

    .. math:: \mathrm{RMA} = \frac{\sum_{p \in GT} \max(R_p, 0)}{\sum_p \max(R_p, 0)}

    the share of the positive relevance that falls inside the mask (0 for a
    map with no positive relevance).

    Returns:
        ``[B]`` in ``[0, 1]``.

    Example:
        >>> mass = fxai.metrics.relevance_mass(amap, masks)
    """
    amap, m = _check(attribution, mask, reduce)
    pos = amap.clamp(min=0).flatten(1)
    total = pos.sum(1)
    inside = (pos * m.flatten(1)).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def relevance_rank(attribution: torch.Tensor, mask: torch.Tensor, *, reduce: str = "sum") -> torch.Tensor:
    r"""Relevance rank accuracy (Arras et al. 2022).

    With :math:`K = |GT|` the mask's size, the share of the :math:`K` most
    relevant pixels that lie inside the mask:
    :math:`|P_{top K} \cap GT| / K` (ties broken by position; 0 for an empty mask).

    Returns:
        ``[B]`` in ``[0, 1]``.

    Example:
        >>> rank = fxai.metrics.relevance_rank(amap, masks)
    """
    amap, m = _check(attribution, mask, reduce)
    flat, mflat = amap.flatten(1), m.flatten(1)
    k = mflat.sum(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    top = torch.arange(flat.shape[1], device=flat.device)[None] < k[:, None]
    hits = (mflat.gather(1, order) & top).sum(1)
    return torch.where(k > 0, hits.to(amap.dtype) / k.clamp(min=1).to(amap.dtype), torch.zeros_like(flat[:, 0]))
