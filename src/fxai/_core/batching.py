"""Stacked evaluation: many copies of a batch (noise samples, path steps) as one batch axis.

Methods stack their R copies of a batch of B inputs as ``[R * B, ...]`` rows,
repeat-major, and evaluate them in chunks of ``chunk_size`` rows. For models in
eval mode, rows are independent, so the gradient of the sum of the rows'
scores is every row's own gradient: one forward and one backward over all
rows, vectorised, with ``chunk_size`` bounding peak memory. Chunking never
changes the numbers.
"""

from __future__ import annotations

import torch
from torch.func import vjp, vmap

from .targets import Target, check_logits


def row_chunks(rows: int, chunk_size: int | None, group: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``rows``, each at most ``chunk_size`` rows and a multiple of ``group``."""
    if chunk_size is None or chunk_size >= rows:
        return [(0, rows)]
    size = max(group, chunk_size // group * group)
    return [(a, min(a + size, rows)) for a in range(0, rows, size)]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def scores(model_fn, params, xs: torch.Tensor, target: Target, *, chunk_size: int | None = None) -> torch.Tensor:
    """Target scores ``[N]`` (or ``[N, K]``) of stacked rows ``xs [N, ...]``."""
    parts = []
    for a, b in row_chunks(xs.shape[0], chunk_size, target.group):
        logits = model_fn(params, xs[a:b])
        check_logits(logits, xs[a:b])
        parts.append(target.scores(logits, a))
    return _cat(parts)


def input_gradients(model_fn, params, xs: torch.Tensor, target: Target, *,
                    chunk_size: int | None = None) -> torch.Tensor:
    """Gradients of the target scores w.r.t. stacked rows ``xs [N, ...]``.

    Returns ``[N, ...]``, or ``[N, K, ...]`` when the target has K scores per
    row: the K backward passes share one forward and run as one vmapped
    backward. Differentiable w.r.t. ``params`` and ``xs`` (torch.func or autograd).
    """
    parts = []
    for a, b in row_chunks(xs.shape[0], chunk_size, target.group):
        def score(rows, a=a):
            logits = model_fn(params, rows)
            check_logits(logits, rows)
            return target.scores(logits, a)

        s, pullback = vjp(score, xs[a:b])
        if s.ndim == 1:
            (g,) = pullback(torch.ones_like(s))
        else:
            k = s.shape[1]
            onehot = torch.eye(k, dtype=s.dtype, device=s.device)[:, None, :].expand(k, *s.shape)
            (g,) = vmap(pullback)(onehot)
            g = g.movedim(0, 1)
        parts.append(g)
    return _cat(parts)


def unstack(rows: torch.Tensor, repeats: int) -> torch.Tensor:
    """``[R * B, ...] -> [R, B, ...]``."""
    return rows.reshape(repeats, rows.shape[0] // repeats, *rows.shape[1:])


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-input values ``[B]`` (or ``[B, K]``) to broadcast against ``like [B, ...]``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))
