"""The linear system of ROAD's noisy linear imputation, solved by conjugate gradients preconditioned by an
aggregation multigrid V-cycle with Galerkin coarse operators (see :class:`fxai.metrics.noisy_linear`)."""

from __future__ import annotations


import torch
import torch.nn.functional as F


def linear_fill(x: torch.Tensor, mask: torch.Tensor, *, tol: float = 1e-6, max_iter: int | None = None,
                block: int = 4) -> torch.Tensor:
    """Solve ROAD's linear system for images ``x [N, C, H, W]`` and masks ``[N, 1, H, W]`` (``True`` = unknown).

    The ``C`` channels of an image share its mask, hence the matrix. Systems are
    solved ``block`` images at a time: enough to share the per-operation cost of
    the small coarse grids, few enough for the fine grid's vectors to stay in
    the CPU cache. Returns ``[N, C, H, W]`` holding the solution on the mask
    and 0 elsewhere.
    """
    return torch.cat([_solve(xb, mb, tol, max_iter) for xb, mb in zip(x.split(block), mask.split(block))])


def _solve(x, mask, tol, max_iter):
    """Conjugate gradients preconditioned by a multigrid V-cycle (:class:`_Multigrid`), from zero.

    ``x [n, c, h, w]``, ``mask [n, 1, h, w]`` (``True`` = unknown); returns the solution on the mask, 0 elsewhere.
    The grid is padded at the bottom and right (with pixels outside the image: neither unknown nor neighbours)
    to a size that halves evenly down to the coarsest level.
    """
    n, c, h, w = x.shape
    out_dtype = x.dtype
    step = 1
    while -(-h // step) * -(-w // step) > _Multigrid.coarsest:
        step *= 2
    pad = (0, -w % step, 0, -h % step)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, m = F.pad(x.to(dtype), pad), F.pad(mask.to(dtype), pad)
    mg = _Multigrid(m, F.pad(torch.ones(1, 1, h, w, dtype=dtype, device=x.device), pad))
    rhs = _neighbours(x * (1 - m)).mul_(m)
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    z = mg.cycle(r)
    p = z.clone()
    rz, rr = _dot(r, z), _dot(r, r)
    stop = tol**2 * rr
    tiny = torch.finfo(dtype).tiny
    for _ in range(max_iter if max_iter is not None else h + w):
        active = rr > stop
        if not bool(active.any()):
            break
        ap = mg.matvec(p)
        alpha = torch.where(active, rz / _dot(p, ap).clamp_min(tiny), 0)
        v.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        z = mg.cycle(r)
        rz_new, rr = _dot(r, z), _dot(r, r)
        p.mul_(rz_new / rz.clamp_min(tiny)).add_(z)
        rz = rz_new
    return v[..., :h, :w].to(out_dtype)


class _Multigrid:
    """A symmetric multigrid V-cycle for ROAD's masked system, the preconditioner of :func:`_solve`.

    Level ``l + 1`` halves the grid: each coarse pixel aggregates a 2×2 block, and is unknown when any
    of its fine pixels is. The prolongation ``P`` copies a coarse value onto the unknown pixels of its
    block, the restriction is ``P^T`` (block sums) and the coarse operator is Galerkin's ``P^T A P``: a
    9-point stencil with a coefficient per pixel, so that known pixels scattered among the removed ones
    keep anchoring the coarse problem. Smoothing: one damped Jacobi sweep before and one after the
    coarse correction, which is scaled by ``gamma`` (aggregates under-estimate smooth errors); the
    coarsest level (at most ``coarsest`` pixels) is solved exactly through its inverse.
    """

    omega, gamma, coarsest = 0.8, 1.5, 256

    def __init__(self, mask: torch.Tensor, inside: torch.Tensor):
        self.diag = _neighbours(inside)  # A v = mask * (diag * v - _neighbours(v)) on the fine level
        self.masks, self.stencils, self.scales = [mask], [None], [self.omega * mask / (self.diag - 4).clamp_min(1)]
        stencil = _fine_stencil(mask, self.diag)
        while mask.shape[-2] * mask.shape[-1] > self.coarsest:
            stencil = _coarsen(stencil)
            centre = stencil[4]  # > 0 exactly where the aggregate holds an unknown pixel
            mask = (centre > 0).to(centre.dtype)
            self.masks.append(mask)
            self.stencils.append(stencil)
            self.scales.append(self.omega * mask / centre.clamp_min(1))
        anchored = (self.masks[0] < inside).flatten(1).any(1)  # some pixel of the image is known
        self.inverse = _coarsest_inverse(stencil, mask, anchored)

    def matvec(self, v, level: int = 0):
        if level == 0:
            return (self.diag * v).sub_(_neighbours(v)).mul_(self.masks[0])
        return _apply(self.stencils[level], v)

    def cycle(self, r, level: int = 0):
        """The V-cycle's approximation of ``A_level^{-1} r`` (``r`` zero outside the level's mask)."""
        if level == len(self.masks) - 1:
            n, c, h, w = r.shape
            return torch.bmm(r.reshape(n, c, h * w), self.inverse).view(n, c, h, w)
        scale = self.scales[level]
        e = scale * r
        residual = r - self.matvec(e, level)
        pairs = residual[..., 0::2, :] + residual[..., 1::2, :]
        coarse = self.cycle(pairs[..., 0::2] + pairs[..., 1::2], level + 1)
        e.add_(coarse.repeat_interleave(2, -1).repeat_interleave(2, -2), alpha=self.gamma).mul_(self.masks[level])
        return e.addcmul_(scale, r - self.matvec(e, level))


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # stencil entry k couples pixel i to i + offset k


def _fine_stencil(mask, diag):
    """The fine operator as 9 coefficient maps ``[9, n, 1, H, W]``: ``A[i, i + offset]`` between unknown pixels."""
    padded = F.pad(mask, (1, 1, 1, 1))
    return torch.stack([(diag - 4) * mask if dy == dx == 0 else
                        mask * _shifted(padded, dy, dx) * (-2.0 if dy * dx == 0 else -1.0) for dy, dx in _OFFSETS])


def _coarsen(stencil):
    """Galerkin's ``P^T A P`` for 2×2 aggregates: fine pixel ``(2I + a, 2J + b)`` and offset ``(dy, dx)`` add to
    coarse pixel ``(I, J)`` at offset ``((a + dy) // 2, (b + dx) // 2)``."""
    out = stencil.new_zeros(*stencil.shape[:3], stencil.shape[3] // 2, stencil.shape[4] // 2)
    for a in (0, 1):
        for b in (0, 1):
            for k, (dy, dx) in enumerate(_OFFSETS):
                out[((a + dy) // 2 + 1) * 3 + (b + dx) // 2 + 1].add_(stencil[k, ..., a::2, b::2])
    return out


def _apply(stencil, v):
    """``(A v)_i = sum_k stencil[k]_i v_{i + offset k}`` (zero outside the grid)."""
    padded = F.pad(v, (1, 1, 1, 1))
    out = stencil[4] * v
    for k, (dy, dx) in enumerate(_OFFSETS):
        if k != 4:
            out.addcmul_(stencil[k], _shifted(padded, dy, dx))
    return out


def _shifted(padded, dy, dx):
    """``v_{i + (dy, dx)}`` at every pixel ``i`` of ``v``, from ``v`` zero-padded by one pixel on each side."""
    h, w = padded.shape[-2] - 2, padded.shape[-1] - 2
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _coarsest_inverse(stencil, mask, anchored):
    """``[n, HW, HW]``: the inverse of the coarsest operator on its unknowns, 0 on known rows and columns.

    Computed in float64 (on the CPU for devices without it): known pixels get an identity row, and so does
    every pixel of an image with no known pixel (its system is singular, but its right-hand side is 0)."""
    (_, n, _, h, w), target_device = stencil.shape, stencil.device
    device = torch.device("cpu") if stencil.device.type == "mps" else stencil.device
    stencil, mask, anchored = (t.to(device) for t in (stencil, mask, anchored))
    idx = torch.arange(h * w, device=device).view(h, w)
    a = torch.zeros(n, h * w, h * w, dtype=torch.float64, device=device)
    for k, (dy, dx) in enumerate(_OFFSETS):
        rows = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
        cols = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
        a[:, idx[rows].reshape(-1), idx[cols].reshape(-1)] = stencil[k, :, 0, rows[0], rows[1]].reshape(n, -1).double()
    a.diagonal(dim1=1, dim2=2).add_(mask.flatten(1) == 0)
    a[~anchored] = torch.eye(h * w, dtype=a.dtype, device=device)
    factor, info = torch.linalg.cholesky_ex(a)
    inverse = torch.cholesky_inverse(factor)
    if bool((info > 0).any()):  # numerically semi-definite: a pseudo-inverse is as good a coarse solve
        inverse[info > 0] = torch.linalg.pinv(a[info > 0], hermitian=True)
    unknown = mask.flatten(1).to(a.dtype)
    return inverse.mul_(unknown[:, :, None] * unknown[:, None, :]).to(target_device, stencil.dtype)


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """``([1, 2, 1] outer [1, 2, 1]) * v`` per image, zero outside: 12 × the weighted sum of each pixel's 8
    neighbours (weights 1/6 axial, 1/12 diagonal) plus 4 × the pixel itself."""
    t = v * 2
    t[..., 1:, :] += v[..., :-1, :]
    t[..., :-1, :] += v[..., 1:, :]
    out = t * 2
    out[..., 1:] += t[..., :-1]
    out[..., :-1] += t[..., 1:]
    return out


def _dot(a, b):
    """Per-system dot products ``[n, c, 1, 1]`` of ``[n, c, H, W]`` tensors."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))[..., None, None]
