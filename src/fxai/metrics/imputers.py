"""Imputers: what replaces the removed pixels of a perturbation metric.

An imputer is a callable ``imputer(x, masks, *, key=None) -> [S, B, C, H, W]``
taking a batch ``x [B, C, H, W]`` and a stack of masks ``masks [S, B, H, W]``
(``True`` = replace) and returning one imputed copy of ``x`` per mask. Random
imputers draw their noise once per image (shape of ``x``) from ``key`` and use
it for every mask of the stack, so the same key gives the same copies however
the masks are split into blocks, and pixels removed at one step keep their
value at the next (Samek et al.'s iterative perturbation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._core import keys


class Imputer:
    """A named imputer ``(x, masks, *, key=None) -> [S, B, C, H, W]`` (see the module docstring)."""

    randomised = False

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, *, key=None) -> torch.Tensor:
        _check(x, masks)
        return self.impute(x, masks, key=key)

    def impute(self, x, masks, *, key=None):  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class _Fill(Imputer):
    """Replace masked pixels by a mask-independent fill image ``[B, C, H, W]``."""

    def fill(self, x, key):  # pragma: no cover - overridden
        raise NotImplementedError

    def impute(self, x, masks, *, key=None):
        return torch.where(masks[:, :, None], self.fill(x, key), x)


class constant(_Fill):
    """Replace removed pixels by ``value`` (a number, or a tensor ``[C]`` of per-channel values).

    Example:
        >>> imp = fxai.metrics.constant(0.0)
        >>> xs = imp(x, fxai.metrics.top_mask(fxai.metrics.ranking(amap), [10]))  # [1, B, C, H, W]
    """

    def __init__(self, value: float | torch.Tensor = 0.0):
        if not isinstance(value, (int, float, torch.Tensor)) or isinstance(value, bool):
            raise TypeError(f"constant(value): expected a number or a tensor [C], got {type(value).__name__}")
        self.value = value

    def fill(self, x, key):
        value = torch.as_tensor(self.value, dtype=x.dtype, device=x.device)
        if value.ndim == 1:
            if value.shape[0] != x.shape[1]:
                raise ValueError(f"constant(value): a per-channel value needs {x.shape[1]} entries, "
                                 f"got {value.shape[0]}")
            value = value.view(1, -1, 1, 1)
        elif value.ndim != 0:
            raise ValueError(f"constant(value): expected a number or a tensor [C], got shape {tuple(value.shape)}")
        return value.expand_as(x)


class channel_mean(_Fill):
    """Replace removed pixels by the mean of each channel over the whole image.

    Example:
        >>> imp = fxai.metrics.channel_mean()
    """

    def fill(self, x, key):
        return x.mean((2, 3), keepdim=True).expand_as(x)


class blur(_Fill):
    r"""Replace removed pixels by a Gaussian blur of the image (the insertion baseline of Petsiuk et al. 2018).

    Separable kernel :math:`\propto e^{-t^2 / 2\sigma^2}`, ``t = -r..r`` with
    ``kernel_size = 2r + 1`` (default ``2 ceil(3 sigma) + 1``), borders padded
    by replication.

    Example:
        >>> imp = fxai.metrics.blur(sigma=5.0, kernel_size=11)
    """

    def __init__(self, sigma: float = 5.0, kernel_size: int | None = None):
        if not isinstance(sigma, (int, float)) or sigma <= 0:
            raise ValueError(f"blur(sigma): expected a positive number, got {sigma!r}")
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3 * sigma) + 1
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur(kernel_size): expected a positive odd int, got {kernel_size!r}")
        self.sigma, self.kernel_size = float(sigma), kernel_size

    def fill(self, x, key):
        return gaussian_blur(x, sigma=self.sigma, kernel_size=self.kernel_size)


def gaussian_blur(x: torch.Tensor, *, sigma: float, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]`` per channel, replicate padding."""
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t.square() / (2 * sigma**2))
    k = k / k.sum()
    b, c, h, w = x.shape
    y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.view(b, c, h, w)


