"""Model-agnostic attribution over features: feature ablation and Shapley values, exact and sampled.

Every method switches features (groups of pixels, :mod:`fxai.attribution.features`) on and off, evaluates
the coalitions of all images as stacked rows in chunks (:mod:`fxai.attribution.coalitions`) and returns
each feature's value spread over its pixels: a map shaped like ``x`` (``[B, K, ...]`` for K targets).
They need forward passes only: with params and input that do not require gradients the model runs under
``torch.no_grad`` and may be any black box.
"""

from __future__ import annotations

import math

import torch

from .._core import keys
from .._core.checks import check_input, check_positive_int
from .._core.docs import documented
from .._core.targets import TargetLike, as_target
from .coalitions import Baseline, bits, black_box, check_exact, coalition_scores, to_map
from .features import feature_groups

SHARED_ARGS = {
    "feature_mask": "integer feature ids ``[B, H, W]`` or broadcastable to ``x`` (Captum's ``feature_mask``), "
                    "or a spec: ``\"grid:8\"``, ``\"slic:64\"``, ``\"quickshift\"``, ``\"felzenszwalb:100\"`` "
                    "(:mod:`fxai.attribution.features`); ``None``: ``{default_mask}``.",
    "baseline": "what replaces a left-out feature: a number, a tensor broadcastable to ``x``, a callable "
                "``x -> tensor``, an imputer of :mod:`fxai.metrics` (``fxai.metrics.blur()``, ROAD's "
                "``fxai.metrics.noisy_linear()``, called per coalition) or its name (``\"blur\"``, "
                "``\"linear\"``, ``\"mean\"``) (default ``{default}``).",
}


def prepare(model_fn, params, x, target, feature_mask, baseline, *, key=None, name: str, default: str):
    """Checked input, ``(groups, present)``, the baseline and the target with top-1 resolved."""
    check_input(x, exact_ndim=4)
    groups, present = feature_groups(feature_mask, x, default=default)
    base = Baseline(baseline, x, key=key, method=name)
    return groups, present, base, as_target(target, x).fixed(model_fn, params, x)


def per_feature(values: torch.Tensor) -> torch.Tensor:
    """``[M, B, ...]`` -> ``[B, ..., M]``."""
    return values.movedim(0, -1)


@documented(**{k: v.replace("{default_mask}", "``\"grid:8\"``") for k, v in SHARED_ARGS.items()})
def feature_ablation(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, feature_mask=None,
                     baseline=0.0, chunk_size: int | None = None) -> torch.Tensor:
    r"""Feature ablation: the score drop when one feature is replaced by the baseline.

    .. math:: a_j = f_c(x) - f_c(x_{N \setminus \{j\}})

    where :math:`x_S` keeps the features in :math:`S` and replaces the others. Captum's ``FeatureAblation``
    (Zeiler & Fergus 2014 for windows; here any feature groups). Costs :math:`M + 1` evaluations per image.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets): each element holds its feature's value.

    Example:
        >>> a = fxai.feature_ablation(model_fn, params, x, 3, feature_mask="grid:4")
        >>> a.shape
        torch.Size([2, 3, 32, 32])
    """
    groups, present, base, target = prepare(model_fn, params, x, target, feature_mask, baseline,
                                            name="feature_ablation", default="grid:8")
    m = present.shape[1]
    eye = torch.eye(m, dtype=torch.bool, device=x.device)

    def coalitions(s):
        return ~eye[(s - 1).clamp(min=0)] | (s == 0)[:, None]

    with black_box(params, x, base.fill):
        v = coalition_scores(model_fn, params, x, target, groups, coalitions, m + 1, base, chunk_size=chunk_size)
    return to_map(per_feature(v[:1] - v[1:]), groups, x)


def shapley_coefficients(m: int, dtype, device) -> torch.Tensor:
    r"""``[2^m, m]``: :math:`\phi_j = \sum_s v_s c_{sj}`, with :math:`c_{sj} = w(|s| - 1)` if :math:`j \in s`
    and :math:`-w(|s|)` otherwise, :math:`w(k) = k!\,(m - k - 1)!/m!`."""
    z = bits(torch.arange(2**m, device=device), m)
    size = z.sum(1)
    w = torch.tensor([1 / (m * math.comb(m - 1, k)) for k in range(m)] + [0.0], dtype=dtype, device=device)
    return torch.where(z, w[(size - 1).clamp(min=0)][:, None], -w[size][:, None])


