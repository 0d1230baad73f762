"""Stacked evaluation: many copies of a batch (noise samples, path steps) as one batch axis.

Methods stack their R copies of a batch of B inputs as ``[R * B, ...]`` rows,
repeat-major, and evaluate them in chunks of ``chunk_size`` rows. For models in
eval mode, rows are independent, so the gradient of the sum of the rows'
scores is every row's own gradient: one forward and one backward over all
rows, vectorised, with ``chunk_size`` bounding peak memory. Chunking never
changes the numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
from torch.func import vjp, vmap
from torch.utils._pytree import tree_leaves, tree_map

from .checks import check_positive_int
from .structured import rows_from
from .targets import Target, check_logits


# Input elements per forward/backward pass when ``chunk_size=None``: 8 rows of 3×224×224. Bounds memory by
# default, and on the CPU a few rows at a time also run faster than one huge pass (the caches).
ROW_BUDGET = 8 * 3 * 224 * 224


def auto_chunk(chunk_size: int | None, x: torch.Tensor) -> int:
    """``chunk_size`` checked, or for ``None`` the rows of ``x``'s shape that fit :data:`ROW_BUDGET` elements.

    Every method's ``chunk_size=None`` means this: at most ``ROW_BUDGET`` input elements per pass (8 images at
    224×224, 106 at 64×64, 426 at 32×32), whatever the number of samples, steps or masks stacked.
    """
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
    if chunk_size is not None:
        return chunk_size
    return max(1, ROW_BUDGET // max(1, math.prod(x.shape[1:])))


_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("fxai_progress", default=None)


@contextlib.contextmanager
def reporting(report):
    """Within the block, every chunked pass calls ``report(done, total)`` after each chunk (rows of the stacked
    samples, steps or masks): how a command line shows progress inside a long method. Nothing is reported
    outside such a block, and the methods stay pure functions."""
    token = _PROGRESS.set(report)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def row_chunks(rows: int, chunk_size: int | None, group: int = 1):
    """``(start, stop)`` ranges covering ``rows``, each at most ``chunk_size`` rows and a multiple of ``group``
    (reported to :func:`reporting` as they are consumed, when a report is active). While the loop body runs,
    the model is told that its rows start at ``start`` (see :func:`fxai._core.structured.rows_from`)."""
    if chunk_size is None or chunk_size >= rows:
        chunks = [(0, rows)]
    else:
        size = max(group, chunk_size // group * group)
        chunks = [(a, min(a + size, rows)) for a in range(0, rows, size)]
    report = _PROGRESS.get()
    compiling = torch.compiler.is_compiling()  # dynamo cannot set context variables: no riders there
    for a, b in chunks:
        with contextlib.nullcontext() if compiling else rows_from(a):
            yield a, b
        if report is not None and len(chunks) > 1:
            report(b, rows)


def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """The chunks of rows ``parts`` as one tensor (no copy for a single chunk)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def scores(model_fn, params, xs: torch.Tensor, target: Target, *, chunk_size: int | None = None) -> torch.Tensor:
    """Target scores ``[N]`` (or ``[N, K]``) of stacked rows ``xs [N, ...]``."""
    parts = []
    for a, b in row_chunks(xs.shape[0], chunk_size, target.group):
        logits = model_fn(params, xs[a:b].clone())  # a copy: a model may write into its input
        check_logits(logits, xs[a:b])
        parts.append(target.scores(logits, a))
    return cat_rows(parts)


def plain_autograd() -> bool:
    """Whether ``torch.autograd`` can run the backward: outside ``torch.func`` transforms and ``torch.compile``.

    There it is ~1.2x faster than ``torch.func.vjp`` for the same gradients (resnet18, CPU; see
    docs/benchmarks.md); inside them, ``vjp`` is what composes.
    """
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None


def needs_graph(*trees) -> bool:
    """Whether results must stay differentiable: grad mode is on and some input tensor requires grad."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in tree_leaves(trees))


def score_gradients(score, primals: tuple, *, also=None, multi: bool = False):
    """Gradients of ``score(*primals) -> (s, aux)`` w.r.t. each primal: ``(grads, s, aux)``.

    ``s`` of shape ``[N]`` gives gradients shaped like the primals; ``multi`` scores ``[N, K]`` give
    ``[N, K, ...]``: one forward, then K backward passes vectorised over one-hot cotangents (by
    ``torch.func``, whose ``vmap`` also batches backward passes that autograd's cannot, e.g. compiled
    ones). Results are differentiable w.r.t. the primals and the tensors in ``also`` (e.g. the model's
    params), through ``torch.func`` or autograd, whenever grad mode asks for it.
    """
    if multi or not plain_autograd():
        s, pullback, aux = vjp(score, *primals, has_aux=True)
        if s.ndim == 1:
            return pullback(torch.ones_like(s)), s, aux
        grads = vmap(pullback)(_one_hots(s))
        return tuple(g.movedim(0, 1) for g in grads), s, aux
    keep = needs_graph(also, primals)
    with torch.enable_grad():
        leaves = [p if p.requires_grad else p.detach().requires_grad_() for p in primals]
        s, aux = score(*[leaf.clone() for leaf in leaves])  # a clone: the model may write into its input
        grads = backward(s, leaves, keep=keep)
    if not keep:
        s, aux = detached((s, aux))
    return grads, s, aux


def backward(s: torch.Tensor, wrt, *, keep: bool) -> tuple[torch.Tensor, ...]:
    """Gradients of the scores ``s [N]`` (or ``[N, K]``, batched over one-hot cotangents) w.r.t. the tensors
    ``wrt``, by ``torch.autograd`` (zeros for a tensor ``s`` does not depend on); ``keep`` keeps their graph."""
    if s.ndim == 1:
        grads = torch.autograd.grad(s, wrt, torch.ones_like(s), create_graph=keep, allow_unused=True)
    else:  # a callable target returning [N, K]
        grads = torch.autograd.grad(s, wrt, _one_hots(s), create_graph=keep, allow_unused=True,
                                    is_grads_batched=True)
        grads = [None if g is None else g.movedim(0, 1) for g in grads]
    return tuple(torch.zeros_like(w if s.ndim == 1 else w.unsqueeze(1).expand(-1, s.shape[1], *w.shape[1:]))
                 if g is None else g for w, g in zip(wrt, grads))


def detached(tree):
    """Every tensor of ``tree`` detached."""
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def _one_hots(s: torch.Tensor) -> torch.Tensor:
    """The K cotangents ``[K, N, K]`` that pick each of the K scores of ``s [N, K]``."""
    k = s.shape[1]
    return torch.eye(k, dtype=s.dtype, device=s.device)[:, None, :].expand(k, *s.shape)


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
            s = target.scores(logits, a)
            return s, s

        (g,), _, _ = score_gradients(score, (xs[a:b],), also=params, multi=target.multi)
        parts.append(g)
    return cat_rows(parts)


def unstack(rows: torch.Tensor, repeats: int) -> torch.Tensor:
    """``[R * B, ...] -> [R, B, ...]``."""
    return rows.reshape(repeats, rows.shape[0] // repeats, *rows.shape[1:])


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-input values ``[B]`` (or ``[B, K]``) to broadcast against ``like [B, ...]``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))


def expand_like(x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` broadcast against maps ``[B, ...]`` or ``[B, K, ...]``."""
    return x if grads.ndim == x.ndim else x.unsqueeze(1)
