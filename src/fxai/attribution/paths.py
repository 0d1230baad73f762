"""Path methods beyond the straight line: Blur IG (a path of Gaussian blurs) and Guided IG (an adaptive path)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._core.batching import auto_chunk, input_gradients, scores, unstack
from .._core.checks import as_baseline, check_choice, check_input, check_positive_int
from .._core.docs import documented
from .._core.targets import Target, TargetLike, as_target
from .integrated import RULES, path_rule

TRUNCATE = 4.0  # the kernel radius in sigmas, as scipy.ndimage.gaussian_filter


def blur_matrices(sigmas, size: int, *, truncate: float = TRUNCATE, derivative: bool = False) -> torch.Tensor:
    r"""Gaussian blurs along one image axis as matrices ``[S, size, size]`` (float64), one per sigma.

    Row ``i`` of matrix ``s`` holds :math:`k_s(j - i)`, the kernel of ``scipy.ndimage.gaussian_filter``:
    :math:`k(d) \propto e^{-d^2 / 2\sigma^2}` for :math:`|d| \le \lfloor 4\sigma + 1/2 \rfloor`, normalised
    to sum to 1, zero padding outside the image (``mode="constant"``). Sigma 0 is the identity. An image
    ``X [H, W]`` blurs as ``K_H X K_Wᵀ``. With ``derivative``, the matrices of
    :math:`\partial k / \partial\sigma = k\,(d^2 - \sum_e k(e)\, e^2) / \sigma^3` (the radius held fixed).

    Example:
        >>> k = blur_matrices([0.0, 2.0], 16)
        >>> k.shape, bool(torch.equal(k[0], torch.eye(16, dtype=torch.float64)))
        (torch.Size([2, 16, 16]), True)
    """
    sigmas = [float(s) for s in sigmas]
    if any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ValueError(f"sigmas must be finite and non-negative, got {sigmas}")
    d = (torch.arange(size, dtype=torch.float64)[None, :] - torch.arange(size, dtype=torch.float64)[:, None])
    out = []
    for s in sigmas:
        if s == 0:
            out.append(torch.zeros(size, size, dtype=torch.float64) if derivative
                       else torch.eye(size, dtype=torch.float64))
            continue
        radius = int(truncate * s + 0.5)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        phi = torch.exp(-0.5 / (s * s) * offsets ** 2)
        k = torch.exp(-0.5 / (s * s) * d ** 2) / phi.sum()
        if derivative:
            k = k * (d ** 2 - (phi * offsets ** 2).sum() / phi.sum()) / s ** 3
        out.append(torch.where(d.abs() <= radius, k, torch.zeros(())))
    return torch.stack(out)


def blurred(x: torch.Tensor, sigmas, *, derivative: bool = False) -> torch.Tensor:
    """``x [B, C, H, W]`` blurred by each sigma: ``[S, B, C, H, W]`` in float64 (each channel alone, zero
    padding); with ``derivative``, its exact derivative with respect to sigma (the kernel's radius held)."""
    def both(deriv):
        kh = blur_matrices(sigmas, x.shape[-2], derivative=deriv).to(x.device)
        return kh, kh if x.shape[-1] == x.shape[-2] else blur_matrices(sigmas, x.shape[-1], derivative=deriv).to(
            x.device)

    wide = x.to(torch.float64)  # float64 whatever x's dtype: the finite difference divides by grad_step
    kh, kw = both(False)
    if not derivative:
        return torch.einsum("sbciw,sjw->sbcij", torch.einsum("sih,bchw->sbciw", kh, wide), kw)
    dh, dw = both(True)
    return (torch.einsum("sbciw,sjw->sbcij", torch.einsum("sih,bchw->sbciw", dh, wide), kw)
            + torch.einsum("sbciw,sjw->sbcij", torch.einsum("sih,bchw->sbciw", kh, wide), dw))


SPACINGS = ("linear", "sqrt")


def blur_rule(method: str, steps: int, max_sigma: float, spacing: str = "linear"):
    r"""Sigmas :math:`\sigma_s` and signed weights :math:`\Delta_s` for :math:`\int_{\sigma(0)}^{\sigma(1)} g\,d\sigma`.

    The path runs from the blurred image (:math:`\alpha = 0`) to the image (:math:`\alpha = 1`):
    :math:`\sigma(\alpha) = \sigma_{\max}(1 - \alpha)` (``"linear"``) or
    :math:`\sqrt{\sigma_{\max}(1 - \alpha)}` (``"sqrt"``, as PAIR's ``sqrt=True``: its blur ends at
    :math:`\sqrt{\sigma_{\max}}`). Riemann rules weight each cell by its change of sigma (a Riemann–Stieltjes
    sum, exact in total: :math:`\sum_s \Delta_s = \sigma(1) - \sigma(0)`); the trapezoid rule does the same
    on its points; Gauss–Legendre weights by :math:`w_s\,\sigma'(\alpha_s)`. PAIR's Blur IG is
    ``"riemann_right"`` (the image, :math:`\sigma = 0`, is its first point). Returned in float64.

    Example:
        >>> sig, w = blur_rule("riemann_right", 4, 50.0)
        >>> sig.tolist(), w.tolist()
        ([37.5, 25.0, 12.5, 0.0], [-12.5, -12.5, -12.5, -12.5])
    """
    check_choice(method, RULES, name="method")
    check_choice(spacing, SPACINGS, name="spacing")
    check_positive_int(steps, name="steps")
    if not isinstance(max_sigma, (int, float)) or isinstance(max_sigma, bool) or not max_sigma > 0 \
            or not math.isfinite(max_sigma):
        raise ValueError(f"max_sigma must be a positive number, got {max_sigma!r}")

    def sigma(a):
        s = max_sigma * (1 - a)
        return s.clamp_min(0).sqrt() if spacing == "sqrt" else s

    alphas, weights = path_rule(method, steps)
    if method.startswith("riemann_") and method != "riemann_trapezoid":
        edges = torch.arange(steps + 1, dtype=torch.float64) / steps
        return sigma(alphas), sigma(edges[1:]) - sigma(edges[:-1])
    if method == "riemann_trapezoid":
        cells = sigma(alphas[1:]) - sigma(alphas[:-1])
        return sigma(alphas), torch.cat([cells, cells.new_zeros(1)]) / 2 + torch.cat([cells.new_zeros(1), cells]) / 2
    slope = -max_sigma if spacing == "linear" else -max_sigma / (2 * sigma(alphas))
    return sigma(alphas), weights * slope


@documented(max_sigma="the largest blur's Gaussian sigma, in pixels (the path's start).",
            steps="number of path points.",
            grad_step="sigma step of the finite difference :math:`\\partial L / \\partial\\sigma \\approx "
                      "(L(\\sigma + h) - L(\\sigma)) / h` (PAIR's), or ``None`` for the exact derivative of the "
                      "kernel (:func:`blur_matrices`).",
            spacing="``\"linear\"`` (sigma linear in the path parameter) or ``\"sqrt\"`` (see :func:`blur_rule`).",
            method="a rule of :func:`fxai.path_rule`; ``\"riemann_right\"`` is PAIR's sum.",
            return_error="also return the completeness error :math:`\\sum \\mathrm{BlurIG} - (f_c(x) - "
                         "f_c(L(\\sigma(0))))`, shape ``[B]`` (or ``[B, K]``).")
def blur_ig(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, max_sigma: float = 50.0,
            steps: int = 100, grad_step: float | None = 0.01, spacing: str = "linear", method: str = "riemann_right",
            chunk_size: int | None = None, return_error: bool = False):
    r"""Blur IG: Integrated Gradients along Gaussian blurs :math:`L(x, \sigma)`, from :math:`\sigma_{\max}` to 0.

    .. math:: \mathrm{BlurIG}(x) = \int_{\sigma_{\max}}^{0} \frac{\partial L(x, \sigma)}{\partial \sigma}
              \odot \nabla f_c\big(L(x, \sigma)\big)\, d\sigma
              \approx \sum_s \Delta_s \, \frac{L(x, \sigma_s + h) - L(x, \sigma_s)}{h}
              \odot \nabla f_c\big(L(x, \sigma_s)\big)

    Xu et al., "Attribution in Scale and Space", CVPR 2020. Each channel is blurred alone, with
    ``scipy.ndimage.gaussian_filter``'s kernel and zero padding (as PAIR's ``saliency`` 0.2), here as two
    matrix products per sigma, for all path points of a chunk at once; ``chunk_size`` rows of path points
    per forward/backward pass. With the defaults this is PAIR's ``BlurIG``. Completeness
    :math:`\sum \mathrm{BlurIG} \approx f_c(x) - f_c(L(x, \sigma_{\max}))` up to the quadrature and
    finite-difference errors.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), and the error if asked.

    Example:
        >>> big = fxai.blur_ig(model_fn, params, x, 3, max_sigma=8.0, steps=16)
    """
    check_input(x)
    check_input(x, exact_ndim=4)
    if grad_step is not None and (not isinstance(grad_step, (int, float)) or isinstance(grad_step, bool)
                                  or not grad_step > 0):
        raise ValueError(f"grad_step must be a positive number or None (the exact derivative), got {grad_step!r}")
    sigmas, deltas = blur_rule(method, steps, max_sigma, spacing)
    chunk_size = auto_chunk(chunk_size, x)
    target = as_target(target, x).fixed(model_fn, params, x)
    batch = x.shape[0]
    per_pass = max(1, chunk_size // batch)  # path points per pass (all of a point's rows together)
    total = 0
    for a in range(0, steps, per_pass):
        sig = sigmas[a:a + per_pass].tolist()
        wide = blurred(x, sig)
        if grad_step is None:
            slope = blurred(x, sig, derivative=True)
        else:
            slope = (blurred(x, [s + grad_step for s in sig]) - wide) / grad_step
        path = wide.to(x.dtype)
        grads = unstack(input_gradients(model_fn, params, path.flatten(0, 1), target, chunk_size=chunk_size),
                        len(sig))
        weighted = slope * deltas[a:a + per_pass].to(x.device).view(-1, 1, 1, 1, 1)
        if grads.ndim > weighted.ndim:  # K targets: [S, B, K, ...]
            weighted = weighted.unsqueeze(2)
        total = total + (weighted * grads.double()).sum(0)  # summed in float64: the terms cancel
    total = total.to(x.dtype)
    if not return_error:
        return total
    start_sigma = math.sqrt(max_sigma) if spacing == "sqrt" else float(max_sigma)
    start = blurred(x, [start_sigma])[0].to(x.dtype)  # L(x, sigma(0)), the path's start
    both = scores(model_fn, params, torch.cat([x, start]), target, chunk_size=chunk_size)
    sums = total.flatten(start_dim=both.ndim).sum(-1)
    return total, sums - (both[:batch] - both[batch:])


def _isclose(a: torch.Tensor, b: torch.Tensor, tol: float) -> torch.Tensor:
    """``math.isclose(a, b, rel_tol=tol, abs_tol=tol)`` elementwise."""
    return (a - b).abs() <= torch.maximum(tol * torch.maximum(a.abs(), b.abs()), torch.full_like(a, tol))


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value (1-based) of each row of ``values [P, N]``, as ``[P, 1]``: numpy's
    partition on the CPU (several times faster than ``kthvalue``), ``kthvalue`` elsewhere."""
    if values.device.type == "cpu":
        try:
            array = values.numpy()
        except RuntimeError:  # a tensor wrapped by a torch.func transform
            pass
        else:
            return torch.from_numpy(np.partition(array, k - 1, axis=1)[:, k - 1:k])
    return values.kthvalue(k, dim=1, keepdim=True).values


def _paths_of(x: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target, int]:
    """One path per (input, target column): rows ``[K * B, ...]`` (column-major) and one target per row."""
    if not target.multi:
        return x, target, 1
    k = target.index.shape[1]
    rows = x.repeat(k, *([1] * (x.ndim - 1)))
    return rows, Target(rows.shape[0], index=target.index.t().reshape(-1, 1)), k


@documented(steps="number of path steps (gradient evaluations).",
            fraction="fraction of the features moved at each step: those with the smallest gradient magnitude.",
            max_dist="how far (in :math:`\\alpha`, a fraction of the path) a feature may run ahead of or fall "
                     "behind the straight line: 0 is IG's straight path, 1 unbounded.",
            baseline="a number, a tensor broadcastable to ``x`` or a callable ``x -> baseline`` (default "
                     "``{default}``, PAIR's black image).")
def guided_ig(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, baseline=0.0, steps: int = 200,
              fraction: float = 0.25, max_dist: float = 0.02, chunk_size: int | None = None) -> torch.Tensor:
    r"""Guided IG: Integrated Gradients along an adaptive path that moves the least important features first.

    At step :math:`t` the path point :math:`\gamma` must reach the L1 distance
    :math:`(1 - t/T)\,\lVert x - b\rVert_1` from ``x``. Features that fell behind
    :math:`\alpha_t - \delta` (``max_dist``) are pulled up to it; then, repeatedly, the ``fraction`` of
    features with the smallest :math:`|\nabla f_c(\gamma)|` (among those short of
    :math:`\alpha_t + \delta`) move toward it until the distance is reached. The attribution sums the
    moves times the gradient at the step's start:

    .. math:: \mathrm{GuidedIG}(x) = \sum_{t=1}^{T} (\gamma_t - \gamma_{t-1}) \odot \nabla f_c(\gamma_{t-1}),
              \qquad \gamma_0 = b,\ \gamma_T = x

    Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path Method for Removing Noise", CVPR
    2021. The path depends on the gradients, so the steps run one after another, each one forward and one
    backward for the whole batch (and every target column) at once; the bookkeeping (a k-th value and a few
    masked sums per step) runs in float64, as PAIR's, whose ``GuidedIG`` this equals with the defaults.
    Completeness :math:`\sum \mathrm{GuidedIG} \approx f_c(x) - f_c(b)` holds as a left Riemann sum.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets).

    Example:
        >>> gig = fxai.guided_ig(model_fn, params, x, 3, steps=16)
    """
    check_input(x)
    check_positive_int(steps, name="steps")
    for name, value in (("fraction", fraction), ("max_dist", max_dist)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    chunk_size = auto_chunk(chunk_size, x)
    target = as_target(target, x).fixed(model_fn, params, x)
    rows, row_target, k = _paths_of(x, target)
    end = rows.flatten(1).double()
    start = as_baseline(baseline, x).repeat(k, *([1] * (x.ndim - 1))).flatten(1).double()
    span = end - start
    moving = span != 0
    safe_span = torch.where(moving, span, 1).detach()
    l1_total = span.abs().sum(1)
    n = span.shape[1]
    rank = int(math.floor(fraction * (n - 1))) + 1  # numpy's quantile(..., method="lower"), 1-based
    point = start
    attribution = 0
    for step in range(steps):
        grad_actual = input_gradients(model_fn, params, point.to(x.dtype).view_as(rows), row_target,
                                      chunk_size=chunk_size).flatten(1)
        grad = grad_actual.detach().double()
        alpha = (step + 1.0) / steps
        alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_min, x_max = start + span * alpha_min, start + span * alpha_max
        l1_target = l1_total * (1 - (step + 1) / steps)
        before = point
        active = l1_total > 0
        first = True
        while bool(active.any()):
            if first:  # later rounds only move features up toward x_max: none falls behind again
                with torch.no_grad():
                    where_on_line = torch.where(moving, (point - start) / safe_span, alpha_max)
                    behind = (where_on_line < alpha_min) & active[:, None]
                point = torch.where(behind, x_min, point)
                first = False
            l1_current = (point - end).abs().sum(1)
            with torch.no_grad():
                active = active & ~_isclose(l1_target, l1_current, 1e-9)
                grad = torch.where(point == x_max, math.inf, grad)
                magnitude = grad.abs()
                threshold = _kth_smallest(magnitude, rank)
                chosen = (magnitude <= threshold) & (grad != math.inf) & active[:, None]
            l1_chosen = ((point - x_max).abs() * chosen).sum(1)
            gamma = torch.where(l1_chosen > 0, (l1_current - l1_target) / torch.where(l1_chosen > 0, l1_chosen, 1),
                                math.inf)
            full = (gamma > 1)[:, None]
            moved = torch.where(full, x_max, point + (x_max - point) * torch.where(full, 0, gamma[:, None]))
            point = torch.where(chosen, moved, point)
            active = active & full[:, 0]
        attribution = attribution + (point - before) * grad_actual
    out = attribution.to(x.dtype).view_as(rows)
    return out if k == 1 else out.view(k, *x.shape).movedim(0, 1)
