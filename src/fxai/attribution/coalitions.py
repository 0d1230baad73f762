"""Coalitions of features evaluated as stacked rows: the engine of the Shapley family.

A coalition ``z ∈ {0, 1}^M`` keeps the features with ``z_j = 1`` from ``x`` and replaces the others by the
baseline. The coalitions of a method are numbered ``s = 0 … S − 1`` and shared by the images of the batch;
row ``r = s·B + b`` of the stacked batch is coalition ``s`` of image ``b`` (perturbation-major, as in
:mod:`fxai._core.stacking`). Rows are built chunk by chunk from a function ``s -> z`` (so neither the
coalitions' inputs nor, for sampled methods, the coalitions are held all at once) and scored with one
forward per chunk of at most ``chunk_size`` rows; K targets share those forwards.

When neither the params nor the input require gradients (and no ``torch.func`` transform is active), the
rows are evaluated under ``torch.no_grad``: the model is used as a black box and need not be
differentiable. Otherwise the values keep their graph, so maps are differentiable w.r.t. params and ``x``.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .._core import keys
from .._core.batching import auto_chunk, needs_graph, plain_autograd, row_chunks
from .._core.checks import as_baseline
from .._core.stacking import per_input, row_scores, rows_of
from ..metrics import imputers

# Exact Shapley values and KernelSHAP over every coalition evaluate 2^M coalitions per image.
EXACT_LIMIT = 14


def black_box(params, *tensors):
    """``torch.no_grad()`` unless the results must stay differentiable (see the module docstring)."""
    keep = torch.is_grad_enabled() and (not plain_autograd() or needs_graph(params, tensors))
    return contextlib.nullcontext() if keep else torch.no_grad()


class Baseline:
    """What replaces the features a coalition leaves out: a fill tensor like ``x``, or an imputer called
    with the removed pixels of each coalition (ROAD's noisy linear imputation)."""

    def __init__(self, baseline, x: torch.Tensor, *, key=None, method: str):
        self.fill, self.imputer, self.seed = None, None, None
        if isinstance(baseline, str):
            baseline = imputers.as_imputer(baseline, name="baseline")
        if isinstance(baseline, imputers.Imputer):
            if baseline.randomised:
                if key is None:
                    raise ValueError(f"baseline {baseline!r} is random and {method} takes no key: use a "
                                     "deterministic imputer (e.g. noisy_linear(noise=0)) or a sampled method")
                self.seed = int(torch.randint(2**62, (), generator=keys.generator(key)))
            if hasattr(baseline, "fill"):
                self.fill = baseline.fill(x, self.seed).expand_as(x)
            else:
                self.imputer = baseline
        else:
            self.fill = as_baseline(baseline, x)

    def rows(self, x: torch.Tensor, keep: torch.Tensor, i: torch.Tensor, batch: int) -> torch.Tensor:
        """Inputs of the rows of images ``i`` keeping ``keep [n, c, H, W]``."""
        if self.imputer is None:
            return torch.where(keep, rows_of(x, i), rows_of(self.fill, i))
        if keep.shape[1] != 1:
            raise ValueError("baseline: an imputer fills pixels, so the feature mask must be shared by the channels")
        removed = ~keep[:, 0].reshape(-1, batch, *keep.shape[2:])
        out = self.imputer(x, removed, key=self.seed)
        return out.reshape(-1, *x.shape[1:])


def masked_scores(model_fn, params, x, target, keep_of, count: int, baseline: Baseline, *,
                  chunk_size=None) -> torch.Tensor:
    """Scores ``[S, B]`` (``[S, B, K]``) of ``count`` perturbations of every image, perturbation ``s`` of
    image ``i`` keeping ``keep_of(s [n], i [n]) -> bool [n, c, H, W]`` of ``x`` and taking the rest from the
    baseline. Rows ``s·B + i`` are built and scored ``chunk_size`` at a time."""
    batch = x.shape[0]
    chunk_size = auto_chunk(chunk_size, x)
    group = batch if baseline.imputer is not None else target.group
    parts = []
    for a, b in row_chunks(count * batch, chunk_size, group):
        r = torch.arange(a, b, device=x.device)
        s, i = r // batch, r % batch
        parts.append(row_scores(model_fn, params, baseline.rows(x, keep_of(s, i), i, batch), target, a))
    return per_input(parts, batch)


def coalition_scores(model_fn, params, x, target, groups, coalitions, count: int, baseline: Baseline, *,
                     chunk_size=None) -> torch.Tensor:
    """Scores ``[S, B]`` (``[S, B, K]``) of ``count`` coalitions ``coalitions(s [n]) -> bool [n, M]`` of
    every image, the features being ``groups [B, c, H, W]`` (:func:`fxai.attribution.features.feature_groups`)."""
    flat = groups.reshape(groups.shape[0], -1)

    def keep_of(s, i):
        return coalitions(s).gather(1, rows_of(flat, i)).reshape(len(s), *groups.shape[1:])

    return masked_scores(model_fn, params, x, target, keep_of, count, baseline, chunk_size=chunk_size)


def bits(s: torch.Tensor, m: int) -> torch.Tensor:
    """Coalition number ``s`` as its ``m`` bits: ``[n, m]`` bool, bit ``j`` = feature ``j``."""
    return (s[:, None] >> torch.arange(m, device=s.device)) & 1 == 1


def check_exact(m: int, name: str) -> None:
    """Refuse ``m`` features for a method that evaluates every coalition (more than :data:`EXACT_LIMIT`)."""
    if m > EXACT_LIMIT:
        raise ValueError(f"{name}: {m} features need 2^{m} = {2**m} evaluations per image; every coalition is "
                         f"evaluated up to {EXACT_LIMIT} features. Use fewer features (e.g. feature_mask='grid:3') "
                         "or a sampled method (shapley_sampling, kernel_shap)")


def to_map(values: torch.Tensor, groups: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-feature values ``[B, M]`` (``[B, K, M]``) spread over their elements: a map like ``x``
    (``[B, K, ...]``)."""
    batch = x.shape[0]
    flat = groups.reshape(batch, -1)
    if values.ndim == 3:
        flat = flat[:, None].expand(-1, values.shape[1], -1)
    out = values.gather(-1, flat).reshape(*values.shape[:-1], *groups.shape[1:])
    return out.expand(*values.shape[:-1], *x.shape[1:]).clone()


def shapley_kernel(m: int, sizes: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel ``(M − 1) / (C(M, |z|) |z| (M − |z|))`` at coalition sizes ``0 < |z| < M``."""
    sizes = sizes.double()
    log_binom = math.lgamma(m + 1) - torch.lgamma(sizes + 1) - torch.lgamma(m - sizes + 1)
    return (m - 1) / (torch.exp(log_binom) * sizes * (m - sizes))
