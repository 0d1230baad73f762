"""Attribution by a linear surrogate fitted to sampled coalitions: KernelSHAP and LIME.

Both draw coalitions of features (:mod:`fxai.attribution.features`) from ``key`` up front, evaluate them as
stacked rows in chunks (:mod:`fxai.attribution.coalitions`), and fit a weighted linear model of the target
score on the coalition indicators ``z ∈ {0, 1}^M``, one per image and target, in closed form (batched
linear solves). With ``return_fit=True`` they also return how well that surrogate fits the samples: a
:class:`SurrogateFit`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._core import keys
from .._core.checks import check_choice, check_positive_int
from .._core.docs import documented
from .._core.targets import TargetLike
from .coalitions import bits, black_box, check_exact, coalition_scores, shapley_kernel, to_map
from .shapley import SHARED_ARGS, per_feature, prepare

DISTANCES = ("cosine", "euclidean", "hamming")
SURROGATES = ("ridge", "lasso")


class SurrogateFit(NamedTuple):
    """How the linear surrogate fits its samples, per image (and target): ``r2 [B]`` (``[B, K]``), the
    weighted coefficient of determination :math:`1 - \\sum w (y - \\hat y)^2 / \\sum w (y - \\bar y_w)^2`
    (lime's ``score``); ``intercept [B]`` (``[B, K]``); ``coefficients [B, M]`` (``[B, K, M]``), the
    per-feature values before they are spread over the map."""

    r2: torch.Tensor
    intercept: torch.Tensor
    coefficients: torch.Tensor


def _weighted_r2(y, pred, w):
    """``y, pred [B, ..., S]``, ``w`` broadcastable: weighted R²."""
    mean = (w * y).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    return 1 - (w * (y - pred).square()).sum(-1) / (w * (y - mean).square()).sum(-1).clamp_min(1e-300)


def _kernel_coalitions(key, samples: int, m: int, device) -> torch.Tensor:
    """``[samples, m]`` coalitions with sizes drawn ∝ the Shapley kernel's mass, each followed by its complement."""
    gen = keys.generator(key)
    sizes = torch.arange(1, m, dtype=torch.float64)
    mass = (m - 1) / (sizes * (m - sizes))
    pairs = (samples + 1) // 2
    k = torch.multinomial(mass, pairs, replacement=True, generator=gen) + 1
    rank = torch.rand(pairs, m, generator=gen).argsort(1).argsort(1)
    z = (rank < k[:, None]).to(device)
    return torch.stack([z, ~z], 1).reshape(-1, m)[:samples]


def _spread(v, ndim_extra):
    return v.reshape(v.shape[0], *[1] * ndim_extra, *v.shape[1:])


@documented(samples="number of sampled coalitions (default 1000; pairs of a coalition and its complement), or "
                    "``None``: every coalition with its exact Shapley kernel weight (at most 14 features).",
            return_fit="also return the surrogate's :class:`SurrogateFit`: ``(map, fit)``.",
            **{k: v.replace("{default_mask}", "``\"grid:8\"``") for k, v in SHARED_ARGS.items()})
def kernel_shap(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, feature_mask=None,
                baseline=0.0, samples: int | None = 1000, key: keys.Key | None = None,
                chunk_size: int | None = None, return_fit: bool = False):
    r"""KernelSHAP: Shapley values as the weighted least-squares fit of a linear model to coalitions.

    .. math:: \min_\phi \sum_z \pi(z) \big(f_c(x_z) - f_c(x_\emptyset) - z^\top \phi\big)^2
              \ \text{s.t.}\ \mathbf 1^\top \phi = f_c(x) - f_c(x_\emptyset),
              \qquad \pi(z) = \frac{M - 1}{\binom{M}{|z|} |z| (M - |z|)}

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017. Coalitions are
    drawn with sizes ∝ the kernel's mass (so each counts once), in pairs of a coalition and its complement
    (Covert & Lee 2021); the constraint is solved exactly with the KKT system
    :math:`[[Z^\top W Z, \mathbf 1], [\mathbf 1^\top, 0]]`, not approximated by heavily weighted samples
    (Captum's ``KernelShap``). Efficiency holds exactly; with every coalition (``samples=None``) the solution
    is the exact Shapley values. A pair (z, 1 − z) adds one equation under the constraint, so ``samples``
should exceed ``2M``; when the pairs drawn do not determine every value, the least-norm solution is taken.
Costs ``samples + 2`` evaluations per image (1002 with the defaults).

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), or ``(map, SurrogateFit)``.

    Example:
        >>> phi, fit = fxai.kernel_shap(model_fn, params, x, 3, feature_mask="grid:4", samples=64, key=0,
        ...                             return_fit=True)
        >>> fit.r2.shape, fit.coefficients.shape
        (torch.Size([2]), torch.Size([2, 16]))
    """
    check_positive_int(samples, name="samples", allow_none=True)
    groups, present, base, target = prepare(model_fn, params, x, target, feature_mask, baseline, key=key,
                                            name="kernel_shap", default="grid:8")
    m = present.shape[1]
    if samples is None:
        check_exact(m, "kernel_shap with samples=None")
        z = bits(torch.arange(1, 2**m - 1, device=x.device), m)
        w = shapley_kernel(m, z.sum(1))
    else:  # one feature: no coalition between the empty and the full one, and phi = f(x) - f(baseline)
        z = _kernel_coalitions(key, samples, m, x.device) if m > 1 else torch.zeros(0, m, dtype=torch.bool,
                                                                                      device=x.device)
        w = torch.ones(len(z), dtype=torch.float64, device=x.device)

    padded = torch.cat([z, z.new_zeros(1, m)])         # a row to index when no coalition is sampled

    def coalitions(s):
        full = (s == 1)[:, None]
        return torch.where(s[:, None] < 2, full, padded[(s - 2).clamp(min=0)])

    with black_box(params, x, base.fill):
        v = coalition_scores(model_fn, params, x, target, groups, coalitions, len(z) + 2, base,
                             chunk_size=chunk_size)
    v = per_feature(v)                                     # [B, ..., S + 2]
    extra = v.ndim - 2
    zf, w = z.to(v.dtype), w.to(v.dtype)
    y, delta = v[..., 2:] - v[..., :1], v[..., 1] - v[..., 0]
    p = present.to(v.dtype)                                # [B, M]
    gram = (zf.T * w) @ zf
    a = gram * p[:, :, None] * p[:, None, :] + torch.diag_embed(1 - p)
    kkt = torch.cat([torch.cat([a, p[:, :, None]], 2),
                     torch.cat([p[:, None, :], p.new_zeros(p.shape[0], 1, 1)], 2)], 1)   # [B, M + 1, M + 1]
    rhs = torch.cat([((y * w) @ zf) * _spread(p, extra), delta[..., None]], -1)
    # The pseudo-inverse (by eigh): the exact solution when the coalitions determine every value, the
    # least-norm one when too few distinct pairs were drawn (a plain solve returns rounding noise there).
    phi = (torch.linalg.pinv(_spread(kkt, extra), hermitian=True) @ rhs[..., None])[..., :m, 0]
    out = to_map(phi, groups, x)
    if not return_fit:
        return out
    fit = SurrogateFit(_weighted_r2(y, phi @ zf.T, w), v[..., 0], phi)
    return out, fit


def _distance(z: torch.Tensor, p: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance ``[B, S]`` of coalitions ``z [S, M]`` from the full coalition, over image b's features ``p [B, M]``."""
    on = (z[None] & p[:, None]).sum(-1).to(torch.float64)       # kept features of each image
    total = p.sum(-1, keepdim=True).to(torch.float64)
    if kind == "cosine":
        return torch.where(on > 0, 1 - (on / total).sqrt(), torch.ones_like(on))
    if kind == "euclidean":
        return (total - on).sqrt()
    return (total - on) / total


def _lasso(gram, rhs, total_w, alpha: float, iterations: int):
    """FISTA for ``min (1/2W) βᵀGβ − βᵀr/W + α|β|₁`` (sklearn's Lasso objective with weights summing to W)."""
    lip = torch.linalg.eigvalsh(gram)[..., -1:].clamp_min(1e-12) / total_w
    beta = prev = torch.zeros_like(rhs)
    t = 1.0
    for _ in range(iterations):
        grad = ((beta[..., None, :] * gram).sum(-1) - rhs) / total_w
        step = beta - grad / lip
        new = step.sign() * (step.abs() - alpha / lip).clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        beta, prev = new + (t - 1) / t_next * (new - prev), new
        t = t_next
    return prev


@documented(samples="number of sampled coalitions (default 1000, lime's ``num_samples``); the first is the "
                    "full coalition (lime's convention), the others keep each feature with probability 1/2.",
            kernel_width="σ of the kernel :math:`\\exp(-d^2/\\sigma^2)` (default 0.25).",
            distance="``\"cosine\"`` (default, lime's), ``\"euclidean\"`` or ``\"hamming\"`` (the fraction of "
                     "features left out), between a coalition and the full one.",
            surrogate="``\"ridge\"`` (default, lime's ``Ridge(alpha=1)``) or ``\"lasso\"`` (Captum's default "
                      "interpretable model, ``Lasso(alpha=0.01)``), both with an intercept.",
            alpha="the regularisation strength (``None``: 1.0 for ridge, 0.01 for lasso; sklearn's objectives).",
            lasso_iterations="FISTA iterations of the lasso fit (default 1000).",
            return_fit="also return the surrogate's :class:`SurrogateFit`: ``(map, fit)``.",
            **{k: v.replace("{default_mask}", "``\"grid:8\"``") for k, v in SHARED_ARGS.items()})
def lime(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, feature_mask=None, baseline=0.0,
         samples: int = 1000, kernel_width: float = 0.25, distance: str = "cosine", surrogate: str = "ridge",
         alpha: float | None = None, lasso_iterations: int = 1000, key: keys.Key | None = None,
         chunk_size: int | None = None, return_fit: bool = False):
    r"""LIME: the coefficients of a weighted linear surrogate fitted to random coalitions near the input.

    .. math:: \min_{\beta, \beta_0} \sum_z \pi(z) \big(f_c(x_z) - \beta_0 - z^\top\beta\big)^2 + \Omega(\beta),
              \qquad \pi(z) = \exp\!\big(-d(z, \mathbf 1)^2 / \sigma^2\big)

    Ribeiro et al., "Why Should I Trust You?", KDD 2016. :math:`\Omega` is ``alpha``·‖β‖² (ridge) or
    ``alpha``·‖β‖₁ with sklearn's :math:`1/(2\sum\pi)` scaling of the loss (lasso). lime's image
    explainer uses :math:`\sqrt{\exp(-d^2/0.25^2)}`, i.e. ``kernel_width=0.25 * 2 ** 0.5`` here; Captum's
    ``Lime`` measures its default distance between the perturbed and original *inputs*. Costs ``samples``
    evaluations per image (1000 with the defaults).

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets), or ``(map, SurrogateFit)``.

    Example:
        >>> a, fit = fxai.lime(model_fn, params, x, 3, feature_mask="grid:4", samples=64, key=0, return_fit=True)
        >>> a.shape, fit.r2.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2]))
    """
    check_positive_int(samples, name="samples")
    check_positive_int(lasso_iterations, name="lasso_iterations")
    check_choice(distance, DISTANCES, name="distance")
    check_choice(surrogate, SURROGATES, name="surrogate")
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or kernel_width <= 0:
        raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
    alpha = (1.0 if surrogate == "ridge" else 0.01) if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"alpha must be a non-negative number, got {alpha!r}")
    groups, present, base, target = prepare(model_fn, params, x, target, feature_mask, baseline, key=key,
                                            name="lime", default="grid:8")
    m = present.shape[1]
    gen = keys.generator(key)
    z = torch.rand(samples, m, generator=gen).to(x.device) < 0.5
    z[0] = True
    with black_box(params, x, base.fill):
        v = coalition_scores(model_fn, params, x, target, groups, lambda s: z[s], samples, base,
                             chunk_size=chunk_size)
    v = per_feature(v)                                                    # [B, ..., S]
    extra = v.ndim - 2
    zb = (z[None] & present[:, None]).to(v.dtype)                         # [B, S, M]
    w = torch.exp(-_distance(z, present, distance).square() / kernel_width**2).to(v.dtype)   # [B, S]
    total = w.sum(-1)
    zbar = (w[..., None] * zb).sum(1) / total[:, None]                    # [B, M]
    zc = zb - zbar[:, None]
    ws = _spread(w, extra)
    ybar = (ws * v).sum(-1) / _spread(total, extra)
    gram = zc.transpose(1, 2) @ (w[..., None] * zc)                       # [B, M, M]
    rhs = ((ws * (v - ybar[..., None]))[..., None, :] @ _spread(zc, extra))[..., 0, :]   # [B, ..., M]
    fill = torch.diag_embed(1 - present.to(v.dtype))
    if surrogate == "ridge":
        a = gram + alpha * torch.eye(m, dtype=v.dtype, device=v.device) + fill
        beta = torch.linalg.solve(_spread(a, extra), rhs[..., None])[..., 0]
    else:
        beta = _lasso(_spread(gram + fill, extra), rhs, _spread(total, extra)[..., None], alpha, lasso_iterations)
    out = to_map(beta, groups, x)
    if not return_fit:
        return out
    intercept = ybar - (beta * _spread(zbar, extra)).sum(-1)
    pred = intercept[..., None] + (_spread(zb, extra) @ beta[..., None])[..., 0]
    return out, SurrogateFit(_weighted_r2(v, pred, ws), intercept, beta)
