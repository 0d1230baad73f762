"""Perturbed copies of a batch stacked as rows ``[R * B, ...]`` (perturbation-major: row ``r`` perturbs input
``r % B``), scored chunk by chunk: the machinery of the mask methods and the masked CAMs."""

from __future__ import annotations

import torch

from .batching import cat_rows, unstack
from .layers import forward_with_activations
from .targets import Target, TargetLike, as_target, check_logits, probabilities

SCORES = ("softmax", "logit")


def row_scores(model_fn, params, rows: torch.Tensor, target: Target, start: int, score: str = "logit"):
    """Target scores ``[n]`` (or ``[n, K]``) of ``n`` stacked rows starting at row ``start``."""
    logits = model_fn(params, rows)
    check_logits(logits, rows)
    return target.scores(probabilities(logits) if score == "softmax" else logits, start)


def clean_forward(model_fn, params, x, target: TargetLike, layers=None):
    """One forward on the clean batch: ``(target with top-1 resolved, logits, activation or None)``."""
    if layers is None:
        logits, act = model_fn(params, x.clone()), None  # a copy: a model may write into its input
    else:
        logits, (act,) = forward_with_activations(model_fn, params, x, layers)
    check_logits(logits, x)
    resolved = as_target(target, x)
    if resolved.top1:
        resolved = Target(x.shape[0], index=logits.detach().argmax(-1, keepdim=True))
    return resolved, logits, act


def rows_of(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``x[i]``, without a copy for a batch of one."""
    return x.expand(len(i), *x.shape[1:]) if x.shape[0] == 1 else x[i]


def per_input(parts: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Row scores of consecutive chunks, ``[R * B, ...]`` in all, as ``[R, B, ...]``."""
    rows = cat_rows(parts)
    return unstack(rows, rows.shape[0] // batch)
