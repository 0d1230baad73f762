r"""Feature-level perturbation: the machinery of the correlation-style faithfulness and axiomatic metrics.

These metrics (Bhatt et al., Alvarez-Melis & Jaakkola, Arya et al., Nguyen & Martínez, Ancona et al.) treat
every element of ``x`` (each channel of each pixel) as one feature, the convention of Quantus: a map
``[B, H, W]`` is broadcast over the channels of ``x``. :func:`feature_map` flattens a map into ``[B, N]``
feature relevances, :func:`fill_values` gives the value a removed feature takes, :func:`feature_order` the
order of the features by relevance, and :func:`block_scores` scores a long stack of perturbed copies a block
at a time (repeat-major rows, one forward pass per ``chunk_size`` rows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._core.batching import scores as stacked_scores
from .._core.batching import unstack
from .._core.checks import check_finite, check_map

BASELINES = ("black", "white", "mean")


def feature_map(attribution: torch.Tensor, x: torch.Tensor, *, absolute: bool = False) -> torch.Tensor:
    """Relevance of each element of ``x``: the map broadcast to ``x``'s shape and flattened, ``[B, N]``.

    Example:
        >>> fxai.metrics.feature_map(amap, x).shape
        torch.Size([2, 3072])
    """
    check_map(attribution, x)
    a = attribution.detach()
    a = a[:, None] if a.ndim == 3 else a
    if a.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"attribution must have 1 or {x.shape[1]} channels (those of x); got {a.shape[1]}")
    a = a.expand(x.shape).flatten(1)
    return a.abs() if absolute else a


def fill_values(baseline, x: torch.Tensor) -> torch.Tensor:
    r"""What a removed feature becomes, per element of ``x``: ``[B, N]``.

    ``"black"``: each image's minimum (Quantus's ``"black"``), ``"white"``: its maximum, ``"mean"``: its mean;
    a number; or a tensor broadcastable to ``x``.

    Example:
        >>> fxai.metrics.fill_values("black", torch.tensor([[[[0.2, 0.5]]]]))
        tensor([[0.2000, 0.2000]])
    """
    flat = x.detach().flatten(1)
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be a number, a tensor or one of {', '.join(map(repr, BASELINES))}; "
                             f"got {baseline!r}")
        v = {"black": flat.amin(1), "white": flat.amax(1), "mean": flat.mean(1)}[baseline]
        return v[:, None].expand_as(flat)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(flat, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return check_finite(baseline.to(x).expand_as(x), name="baseline").flatten(1)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}") from None
    raise TypeError(f"baseline must be a number, a tensor or one of {', '.join(map(repr, BASELINES))}; "
                    f"got {type(baseline).__name__}")


def feature_order(a: torch.Tensor, *, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, ranks)`` of feature relevances ``a [B, N]``: ``order[:, k]`` is the feature ranked ``k``
    (ties by position), ``ranks`` its inverse.

    Example:
        >>> order, ranks = fxai.metrics.feature_order(torch.tensor([[0.1, 0.9, 0.5]]), descending=True)
        >>> order.tolist(), ranks.tolist()
        ([[1, 2, 0]], [[2, 0, 1]])
    """
    order = a.argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(a.shape[1], device=a.device).expand_as(order))
    return order, ranks


def block_scores(fn, params, x: torch.Tensor, target, rows: Callable[[int, int], torch.Tensor], steps: int, *,
                 chunk_size: int) -> torch.Tensor:
    """Target scores ``[B, steps]`` of ``steps`` perturbed copies of ``x``.

    ``rows(a, b)`` returns the copies of steps ``a..b-1`` as flat features ``[b - a, B, N]``; they are made and
    scored about ``chunk_size`` rows at a time, so memory stays bounded however many steps there are.
    ``target`` is a fixed :class:`~fxai._core.targets.Target`.
    """
    batch = x.shape[0]
    block = max(1, chunk_size // batch)
    parts = []
    with torch.no_grad():
        for a in range(0, steps, block):
            b = min(steps, a + block)
            stack = rows(a, b).reshape(-1, *x.shape[1:])
            parts.append(unstack(stacked_scores(fn, params, stack, target, chunk_size=chunk_size), b - a))
    return torch.cat(parts).movedim(0, -1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Pearson correlation along the last axis: ``[...]`` (NaN where either side is constant, as SciPy).

    Example:
        >>> fxai.metrics.pearson(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]]))
        tensor([0.9934])
    """
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return (a * b).sum(-1) / den
