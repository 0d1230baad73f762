r"""Non-negative matrix factorisation in torch: :math:`V \approx W H`, :math:`W, H \ge 0`, by HALS.

Hierarchical alternating least squares (Cichocki & Phan, IEICE 2009; Gillis & Glineur, Neural
Computation 2012) updates one column of :math:`W`, then one row of :math:`H`, at a time, each by its
exact non-negative least-squares solution with the others fixed:

.. math:: W_{:k} \leftarrow \Big[W_{:k} + \frac{(V H^\top)_{:k} - W (H H^\top)_{:k}}{(H H^\top)_{kk}}\Big]_+,
          \qquad
          H_{k:} \leftarrow \Big[H_{k:} + \frac{(W^\top V)_{k:} - (W^\top W)_{k:} H}{(W^\top W)_{kk}}\Big]_+ .

This is the coordinate descent of scikit-learn's ``NMF(solver="cd")``, iteration for iteration. One
iteration costs two ``M·N·K`` products. Leading axes of ``v`` are
independent problems solved together. The relative error :math:`\lVert V - WH\rVert_F / \lVert V\rVert_F`
is computed every ``CHECK_EVERY`` iterations; a problem stops (and is then left unchanged) when those
iterations lowered it by less than ``tol`` of its value.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._core.checks import check_positive_int
from .._core.keys import Key, normal


CHECK_EVERY = 10


class NMFResult(NamedTuple):
    """``w [..., M, K]``, ``h [..., K, N]``, relative errors ``[...]`` and iterations run ``[...]`` (long)."""

    w: torch.Tensor
    h: torch.Tensor
    error: torch.Tensor
    iterations: torch.Tensor


def relative_error(v: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert V - WH \rVert_F / \lVert V \rVert_F` per problem (0 for a zero ``v``), computed directly."""
    num = torch.linalg.matrix_norm(v - w @ h)
    den = torch.linalg.matrix_norm(v)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def nmf(v: torch.Tensor, rank: int, *, iterations: int = 200, tol: float = 1e-4, key: Key | None = None,
        init: tuple[torch.Tensor, torch.Tensor] | None = None) -> NMFResult:
    r"""Factorise ``v [..., M, N] >= 0`` as ``w [..., M, rank] @ h [..., rank, N]`` with ``w, h >= 0``.

    Initialisation as scikit-learn's ``init="random"``: entries :math:`\sqrt{\bar V / K}\,|z|`,
    :math:`z \sim \mathcal N(0, 1)` drawn from ``key`` (``w`` first, then ``h``), so the same key
    gives the same factors on any device; ``init=(w0, h0)`` starts from given factors instead (no
    ``key``). ``v`` of a low-precision dtype is factorised in float32.
    Runs without autograd: the factors are constants.
    """
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim < 2:
        raise TypeError(f"v must be a floating-point tensor [..., M, N], got "
                        f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    check_positive_int(rank, name="rank")
    check_positive_int(iterations, name="iterations")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    with torch.no_grad():
        v = v.detach()
        if v.dtype not in (torch.float32, torch.float64):
            v = v.float()
        if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise ValueError("v must be finite and non-negative")
        w, h = _random_init(v, rank, key) if init is None else _given_init(v, rank, init)
        return _hals(v, w, h, iterations, float(tol))


def _random_init(v: torch.Tensor, rank: int, key: Key | None):
    *lead, m, n = v.shape
    scale = (v.mean((-2, -1)) / rank).sqrt()[..., None, None]
    draw = normal(key, (*lead, m * rank + rank * n), v).abs_()  # one stream: w first, then h
    return (draw[..., :m * rank].reshape(*lead, m, rank).mul_(scale),
            draw[..., m * rank:].reshape(*lead, rank, n).mul_(scale))


def _given_init(v: torch.Tensor, rank: int, init):
    if not isinstance(init, (tuple, list)) or len(init) != 2 or not all(isinstance(t, torch.Tensor) for t in init):
        raise TypeError("init must be a pair of tensors (w0 [..., M, rank], h0 [..., rank, N])")
    *lead, m, n = v.shape
    w, h = init
    if w.shape != (*lead, m, rank) or h.shape != (*lead, rank, n):
        raise ValueError(f"init: expected w0 {(*lead, m, rank)} and h0 {(*lead, rank, n)}, "
                         f"got {tuple(w.shape)} and {tuple(h.shape)}")
    if bool((w < 0).any()) or bool((h < 0).any()):
        raise ValueError("init: w0 and h0 must be non-negative")
    return w.detach().to(v).clone(), h.detach().to(v).clone()


def _hals(v: torch.Tensor, w: torch.Tensor, h: torch.Tensor, iterations: int, tol: float) -> NMFResult:
    lead = v.shape[:-2]
    v, w, h = v.reshape(-1, *v.shape[-2:]), w.reshape(-1, *w.shape[-2:]), h.reshape(-1, *h.shape[-2:])
    tiny = torch.finfo(v.dtype).tiny
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    all_active = True
    done = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
    previous = relative_error(v, w, h)
    for i in range(1, iterations + 1):
        w_old, h_old = (None, None) if all_active else (w.clone(), h.clone())
        _sweep(v @ h.transpose(-1, -2), h @ h.transpose(-1, -2), w, tiny, columns=True)
        _sweep(w.transpose(-1, -2) @ v, w.transpose(-1, -2) @ w, h, tiny, columns=False)
        if not all_active:  # problems that have stopped keep their factors
            sel = active[:, None, None]
            w, h = torch.where(sel, w, w_old), torch.where(sel, h, h_old)
        done += active
        if tol > 0 and i % CHECK_EVERY == 0:
            error = relative_error(v, w, h)
            active = active & (previous - error > tol * previous)
            previous = torch.where(active, error, previous)
            all_active = bool(active.all())
            if not all_active and not bool(active.any()):
                break
    return NMFResult(w.reshape(*lead, *w.shape[-2:]), h.reshape(*lead, *h.shape[-2:]),
                     relative_error(v, w, h).reshape(lead), done.reshape(lead))


def _sweep(cross: torch.Tensor, gram: torch.Tensor, f: torch.Tensor, tiny: float, *, columns: bool) -> None:
    """One HALS pass, in place, over the columns of ``f [P, M, K]`` (or the rows of ``f [P, K, N]``).

    ``cross`` is ``V H^T`` (or ``W^T V``) and ``gram`` is ``H H^T`` (or ``W^T W``) of the other factor.
    """
    inverse = gram.diagonal(dim1=-2, dim2=-1).clamp_min(tiny).reciprocal()[:, :, None]
    for k in range(f.shape[-1 if columns else -2]):
        if columns:
            step = torch.baddbmm(cross[:, :, k:k + 1], f, gram[:, :, k:k + 1], alpha=-1)
            f[:, :, k:k + 1].add_(step.mul_(inverse[:, k:k + 1])).clamp_(min=0)
        else:
            step = torch.baddbmm(cross[:, k:k + 1], gram[:, k:k + 1], f, alpha=-1)
            f[:, k:k + 1].add_(step.mul_(inverse[:, k:k + 1])).clamp_(min=0)
