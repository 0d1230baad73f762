"""Ensembles over noisy copies of the input, as transforms of any method."""

from __future__ import annotations

import functools

import torch
from torch.utils._pytree import tree_flatten

from .._core import keys
from .._core.batching import unstack
from .._core.docs import documented
from .._core.checks import check_input, check_positive_int
from .._core.targets import as_target
from .._core import structured


def noisy_maps(method, model_fn, params, x, target, /, *, samples: int, sigma: float, key,
               options: dict | None = None) -> torch.Tensor:
    r"""Maps of ``method`` on ``samples`` noisy copies :math:`x + \epsilon`, stacked ``[S, B, ...]``.

    :math:`\epsilon \sim \mathcal N(0, \sigma^2 (x_{max} - x_{min})^2)` with the range
    taken per input, as in Smilkov et al. (2017): ``sigma`` is the noise level
    relative to the input's range. All copies go to ``method`` as one batch of
    ``S * B`` inputs, with the target fixed on the clean input.
    """
    several = structured.is_structured(x)
    if not several:  # a structure's leaves are checked one by one as their noise is drawn
        check_input(x)
        _check_sigma(sigma)
    check_positive_int(samples, name="samples")
    gen = keys.generator(key)
    noisy = _noisy_structure(x, samples, sigma, gen) if several else (x + _noise(x, samples, sigma, gen)).flatten(0, 1)
    resolved = as_target(target, x).fixed(model_fn, params, x)
    options = dict(options or {})
    if keys.takes_key(method):
        options["key"] = gen
    maps = method(model_fn, params, noisy, resolved.stacked(samples), **options)
    return structured.each(lambda m: unstack(m, samples), maps)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):
        raise ValueError(f"sigma must be a non-negative number (noise std relative to the input range), got {sigma!r}")
    return sigma


def _noise(x: torch.Tensor, samples: int, sigma: float, gen) -> torch.Tensor:
    flat = x.flatten(1)
    span = (flat.max(1).values - flat.min(1).values).view(-1, *([1] * (x.ndim - 1)))
    return keys.normal(gen, (samples, *x.shape), x) * (sigma * span)


def _noisy_structure(x, samples: int, sigma, gen):
    """``samples`` noisy copies of a structured input stacked on the batch axis: noise on the attributed leaves
    (``sigma`` one number or one per leaf, in the structure of ``x``), the other leaves repeated."""
    s = structured.Structure(x)
    sigmas = [sigma] * len(s.leaves) if not structured.is_structured(sigma) else \
        tree_flatten(sigma, is_leaf=lambda v: v is None)[0]
    if len(sigmas) != len(s.leaves):
        raise ValueError(f"sigma must be a number or have the structure of x ({s.spec})")
    noisy = []
    for i in s.attributed:
        leaf = check_input(s.leaves[i], name=f"x (leaf {i})", min_ndim=1)
        noisy.append((leaf + _noise(leaf, samples, _check_sigma(sigmas[i]), gen)).flatten(0, 1))
    riders = {i: structured.fixed(r.repeat(samples, *([1] * (r.ndim - 1)))) for i, r in s.riders().items()}
    return s.rebuild(noisy, riders)


def _ensemble(reduce, name: str, doc: str):
    def transform(method, *, samples: int = 50, sigma: float = 0.15):
        check_positive_int(samples, name="samples")

        @functools.wraps(method)
        def ensembled(model_fn, params, x, target=None, *, key=None, **options):
            maps = noisy_maps(method, model_fn, params, x, target, samples=samples, sigma=sigma, key=key,
                              options=options)
            return structured.each(reduce, maps)

        ensembled.__name__ = ensembled.__qualname__ = f"{name}({getattr(method, '__name__', 'method')})"
        ensembled.__doc__ = f"{transform.__doc__}\n\nApplied to :func:`{getattr(method, '__name__', 'method')}`."
        del ensembled.__wrapped__
        return ensembled

    transform.__name__ = transform.__qualname__ = name
    transform.__doc__ = doc
    return documented(transform, **_TRANSFORM_ARGS)


_TRANSFORM_ARGS = {
    "method": "an attribution method ``(model_fn, params, x, target, **options) -> map``.",
    "samples": "number of noisy copies (default 50).",
    "sigma": "noise standard deviation relative to each input's range :math:`x_{max} - x_{min}` (default 0.15).",
}


smoothgrad = _ensemble(lambda m: m.mean(0), "smoothgrad", r"""
SmoothGrad: the mean of a method's maps over noisy copies of the input.

.. math:: \mathrm{SG}(x) = \frac1S \sum_{s=1}^S M(x + \epsilon_s),\quad
          \epsilon_s \sim \mathcal N(0, (\sigma\,(x_{max} - x_{min}))^2)

Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017. ``sigma``
is the noise level relative to each input's range (the paper's 10–20%
works well). All ``samples`` copies run as one vectorised batch (bounded
by the method's ``chunk_size``).

{args}

Returns:
    A method with the signature of ``method`` plus a required keyword ``key``
    (int seed or ``torch.Generator``).

Example:
    >>> sg = fxai.smoothgrad(fxai.integrated_gradients, samples=16, sigma=0.15)
    >>> m = sg(model_fn, params, x, 3, key=0, steps=16)
""")

smoothgrad_sq = _ensemble(lambda m: m.square().mean(0), "smoothgrad_sq", r"""
SmoothGrad²: the mean of a method's squared maps over noisy copies of the input.

.. math:: \mathrm{SG^2}(x) = \frac1S \sum_{s=1}^S M(x + \epsilon_s)^2

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural
Networks", NeurIPS 2019. Noise as :func:`fxai.smoothgrad`.

{args}

Returns:
    A method with the signature of ``method`` plus a required keyword ``key``.

Example:
    >>> m = fxai.smoothgrad_sq(fxai.gradient, samples=16)(model_fn, params, x, 3, key=0)
""")

vargrad = _ensemble(lambda m: m.var(0, unbiased=False), "vargrad", r"""
VarGrad: the (population) variance of a method's maps over noisy copies of the input.

.. math:: \mathrm{VG}(x) = \frac1S \sum_{s=1}^S \big(M(x + \epsilon_s) - \mathrm{SG}(x)\big)^2

Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack
Sensitivity to Parameter Values", 2018. Noise as :func:`fxai.smoothgrad`.

{args}

Returns:
    A method with the signature of ``method`` plus a required keyword ``key``.

Example:
    >>> m = fxai.vargrad(fxai.gradient, samples=16)(model_fn, params, x, 3, key=0)
""")
