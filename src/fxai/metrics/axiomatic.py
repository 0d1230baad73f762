r"""Axiomatic metrics: does a map keep a property every faithful explanation should have?

:func:`completeness` (the relevance sums to the score difference from a baseline), :func:`non_sensitivity`
(features the model ignores get no relevance, and only those) and :func:`input_invariance` (a constant shift
of the input absorbed by the first layer's bias leaves the map unchanged).
"""

from __future__ import annotations

import math

import torch

from .._core import keys
from .._core.batching import auto_chunk
from .._core.batching import scores as stacked_scores
from .._core.checks import check_input, check_positive_int
from .._core.targets import TargetLike, one_per_input, scored_model
from .features import block_scores, feature_map, fill_values
from .randomisation import layer_order


def completeness(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                 baseline="black", softmax: bool = False) -> torch.Tensor:
    r"""Completeness gap: how far the map's total is from the score difference between ``x`` and the baseline.

    .. math:: \Big|\sum_i a_i - \big(f(x) - f(\bar x)\big)\Big|

    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017 (integrated gradients satisfy
    it exactly, up to the path integral's error). A map ``[B, H, W]`` counts once per channel of ``x`` (it is
    broadcast, as every feature metric). Lower is better (0: complete). Cost: 2 forward passes per input.

    Args:
        baseline: ``"black"`` (each image's minimum, as Quantus), ``"white"``, ``"mean"``, a number or a
            tensor like ``x``: the :math:`\bar x` the map is complete against (integrated gradients: its own).

    Returns:
        ``[B]`` absolute gaps.

    Example:
        >>> ig = fxai.integrated_gradients(model_fn, params, x, 3, baseline=0.0, steps=64)
        >>> gap = fxai.metrics.completeness(model_fn, params, x, 3, ig, baseline=0.0)
    """
    check_input(x, exact_ndim=4)
    a = feature_map(attribution, x)
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    ref = fill_values(baseline, x).view(x.shape)
    with torch.no_grad():
        s = stacked_scores(fn, params, torch.cat([x, ref]), tgt).view(2, -1)
    return (a.sum(1) - (s[0] - s[1])).abs()


def non_sensitivity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                    eps: float = 1e-5, features_in_step: int = 1, baseline="black", normalise: bool = True,
                    softmax: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    r"""Non-sensitivity: the number of features the map and the model disagree on, zero relevance for a
    feature that moves the score or nonzero relevance for one that does not.

    .. math:: \big|\{i : |a_i| < \varepsilon\} \;\triangle\; \{i : |f(x) - f(x_{[x_i = \bar x_i]})| < \varepsilon\}\big|

    Nguyen & Martínez, "On Quantitative Aspects of Model Interpretability", 2020. Each group of
    ``features_in_step`` consecutive features (elements of ``x`` in memory order) is set to ``baseline`` on its
    own; a group has zero relevance when all its features do. With ``normalise=True`` (as Quantus) the map is
    first divided by its largest absolute value, so ``eps`` is relative. Lower is better (0: the map is zero
    exactly where the model is insensitive). Cost: ``ceil(N / features_in_step) + 1`` forward passes per input.

    Returns:
        ``[B]`` counts of disagreeing groups.

    Example:
        >>> fxai.metrics.non_sensitivity(model_fn, params, x, None, amap, features_in_step=64).shape
        torch.Size([2])
    """
    check_input(x, exact_ndim=4)
    check_positive_int(features_in_step, name="features_in_step")
    a = feature_map(attribution, x, absolute=True)
    if normalise:
        top = a.amax(1, keepdim=True)
        a = a / torch.where(top > 0, top, torch.ones_like(top))
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    with torch.no_grad():
        y = stacked_scores(fn, params, x, tgt)
    chunk_size = auto_chunk(chunk_size, x)
    n = a.shape[1]
    steps = math.ceil(n / features_in_step)
    groups = torch.arange(n, device=x.device) // features_in_step
    fill, flat = fill_values(baseline, x), x.flatten(1)

    def rows(s, e):
        return torch.where(groups.view(1, 1, -1) == torch.arange(s, e, device=x.device).view(-1, 1, 1), fill, flat)

    still = (block_scores(fn, params, x, tgt, rows, steps, chunk_size=chunk_size) - y[:, None]).abs() < eps
    zero = torch.ones(a.shape[0], steps, dtype=torch.bool, device=x.device)
    zero = zero.scatter_reduce(1, groups.expand_as(a), a < eps, reduce="amin")
    return (still ^ zero).sum(1).to(x.dtype)


