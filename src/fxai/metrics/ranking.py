"""Ranking of an attribution map and the masks of its most or least relevant part.

Every perturbation metric removes pixels (or patches) in the order of a map.
:func:`ranking` turns a map into ranks (0 = most relevant), and
:func:`top_mask` / :func:`bottom_mask` turn ranks and counts into a stack of
boolean masks ``[S, B, H, W]`` (``True`` = perturbed), one per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._core import keys
from .._core.checks import check_positive_int
from ..postprocess import heatmap


def relevance_map(attribution: torch.Tensor, *, reduce: str = "sum", name: str = "attribution") -> torch.Tensor:
    """A map ``[B, H, W]``: ``attribution`` itself, or a pixel map ``[B, C, H, W]`` reduced over channels
    (:func:`fxai.postprocess.heatmap`)."""
    return heatmap(attribution, reduce=reduce, name=name)


def ranking(attribution: torch.Tensor, *, reduce: str = "sum", patch: int = 1, key=None) -> torch.Tensor:
    r"""Rank of every pixel by relevance: ``0`` for the most relevant pixel (or patch).

    A pixel map ``[B, C, H, W]`` is first reduced over channels (``reduce``, see
    :func:`fxai.postprocess.reduce_channels`). With ``patch = p > 1`` the map is
    averaged over non-overlapping ``p × p`` patches (partial patches at the
    border average what they hold) and all pixels of a patch share its rank, so
    ``rank < k`` selects the ``k`` most relevant patches. Ties are broken by a
    random order drawn from ``key`` (an int seed or ``torch.Generator``), or by
    position (row-major) when ``key`` is None.

    Args:
        attribution: map ``[B, H, W]`` or ``[B, C, H, W]``.
        reduce: channel reduction for pixel maps (``"sum"``, ``"abs_sum"``, ...).
        patch: side of the square patches ranked as one unit.
        key: optional randomness for tie-breaking.

    Returns:
        ``LongTensor [B, H, W]`` with values in ``[0, units)``, ``units`` the number of patches.

    Example:
        >>> r = fxai.metrics.ranking(torch.tensor([[[0.1, 0.9], [0.5, 0.2]]]))
        >>> r.tolist()
        [[[3, 0], [1, 2]]]
    """
    check_positive_int(patch, name="patch")
    amap = relevance_map(attribution, reduce=reduce).detach()
    if not torch.isfinite(amap).all():
        raise ValueError("attribution holds NaN or infinite values; rank a finite map")
    batch, height, width = amap.shape
    if patch > 1:
        amap = F.avg_pool2d(amap[:, None], patch, stride=patch, ceil_mode=True)[:, 0]
    flat = amap.flatten(1)
    units = flat.shape[1]
    if key is None:
        order = flat.argsort(dim=1, descending=True, stable=True)
    else:
        perm = keys.uniform(key, (batch, units), flat).argsort(dim=1)
        order = perm.gather(1, flat.gather(1, perm).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(units, device=order.device).expand(batch, units))
    ranks = ranks.view(batch, *amap.shape[1:])
    if patch > 1:
        ranks = ranks.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :height, :width]
    return ranks


def _counts(counts, like: torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(counts, device=like.device)
    if counts.is_floating_point() or counts.ndim > 1:
        raise TypeError(f"counts must be integers (a list or a LongTensor [S]), got {counts.dtype} "
                        f"of shape {tuple(counts.shape)}")
    return counts.reshape(-1).long()


def units(ranks: torch.Tensor) -> torch.Tensor:
    """Number of ranked units (pixels or patches) of each map: ``[B]``."""
    return ranks.flatten(1).amax(1) + 1


def top_mask(ranks: torch.Tensor, counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Masks of the ``counts[s]`` most relevant units: ``bool [S, B, H, W]``, ``ranks < counts[s]``.

    Example:
        >>> m = fxai.metrics.top_mask(fxai.metrics.ranking(amap), [0, 10, 20])  # [3, B, H, W]
    """
    c = _counts(counts, ranks)
    return ranks[None] < c.view(-1, 1, 1, 1)


def bottom_mask(ranks: torch.Tensor, counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Masks of the ``counts[s]`` least relevant units: ``bool [S, B, H, W]``, ``ranks >= units - counts[s]``.

    Example:
        >>> m = fxai.metrics.bottom_mask(fxai.metrics.ranking(amap), [0, 10, 20])
    """
    c = _counts(counts, ranks)
    return ranks[None] >= (units(ranks).view(1, -1, 1, 1) - c.view(-1, 1, 1, 1))


def fraction_counts(fractions, n_units: int, *, name: str = "fractions") -> list[int]:
    """``round(f * n_units)`` for each fraction ``f`` in ``[0, 1]``."""
    fr = [float(f) for f in (fractions.tolist() if isinstance(fractions, torch.Tensor) else fractions)]
    if not fr or any(not 0.0 <= f <= 1.0 for f in fr):
        raise ValueError(f"{name} must be a non-empty sequence of fractions in [0, 1], got {fractions!r}")
    return [int(round(f * n_units)) for f in fr]


def step_counts(steps: int, n_units: int) -> list[int]:
    """``floor(k * n_units / steps)`` for ``k = 0..steps``: the units removed after each of ``steps`` steps."""
    check_positive_int(steps, name="steps")
    return [k * n_units // steps for k in range(steps + 1)]


def n_units(height: int, width: int, patch: int) -> int:
    """Number of ``patch × patch`` units in an ``height × width`` map (partial border patches count)."""
    return -(-height // patch) * -(-width // patch)
