"""Localisation against ground-truth masks: pointing game, relevance mass and rank accuracy, top-k
intersection, attribution localisation, the ROC AUC of the map against the mask, and focus on mosaics.

These judge a map against a mask ``[B, H, W]`` (``True`` inside the object)
and need no model. Pixel maps ``[B, C, H, W]`` are reduced over channels with
``reduce`` first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._core import keys
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


def top_k_intersection(attribution: torch.Tensor, mask: torch.Tensor, *, k: int = 1000,
                       concept_influence: bool = False, reduce: str = "sum") -> torch.Tensor:
    r"""Top-k intersection (Theiner et al., "Interpretable Semantic Photo Geolocation", WACV 2022).

    .. math:: \mathrm{TKI} = \frac{|P_{top\,k} \cap GT|}{k}

    the share of the ``k`` most relevant pixels that lie in the mask (ties broken by position), times
    :math:`HW / |GT|` with ``concept_influence=True``; ``NaN`` for an empty mask (as Quantus). Higher is
    better. No model evaluation.

    Returns:
        ``[B]``.

    Example:
        >>> tki = fxai.metrics.top_k_intersection(amap, masks, k=20)
    """
    amap, m = _check(attribution, mask, reduce)
    flat, mflat = amap.flatten(1), m.flatten(1)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= flat.shape[1]:
        raise ValueError(f"k must be an int in [1, H * W] = [1, {flat.shape[1]}], got {k!r}")
    top = flat.argsort(dim=1, descending=True, stable=True)[:, :k]
    tki = mflat.gather(1, top).to(amap.dtype).mean(1)
    size = mflat.sum(1).to(amap.dtype)
    if concept_influence:
        tki = tki * flat.shape[1] / size.clamp(min=1)
    return torch.where(size > 0, tki, torch.full_like(tki, torch.nan))


def attribution_localisation(attribution: torch.Tensor, mask: torch.Tensor, *, positive: bool = False,
                             reduce: str = "sum") -> torch.Tensor:
    r"""Attribution localisation (Kohlbrenner et al., "Towards Best Practice in Explaining Neural Network
    Decisions with LRP", IJCNN 2020): the share of the relevance that falls inside the mask.

    .. math:: \mu = \frac{\sum_{p \in GT} |R_p|}{\sum_p |R_p|}

    with :math:`|R|` (Quantus's default ``abs=True``), or :math:`\max(R, 0)` with ``positive=True``
    (then equal to :func:`relevance_mass`). ``NaN`` for an empty mask, 0 for an all-zero map. Higher is
    better. No model evaluation. Quantus's ``weighted=True`` scales by a size that depends on the batch
    (``x_batch[2:].size``): not offered.

    Returns:
        ``[B]`` in ``[0, 1]``.

    Example:
        >>> mu = fxai.metrics.attribution_localisation(amap, masks)
    """
    amap, m = _check(attribution, mask, reduce)
    r = (amap.clamp(min=0) if positive else amap.abs()).flatten(1)
    total = r.sum(1)
    inside = (r * m.flatten(1)).sum(1)
    mu = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                     torch.zeros_like(total))
    return torch.where(m.flatten(1).any(1), mu, torch.full_like(mu, torch.nan))


def mask_auc(attribution: torch.Tensor, mask: torch.Tensor, *, reduce: str = "sum") -> torch.Tensor:
    r"""Area under the ROC curve of the map as a detector of the mask's pixels (Fawcett, "An Introduction to
    ROC Analysis", 2006; used for explanations by Quantus's ``AUC``).

    .. math:: \mathrm{AUC} = \frac{1}{|GT|\,|\overline{GT}|} \sum_{p \in GT} \sum_{q \notin GT}
              \big([R_p > R_q] + \tfrac12 [R_p = R_q]\big)

    the probability that a pixel of the mask outranks one outside (Mann–Whitney), what scikit-learn's
    ``roc_curve`` + ``auc`` give: the Mann–Whitney statistic from tie-averaged ranks, for all images at once by
    one sort. 0.5 is chance, higher is better; ``NaN`` where the mask is empty or full. No model evaluation.

    Returns:
        ``[B]`` in ``[0, 1]``.

    Example:
        >>> a = fxai.metrics.mask_auc(amap, masks)
    """
    amap, m = _check(attribution, mask, reduce)
    values, order = amap.flatten(1).sort(1)
    inside = m.flatten(1).gather(1, order).long()
    n = values.shape[1]
    pos = torch.arange(n, device=values.device).expand_as(values)
    differ = values[:, 1:] != values[:, :-1]
    edge = torch.ones_like(differ[:, :1])
    first = torch.where(torch.cat([edge, differ], 1), pos, 0).cummax(1).values         # start of each tie group
    last = torch.where(torch.cat([differ, edge], 1), pos, n).flip(1).cummin(1).values.flip(1)
    twice_rank_sum = ((first + last + 2) * inside).sum(1)     # 2 × the mask's sum of (1-based, tie-averaged) ranks
    pos_n = inside.sum(1)
    neg_n = n - pos_n
    u = (twice_rank_sum - pos_n * (pos_n + 1)).to(amap.dtype) / 2      # Mann–Whitney U, exact in integers
    ok = (pos_n > 0) & (neg_n > 0)
    return torch.where(ok, u / (pos_n * neg_n).clamp(min=1).to(amap.dtype), torch.full_like(u, torch.nan))


def _quadrants(mask, shape):
    b, h, w = shape
    if not isinstance(mask, torch.Tensor) or mask.shape != (b, 4):
        return mask
    rows = torch.arange(h, device=mask.device) >= h // 2
    cols = torch.arange(w, device=mask.device) >= w // 2
    index = (2 * rows[:, None] + cols[None, :]).expand(b, h, w).reshape(b, -1)
    return mask.to(torch.bool).gather(1, index).view(b, h, w)


def focus(attribution: torch.Tensor, mask: torch.Tensor, *, reduce: str = "sum") -> torch.Tensor:
    r"""Focus (Arias-Duart et al., "Focus! Rating XAI Methods and Finding Biases", FUZZ-IEEE 2022): on a 2×2
    mosaic of images, the share of the positive relevance that falls on the quadrants of the target class.

    .. math:: \mathrm{Focus} = \frac{\sum_{p \in Q_{target}} \max(R_p, 0)}{\sum_p \max(R_p, 0)}

    ``mask`` is ``[B, 4]`` (whether each quadrant, top-left, top-right, bottom-left, bottom-right, shows the
    target class; the rows split at :math:`\lfloor H/2 \rfloor`, the columns at :math:`\lfloor W/2 \rfloor`, as
    Quantus) or a pixel mask ``[B, H, W]``; 0 for a map with no positive relevance. Build mosaics with
    :func:`mosaics`. Higher is better. No model evaluation.

    Returns:
        ``[B]`` in ``[0, 1]``.

    Example:
        >>> f = fxai.metrics.focus(torch.rand(2, 8, 8), torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]]))
    """
    amap = relevance_map(attribution, reduce=reduce)
    return relevance_mass(amap, _quadrants(mask, amap.shape))


def mosaics(images: torch.Tensor, labels: torch.Tensor, target: int, *, count: int, key) -> tuple:
    r"""2×2 mosaics for :func:`focus`: each has two images of class ``target`` and two of other classes, at
    random positions (Arias-Duart et al. 2022).

    Args:
        images: ``[N, C, H, W]`` images to draw from.
        labels: ``[N]`` their classes.
        target: the class to find.
        count: number of mosaics.
        key: randomness (an int seed or a ``torch.Generator``).

    Returns:
        ``(mosaics [count, C, 2H, 2W], quadrants bool [count, 4])``.

    Example:
        >>> imgs, labels = torch.rand(6, 3, 4, 4), torch.tensor([0, 0, 1, 2, 0, 1])
        >>> x, quadrants = fxai.metrics.mosaics(imgs, labels, 0, count=2, key=0)
        >>> x.shape, quadrants.sum(1).tolist()
        (torch.Size([2, 3, 8, 8]), [2, 2])
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a tensor [N, C, H, W]")
    labels = torch.as_tensor(labels, device=images.device)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be [N] = [{images.shape[0]}], one class per image; got {tuple(labels.shape)}")
    gen = keys.generator(key)
    same, other = (labels == target).nonzero()[:, 0], (labels != target).nonzero()[:, 0]
    if len(same) < 2 or len(other) < 2:
        raise ValueError(f"mosaics need at least two images of class {target} and two of other classes")
    pick = lambda pool: pool[torch.randperm(len(pool), generator=gen)[:2].to(pool.device)]  # noqa: E731
    tiles, flags = [], []
    for _ in range(count):
        order = torch.randperm(4, generator=gen)
        chosen = torch.cat([pick(same), pick(other)])[order.to(images.device)]
        t = images[chosen]
        tiles.append(torch.cat([torch.cat([t[0], t[1]], -1), torch.cat([t[2], t[3]], -1)], -2))
        flags.append(order < 2)
    return torch.stack(tiles), torch.stack(flags).to(images.device)