def shifted_first_layer(params, layer: str, shift: float | torch.Tensor) -> dict:
    r"""A new params dict whose first layer absorbs a constant input shift: ``bias - W · shift``.

    For a first layer :math:`z = W * x + b` (convolution or linear, weight ``layer + ".weight"`` with the input
    channels on axis 1), the layer sees the same pre-activations on ``x + shift`` with the bias
    :math:`b - \sum_{c, k} W_{o c k}\, \text{shift}_c` (exactly so away from a zero-padded border). ``shift``:
    a number or a tensor ``[C]`` of per-channel shifts.

    Example:
        >>> p2 = fxai.metrics.shifted_first_layer(params, "layer1.conv", -1.0)
    """
    wname, bname = layer + ".weight", layer + ".bias"
    if wname not in params or bname not in params:
        raise ValueError(f"layer: {layer!r} must name a layer with a weight and a bias in params "
                         f"({wname!r}, {bname!r})")
    w = params[wname].detach()
    s = torch.as_tensor(shift, dtype=w.dtype, device=w.device)
    s = s.view(1, -1, *([1] * (w.ndim - 2))) if s.ndim == 1 else s
    out = dict(params)
    out[bname] = params[bname] - (w * s).flatten(1).sum(1)
    return out


def input_invariance(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                     method, layer: str | None = None, shift: float = -1.0, atol: float = 1e-4, method_options=None,
                     key=None) -> torch.Tensor:
    r"""Input invariance: 1 when the map of ``x + shift`` under a model whose first layer absorbs the shift
    equals the map of ``x`` (within ``atol`` everywhere), else 0.

    .. math:: \mathbb 1\Big[\max_i \big|\Phi(f_2, x + s)_i - \Phi(f, x)_i\big| \le \text{atol}\Big],\quad
              f_2(x + s) = f(x)

    Kindermans et al., "The (Un)reliability of Saliency Methods", 2019: gradients pass, gradient × input
    and integrated gradients with a zero baseline fail. The shifted model is :func:`shifted_first_layer` of
    ``layer`` (the first layer's prefix in ``params``); maps are compared with NumPy's ``isclose`` (``atol``
    plus a relative ``1e-5``) as Quantus. Higher is better. Cost: one call of ``method`` on the batch.

    Args:
        attribution: ``method``'s map at ``x`` under ``params``.
        method: attribution method ``(model_fn, params, x, target, **options) -> map``.
        layer: prefix of the first layer (e.g. ``"conv1"`` for a torchvision ResNet); default: the first
            layer of :func:`~fxai.metrics.layer_order`.
        shift: constant added to every element of ``x``.
        key: randomness of a randomised ``method``.

    Returns:
        ``[B]`` of 1.0 (invariant) or 0.0.

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> fxai.metrics.input_invariance(model_fn, params, x, 3, g, method=fxai.gradient)
        tensor([1., 1.])
    """
    check_input(x, exact_ndim=4)
    if not callable(method):
        raise TypeError(f"method must be an attribution method, got {type(method).__name__}")
    if not isinstance(attribution, torch.Tensor) or attribution.shape[0] != x.shape[0] \
            or not attribution.is_floating_point():
        raise ValueError(f"attribution must be the method's map at x, a floating tensor [B, ...] with B = {x.shape[0]}")
    tgt = one_per_input(model_fn, params, x, target)
    fixed = tgt.index[:, 0] if tgt.index is not None else tgt.fn
    options = dict(method_options or {})
    if "key" not in options and keys.takes_key(method):
        options["key"] = keys.generator(key)
    if layer is None:
        layer = layer_order(params, model_fn)[0]
    shifted = method(model_fn, shifted_first_layer(params, layer, shift), x + shift, fixed, **options).detach()
    if shifted.shape != attribution.shape:
        raise ValueError(f"attribution has shape {tuple(attribution.shape)} but method returns "
                         f"{tuple(shifted.shape)}; pass the same method's map at x")
    a = attribution.detach()
    close = (a - shifted).abs() <= atol + 1e-5 * shifted.abs()
    return close.flatten(1).all(1).to(a.dtype)