@documented(**{k: v.replace("{default_mask}", "``\"grid:3\"`` (9 features)") for k, v in SHARED_ARGS.items()})
def shapley_values(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, feature_mask=None,
                   baseline=0.0, chunk_size: int | None = None) -> torch.Tensor:
    r"""Exact Shapley values of the features, from every coalition.

    .. math:: \phi_j = \sum_{S \subseteq N \setminus \{j\}} \frac{|S|!\,(M - |S| - 1)!}{M!}
              \big(f_c(x_{S \cup \{j\}}) - f_c(x_S)\big)

    Shapley, "A value for n-person games", 1953; Štrumbelj & Kononenko 2014 for model explanations. Equals
    Captum's ``ShapleyValues`` (which averages over all :math:`M!` orderings). Costs :math:`2^M` evaluations
    per image, so it refuses more than ``EXACT_LIMIT`` = 14 features
    (:data:`fxai.attribution.coalitions.EXACT_LIMIT`). Efficiency holds exactly:
    :math:`\sum_j \phi_j = f_c(x) - f_c(\text{baseline})`.

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets): each element holds its feature's value.

    Example:
        >>> phi = fxai.shapley_values(model_fn, params, x, 3, feature_mask="grid:2")
        >>> phi.shape
        torch.Size([2, 3, 32, 32])
    """
    groups, present, base, target = prepare(model_fn, params, x, target, feature_mask, baseline,
                                            name="shapley_values", default="grid:3")
    m = present.shape[1]
    check_exact(m, "shapley_values")
    with black_box(params, x, base.fill):
        v = coalition_scores(model_fn, params, x, target, groups, lambda s: bits(s, m), 2**m, base,
                             chunk_size=chunk_size)
    return to_map(per_feature(v) @ shapley_coefficients(m, v.dtype, v.device), groups, x)


def antithetic_permutations(key, samples: int, m: int, device) -> torch.Tensor:
    """``[samples, m]`` orderings of ``m`` features: random ones, each followed by its reverse."""
    gen = keys.generator(key)
    perms = torch.rand((samples + 1) // 2, m, generator=gen, device=gen.device).argsort(1).to(device)
    return torch.stack([perms, perms.flip(1)], 1).reshape(-1, m)[:samples]


@documented(samples="number of orderings (default 25, Captum's ``n_samples``), drawn in antithetic pairs: "
                    "each random ordering is followed by its reverse.",
            **{k: v.replace("{default_mask}", "``\"grid:8\"``") for k, v in SHARED_ARGS.items()})
def shapley_sampling(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, feature_mask=None,
                     baseline=0.0, samples: int = 25, key: keys.Key | None = None,
                     chunk_size: int | None = None) -> torch.Tensor:
    r"""Shapley values estimated over random orderings of the features, in antithetic pairs.

    .. math:: \hat\phi_j = \frac{1}{n} \sum_{k=1}^n f_c(x_{P_k(j) \cup \{j\}}) - f_c(x_{P_k(j)})

    :math:`P_k(j)`: the features before :math:`j` in ordering :math:`k`. Castro et al., "Polynomial
    calculation of the Shapley value based on sampling", 2009 (Captum's ``ShapleyValueSampling``, which
    draws independent orderings); antithetic pairs (an ordering and its reverse) cancel much of the
    variance (Mitchell et al., "Sampling permutations for Shapley value estimation", JMLR 2022). Each
    ordering's increments sum to :math:`f_c(x) - f_c(\text{baseline})`, so efficiency holds exactly.
    Costs :math:`2 + n\,(M - 1)` evaluations per image (the empty and full coalitions are shared):
    1577 with the defaults (25 orderings of 64 cells).

    {args}

    Returns:
        A map shaped like ``x`` (``[B, K, ...]`` for K targets): each element holds its feature's value.

    Example:
        >>> phi = fxai.shapley_sampling(model_fn, params, x, 3, feature_mask="grid:4", samples=8, key=0)
    """
    check_positive_int(samples, name="samples")
    groups, present, base, target = prepare(model_fn, params, x, target, feature_mask, baseline,
                                            name="shapley_sampling", default="grid:8")
    m = present.shape[1]
    perms = antithetic_permutations(key, samples, m, x.device)
    rank = perms.argsort(1)

    def coalitions(s):  # 0: empty, 1: full, then ordering p's first k features, k = 1 … m - 1
        p, k = (s - 2).clamp(min=0) // max(m - 1, 1), (s - 2).clamp(min=0) % max(m - 1, 1) + 1
        k = torch.where(s == 0, 0, torch.where(s == 1, m, k))
        return rank[p] < k[:, None]

    with black_box(params, x, base.fill):
        v = coalition_scores(model_fn, params, x, target, groups, coalitions, 2 + samples * (m - 1), base,
                             chunk_size=chunk_size)
    inner = v[2:].reshape(samples, m - 1, *v.shape[1:])
    prefix = torch.cat([v[None, :1].expand(samples, 1, *v.shape[1:]), inner,
                        v[None, 1:2].expand(samples, 1, *v.shape[1:])], 1)   # [n, m + 1, B, ...]
    steps = (prefix[:, 1:] - prefix[:, :-1]).movedim(1, -1)                   # [n, B, ..., m]: step k adds perms[:, k]
    index = perms.reshape(samples, *[1] * (steps.ndim - 2), m).expand_as(steps)
    phi = torch.zeros_like(steps).scatter_add(-1, index, steps).mean(0)
    return to_map(phi, groups, x)