class uniform_noise(_Fill):
    """Replace removed pixels by uniform noise in ``[low, high)`` (MoRF/LeRF of Samek et al. 2017).

    ``low``/``high`` default to each image's own minimum and maximum. Needs ``key``.

    Example:
        >>> imp = fxai.metrics.uniform_noise(0.0, 1.0)
        >>> xs = imp(x, masks, key=0)
    """

    randomised = True

    def __init__(self, low: float | None = None, high: float | None = None):
        if (low is None) != (high is None):
            raise ValueError("uniform_noise(low, high): give both bounds or neither (then each image's range is used)")
        if low is not None and not low < high:
            raise ValueError(f"uniform_noise(low, high): expected low < high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def fill(self, x, key):
        u = keys.uniform(key, x.shape, x)
        if self.low is None:
            flat = x.flatten(1)
            lo = flat.amin(1).view(-1, 1, 1, 1)
            return lo + (flat.amax(1).view(-1, 1, 1, 1) - lo) * u
        return self.low + (self.high - self.low) * u


class noisy_linear(Imputer):
    r"""ROAD's noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", ICML 2022).

    Each removed pixel takes the weighted mean of its 8 neighbours inside the
    image (weights 1/6 axial, 1/12 diagonal), removed neighbours being unknowns
    too: per image and channel, the sparse symmetric system

    .. math:: s_i v_i - \sum_{j \in N(i) \cap M} w_{ij} v_j = \sum_{j \in N(i) \setminus M} w_{ij} x_j,
              \quad s_i = \sum_{j \in N(i)} w_{ij}

    over the removed set :math:`M`, then ``noise`` × standard normal noise is
    added to the imputed pixels. All systems of a stack (masks × images ×
    channels) are solved by conjugate gradients with the 3×3 stencil as the
    matrix product, preconditioned by an aggregation multigrid V-cycle with
    Galerkin coarse operators (four images at a time): 3–10 iterations on
    224×224 images, scattered or compact removed sets alike. ``tol`` is the
    relative residual at which a system counts as solved (the default 1e-4
    leaves errors below 1e-3, 6e-5 root-mean-square, on 224×224 images in
    float32, far below ROAD's own noise; take 1e-7 in float64 to match a
    direct sparse solve); ``max_iter`` bounds the iterations (default ``H + W``).
    An image whose every pixel is removed is filled with 0.

    Example:
        >>> imp = fxai.metrics.noisy_linear(noise=0.01)
        >>> xs = imp(x, masks, key=0)
    """

    def __init__(self, noise: float = 0.01, *, tol: float = 1e-4, max_iter: int | None = None):
        if not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"noisy_linear(noise): expected a non-negative number, got {noise!r}")
        if not isinstance(tol, (int, float)) or tol <= 0:
            raise ValueError(f"noisy_linear(tol): expected a positive number, got {tol!r}")
        self.noise, self.tol, self.max_iter = float(noise), float(tol), max_iter

    @property
    def randomised(self):
        return self.noise > 0

    def impute(self, x, masks, *, key=None):
        s, b, c, h, w = masks.shape[0], *x.shape
        m = masks.reshape(s * b, 1, h, w)
        xs = x[None].expand(s, b, c, h, w).reshape(s * b, c, h, w)
        v = linear_fill(xs, m, tol=self.tol, max_iter=self.max_iter)
        if self.noise > 0:
            v = v + self.noise * keys.normal(key, x.shape, x).repeat(s, 1, 1, 1)
        return torch.where(m, v, xs).view(s, b, c, h, w)


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


def _check(x, masks) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"imputer: x must be a floating batch [B, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.ndim != 4 \
            or masks.shape[1] != x.shape[0] or masks.shape[2:] != x.shape[2:]:
        got = f"{tuple(masks.shape)} {masks.dtype}" if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"imputer: masks must be a bool tensor [S, B, H, W] = [S, {x.shape[0]}, {x.shape[2]}, "
                         f"{x.shape[3]}], got {got}")


IMPUTERS = {"constant": constant, "mean": channel_mean, "blur": blur, "uniform": uniform_noise,
            "linear": noisy_linear}


def as_imputer(imputer, *, name: str = "imputer"):
    """An imputer from a callable or a name: ``"constant"`` (0), ``"mean"``, ``"blur"``, ``"uniform"``, ``"linear"``."""
    if isinstance(imputer, str):
        if imputer not in IMPUTERS:
            raise ValueError(f"{name} must be an imputer or one of {', '.join(map(repr, IMPUTERS))}; got {imputer!r}")
        return IMPUTERS[imputer]()
    if not callable(imputer):
        raise TypeError(f"{name} must be a callable (x, masks, *, key) -> [S, B, C, H, W] or a name, "
                        f"got {type(imputer).__name__}")
    return imputer
