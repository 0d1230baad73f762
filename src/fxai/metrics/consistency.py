"""Consistency (Dasgupta et al., ICML 2022): do the inputs that share a discretised explanation share the
prediction?"""

from __future__ import annotations

import torch

from .._core.checks import check_finite, check_input, check_map, check_positive_int
from .._core.targets import TargetLike, check_logits


def _labels(amap, top, discretise):
    flat = amap.flatten(1)
    if callable(discretise):
        out = discretise(amap)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != amap.shape[0]:
            raise ValueError(f"discretise must return a tensor [B, m] of labels for B = {amap.shape[0]} maps")
        return out
    if discretise == "first_sign":
        return flat[:, :top].sign()
    if discretise == "top_sign":
        pos = flat.abs().argsort(dim=1, descending=True, stable=True)[:, :top].sort(1).values
        return torch.cat([pos.to(flat.dtype), flat.gather(1, pos).sign()], 1)
    raise ValueError(f"discretise must be 'top_sign', 'first_sign' or a callable map -> [B, m], got {discretise!r}")


def consistency(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                top: int = 5, discretise="top_sign") -> torch.Tensor:
    r"""Consistency: how often the other inputs of the batch with the same discretised explanation also get the
    same predicted class.

    .. math:: \mathrm{Con}(x_i) = \frac{|\{j \ne i : e(x_j) = e(x_i),\ f(x_j) = f(x_i)\}|}
              {|\{j \ne i : e(x_j) = e(x_i)\}|}

    Dasgupta et al., "Framework for Evaluating Faithfulness of Local Explanations", ICML 2022 (0 where no
    other input shares the explanation). :math:`e` discretises a map: ``"top_sign"`` (default) is the set of
    its ``top`` largest-magnitude positions with their signs; ``"first_sign"`` the signs of its first ``top``
    entries in memory order, what Quantus 0.6's ``top_n_sign`` computes; or a callable ``map -> [B, m]``.
    :math:`f` is the model's top-1 class. Higher is better (the paper's reading; Quantus marks it lower).
    Scores depend on the whole batch, which is the sample the probability is estimated on. Cost: one forward
    over ``B`` inputs; ``target`` is not used.

    Returns:
        ``[B]`` in ``[0, 1]`` (higher is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> con = fxai.metrics.consistency(model_fn, params, x, 3, g)
    """
    check_input(x)
    check_positive_int(top, name="top")
    if x.ndim == 4:
        check_map(attribution, x)
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point() \
            or attribution.ndim < 2 or attribution.shape[0] != x.shape[0]:
        raise ValueError(f"attribution must be a floating-point map [B, ...] with B = {x.shape[0]}")
    amap = check_finite(attribution, name="attribution").detach()
    labels = _labels(amap, top, discretise)
    with torch.no_grad():
        logits = model_fn(params, x.clone())
    check_logits(logits, x)
    pred = logits.argmax(-1)
    others = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    same_e = (labels[:, None] == labels[None]).all(-1) & others
    same_both = same_e & (pred[:, None] == pred[None])
    n = same_e.sum(1).to(amap.dtype)
    return torch.where(n > 0, same_both.sum(1).to(amap.dtype) / n.clamp(min=1), torch.zeros_like(n))
