"""Path methods: Integrated Gradients and Expected Gradients (GradientSHAP)."""

from __future__ import annotations

import numpy as np
import torch

from .._core import keys
from .._core.batching import auto_chunk, expand_like, input_gradients, scores, unstack
from .._core.docs import documented
from .._core.structured import accepts_structured
from .._core.checks import as_baseline, check_choice, check_input, check_positive_int
from .._core.targets import TargetLike, as_target

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def path_rule(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Points :math:`\alpha_s \in [0, 1]` and weights :math:`w_s` (summing to 1) for :math:`\int_0^1 g(\alpha)\,d\alpha`.

    Riemann rules use ``steps`` equal cells (left, right or middle point);
    the trapezoid rule puts ``steps`` points on ``[0, 1]`` with end weights
    halved; ``gausslegendre`` uses Gauss–Legendre nodes, exact for polynomials
    of degree ``2 * steps - 1``. Returned in float64.
    """
    check_choice(rule, RULES, name="method")
    check_positive_int(steps, name="steps")
    n = steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("steps must be at least 2 for the trapezoid rule")
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
    alphas = (torch.arange(n, dtype=torch.float64) + offset) / n
    return alphas, torch.full((n,), 1 / n, dtype=torch.float64)


def completeness_error(model_fn, params, x, base, target, attribution, chunk_size):
    """Per input, ``sum(attribution) - (f(x) - f(base))``: how far a path method is from completeness."""
    both = scores(model_fn, params, torch.cat([x, base]), target, chunk_size=chunk_size)
    fx, fb = both[: x.shape[0]], both[x.shape[0]:]
    sums = attribution.flatten(start_dim=fx.ndim).sum(-1)
    return sums - (fx - fb)


@accepts_structured
@documented(steps="number of path points.",
            method="``\"riemann_left\"``, ``\"riemann_right\"``, ``\"riemann_middle\"``, ``\"riemann_trapezoid\"`` "
                   "or ``\"gausslegendre\"`` (see :func:`path_rule`).",
            return_error="also return the completeness error :math:`\\sum \\mathrm{IG} - (f_c(x) - f_c(b))`, shape "
                         "``[B]`` (or ``[B, K]``).",
            x="input batch ``[B, ...]``, or a tuple or dict of batches (:func:`fxai.fixed` marks leaves that are not attributed; maps come back in the same structure).")
def integrated_gradients(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
                         baseline=0.0, steps: int = 50, method: str = "gausslegendre",
                         chunk_size: int | None = None, return_error: bool = False):
    r"""Integrated Gradients along the straight path from ``baseline`` to ``x``.

    .. math:: \mathrm{IG}(x) = (x - b) \odot \sum_s w_s \, \nabla f_c\big(b + \alpha_s (x - b)\big)
              \approx (x - b) \odot \int_0^1 \nabla f_c\big(b + \alpha (x - b)\big)\,d\alpha

    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
    All ``steps`` path points of the batch are one stacked batch (chunked by
    ``chunk_size``); quadrature weights sum to 1, so completeness
    :math:`\sum \mathrm{IG} = f_c(x) - f_c(b)` holds up to the quadrature error.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), and the error if asked.

    Example:
        >>> ig, err = fxai.integrated_gradients(model_fn, params, x, 3, steps=32, return_error=True)
    """
    check_input(x)
    chunk_size = auto_chunk(chunk_size, x)
    alphas, weights = path_rule(method, steps)
    target = as_target(target, x).fixed(model_fn, params, x)
    base = as_baseline(baseline, x)
    shape = (-1,) + (1,) * x.ndim
    alphas = alphas.to(x.device, x.dtype).view(shape)
    path = (base + alphas * (x - base)).flatten(0, 1)
    grads = unstack(input_gradients(model_fn, params, path, target, chunk_size=chunk_size), steps)
    mean_grad = torch.tensordot(weights.to(x.device, x.dtype), grads, dims=1)
    attribution = expand_like(x - base, mean_grad) * mean_grad
    if return_error:
        return attribution, completeness_error(model_fn, params, x, base, target, attribution, chunk_size)
    return attribution


@accepts_structured
@documented(references="reference batch ``[R, ...]`` (e.g. training images).",
            samples="Monte-Carlo samples per input.", x="input batch ``[B, ...]``, or a tuple or dict of batches (:func:`fxai.fixed` marks leaves that are not attributed; maps come back in the same structure).")
def expected_gradients(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
                       references: torch.Tensor, samples: int = 32, key: keys.Key | None = None,
                       chunk_size: int | None = None) -> torch.Tensor:
    r"""Expected Gradients (GradientSHAP): IG averaged over baselines drawn from ``references``.

    .. math:: \mathrm{EG}(x) = \mathbb{E}_{b \sim D,\ \alpha \sim U(0,1)}
              \big[(x - b) \odot \nabla f_c\big(b + \alpha (x - b)\big)\big]

    Erion et al., "Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients", 2021; Lundberg & Lee, 2017.
    Each of the ``samples`` draws picks a reference uniformly and a path point
    uniformly, per input, from ``key``.

    {args}

    Example:
        >>> eg = fxai.expected_gradients(model_fn, params, x, 3, references=torch.rand(16, 3, 32, 32), key=0)
    """
    check_input(x)
    check_input(references, name="references")
    check_positive_int(samples, name="samples")
    chunk_size = auto_chunk(chunk_size, x)
    if references.shape[1:] != x.shape[1:]:
        raise ValueError(f"references must be a batch of inputs shaped like x's, [R, {', '.join(map(str, x.shape[1:]))}]; "
                         f"got {tuple(references.shape)}")
    gen = keys.generator(key)
    batch = x.shape[0]
    pick = keys.integers(gen, references.shape[0], (samples, batch), x)
    alphas = keys.uniform(gen, (samples, batch), x).view(samples, batch, *([1] * (x.ndim - 1)))
    target = as_target(target, x).fixed(model_fn, params, x)
    base = references.to(x)[pick]
    path = (base + alphas * (x - base)).flatten(0, 1)
    grads = unstack(input_gradients(model_fn, params, path, target, chunk_size=chunk_size), samples)
    diff = x - base
    return (diff.unsqueeze(2) if grads.ndim > diff.ndim else diff).mul(grads).mean(0)
