"""Stability of a map under input perturbations: local Lipschitz estimate, average sensitivity, continuity,
relative input / representation / output stability.

Each metric re-explains perturbed copies of ``x`` with the attribution ``method`` that made
the map and compares the maps. The copies are stacked sample-major (``[n * B, ...]``) and explained
``chunk_size`` rows per call, on the device of ``x``, with the target fixed on the clean input. Perturbations
are drawn one sample at a time from ``key``, so the same key gives the same scores whatever ``chunk_size``; a
randomised method gets one seed per sample, drawn from the same key.
"""

from __future__ import annotations

import math

import torch

from .._core import keys
from .._core.batching import auto_chunk
from .._core.checks import check_finite, check_input, check_positive_int
from .._core.discovery import resolve_layers
from .._core.layers import forward_with_activations
from .._core.targets import TargetLike, check_logits, one_per_input
from .robustness import given_perturbations

EPS_MIN = 1e-6  # Agarwal et al.'s epsilon_min, also Quantus's


def _check_method(method):
    if not callable(method):
        raise TypeError(f"method must be an attribution method (model_fn, params, x, target, ...), "
                        f"got {type(method).__name__}")


def _check_attribution(attribution, x):
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point() \
            or attribution.ndim < 2 or attribution.shape[0] != x.shape[0]:
        raise ValueError(f"attribution must be the method's map at x, a floating-point tensor [B, ...] with "
                         f"B = {x.shape[0]}")
    return check_finite(attribution, name="attribution").detach()


def _deltas(perturb, x, samples, gen, draw):
    """A function ``(start, n) -> [n, B, ...]`` giving the perturbations of samples ``start .. start + n``."""
    if perturb is None:
        return lambda start, n: torch.stack([draw(gen) for _ in range(n)])
    out = given_perturbations(perturb, x, samples, gen)
    return lambda start, n: out[start:start + n]


def reexplained(model_fn, params, x, target, attribution, *, method, method_options, samples, perturbed, key,
                chunk_size, forward=False, layers=None):
    """Blocks ``(xs, maps, logits, acts)`` of perturbed inputs ``[n, B, ...]`` and ``method``'s maps of them.

    ``perturbed(start, n, gen)`` gives samples ``start .. start + n`` (``gen``: the generator of ``key``, or
    None when nothing is drawn). ``forward=True`` also gives the perturbed logits ``[n, B, K]``; ``layers`` the
    activations there (flattened and concatenated, ``[n, B, F]``).
    """
    check_input(x)
    check_positive_int(samples, name="samples")
    _check_method(method)
    amap = _check_attribution(attribution, x)
    options = dict(method_options or {})
    random_method = "key" not in options and keys.takes_key(method)
    gen = keys.generator(key) if random_method or key is not None else None
    seeds = torch.randint(2**62, (samples,), generator=gen, device=gen.device).tolist() if random_method else None
    tgt = one_per_input(model_fn, params, x, target)
    b = x.shape[0]
    per = 1 if random_method else max(1, auto_chunk(chunk_size, x) // b)
    for start in range(0, samples, per):
        n = min(per, samples - start)
        xs = perturbed(start, n, gen)
        rows = xs.flatten(0, 1)
        if random_method:
            options["key"] = seeds[start]
        maps = method(model_fn, params, rows, tgt.stacked(n), **options)
        if not isinstance(maps, torch.Tensor) or maps.shape[0] != n * b or maps.shape[1:] != amap.shape[1:]:
            got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"method returned {got} for {n * b} perturbed inputs but attribution has shape "
                             f"{tuple(amap.shape)}; pass the same method's map at x")
        maps = maps.detach().reshape(n, b, *maps.shape[1:])
        logits = acts = None
        if forward or layers:
            with torch.no_grad():
                if layers:
                    logits, act = forward_with_activations(model_fn, params, rows, layers)
                    acts = torch.cat([a.flatten(1) for a in act], 1).view(n, b, -1)
                else:
                    logits = model_fn(params, rows.clone())
            check_logits(logits, rows)
            logits = logits.view(n, b, -1)
        yield xs, maps, logits, acts


def _noise(perturb, x, samples, draw):
    """``perturbed(start, n, gen)`` for additive noise: ``draw(gen) -> [B, ...]`` or the user's ``perturb``."""
    state = {}

    def perturbed(start, n, gen):
        if "deltas" not in state:
            state["deltas"] = _deltas(perturb, x, samples, keys.generator(gen) if perturb is None else gen, draw)
        return x[None] + state["deltas"](start, n)

    return perturbed


def _needed(key, perturb):
    if perturb is None and key is None:
        keys.generator(None)  # the default perturbation is drawn: a key is required
    return key


def _flat(t):
    return t.flatten(2)


def local_lipschitz_estimate(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                             method, samples: int = 10, sigma: float = 0.1, perturb=None, method_options=None,
                             key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Local Lipschitz estimate: the largest ratio of the map's change to the input's change.

    .. math:: \hat L(x) = \max_{x' = x + \delta} \frac{\lVert \Phi(x) - \Phi(x') \rVert_2}
              {\lVert x - x' \rVert_2 + 10^{-10}}

    Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods", 2018; :math:`\delta \sim
    \mathcal N(0, \sigma^2)` drawn ``samples`` times (or ``perturb(x, *, samples, key) -> [samples, B, ...]``),
    as Quantus's ``LocalLipschitzEstimate``. Lower is better (a smoother explanation). Cost: ``method`` on
    ``samples * B`` inputs.

    Args:
        model_fn, params, x, target: as :func:`fxai.gradient`; target ``None`` is the top-1 class on the clean
            input, kept for every perturbed copy.
        attribution: ``method``'s map at ``x``.
        method: the attribution method ``(model_fn, params, x, target, **options) -> map``.
        samples: number of perturbations.
        sigma: std of the Gaussian perturbation.
        method_options: keyword options for ``method``.
        key: randomness of the perturbations (and of a randomised method).
        chunk_size: perturbed inputs per call of ``method``.

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> lle = fxai.metrics.local_lipschitz_estimate(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    perturbed = _noise(perturb, x, samples, lambda g: sigma * keys.normal(g, x.shape, x))
    out = []
    for xs, maps, _, _ in reexplained(model_fn, params, x, target, attribution, method=method,
                                      method_options=method_options, samples=samples, perturbed=perturbed,
                                      key=_needed(key, perturb), chunk_size=chunk_size):
        num = _flat(maps - attribution.detach()[None]).norm(dim=-1)
        den = _flat(xs - x[None]).norm(dim=-1)
        out.append(num / (den + 1e-10))
    return torch.cat(out).amax(0)


def avg_sensitivity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                    method, samples: int = 10, radius: float = 0.02, perturb=None, method_options=None,
                    key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Average sensitivity: the mean relative change of the map under small input perturbations.

    .. math:: \mathrm{SENS}_{avg}(\Phi, x) = \mathbb E_{\lVert\delta\rVert_\infty \le r}
              \frac{\lVert \Phi(x + \delta) - \Phi(x) \rVert_2}{\lVert \Phi(x) \rVert_2}

    Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019 (the mean where
    :func:`max_sensitivity` takes the max); :math:`\delta \sim U[-r, r]` drawn ``samples`` times (Quantus's
    ``AvgSensitivity`` uses ``lower_bound`` for :math:`r`, 0.2 by default). A zero map is divided by 1.
    Lower is better. Cost: ``method`` on ``samples * B`` inputs.

    Args:
        model_fn, params, x, target, attribution, method, method_options, key, chunk_size: as
            :func:`local_lipschitz_estimate`.
        samples: number of perturbations.
        radius: :math:`r`, the L-infinity radius of the uniform perturbation.

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> sens = fxai.metrics.avg_sensitivity(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    perturbed = _noise(perturb, x, samples, lambda g: radius * (2 * keys.uniform(g, x.shape, x) - 1))
    a = attribution.detach() if isinstance(attribution, torch.Tensor) else attribution
    out = []
    for _, maps, _, _ in reexplained(model_fn, params, x, target, attribution, method=method,
                                     method_options=method_options, samples=samples, perturbed=perturbed,
                                     key=_needed(key, perturb), chunk_size=chunk_size):
        norm = a.flatten(1).norm(dim=1)
        norm = torch.where(norm == 0, torch.ones_like(norm), norm)
        out.append(_flat(maps - a[None]).norm(dim=-1) / norm)
    return torch.cat(out).mean(0)


def _translated(x, shift, fill):
    """``x`` moved ``shift`` pixels along the width (right for positive), the uncovered columns ``fill``."""
    w = x.shape[-1]
    if shift == 0:
        return x
    pad = fill.expand(*x.shape[:-1], min(abs(shift), w))
    if abs(shift) >= w:
        return pad.clone()
    if shift > 0:
        return torch.cat([pad, x[..., :w - shift]], -1)
    return torch.cat([x[..., -shift:], pad], -1)


def continuity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, method,
               steps: int = 28, fill="black", method_options=None, key=None,
               chunk_size: int | None = None) -> torch.Tensor:
    r"""Continuity: the largest ratio of the map's L1 change to the input's L2 change over horizontal shifts.

    .. math:: C(x) = \max_{x'} \frac{\lVert \Phi(x) - \Phi(x') \rVert_1}{\lVert x - x' \rVert_2 + 10^{-9}}

    Montavon et al., "Methods for Interpreting and Understanding Deep Neural Networks", DSP 2018, with
    :math:`x'` the image moved sideways by :math:`t_k = -W + k\lfloor (2W + 1)/\text{steps} \rfloor` pixels,
    :math:`k = 1 \dots` ``steps``, the uncovered columns filled with ``fill`` (``"black"``: the image's
    minimum, ``"white"``: its maximum, or a number), as Quantus 0.6's ``Continuity``. Lower is better.
    Deterministic but for a randomised method. Cost: ``method`` on ``steps * B`` inputs.

    Args:
        model_fn, params, x, target, attribution, method, method_options, key, chunk_size: as
            :func:`local_lipschitz_estimate`.
        steps: number of shifts (at most :math:`2W + 1`).
        fill: value of the uncovered columns.

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> c = fxai.metrics.continuity(model_fn, params, x, 3, g, method=fxai.gradient, steps=8)
    """
    check_input(x, exact_ndim=4)
    check_positive_int(steps, name="steps")
    w = x.shape[-1]
    if steps > 2 * w + 1:
        raise ValueError(f"steps must be at most 2 * width + 1 = {2 * w + 1} (one shift per pixel), got {steps}")
    dims = tuple(range(1, x.ndim))
    if isinstance(fill, str) and fill in ("black", "white"):
        value = x.amin(dims, keepdim=True) if fill == "black" else x.amax(dims, keepdim=True)
    elif isinstance(fill, (int, float)) and not isinstance(fill, bool) and math.isfinite(fill):
        value = torch.full_like(x[..., :1], float(fill))
    else:
        raise ValueError(f"fill must be 'black', 'white' or a finite number, got {fill!r}")
    dx = (2 * w + 1) // steps

    def perturbed(start, n, gen):
        return torch.stack([_translated(x, -w + dx * (k + 1), value[..., :1]) for k in range(start, start + n)])

    out = []
    for xs, maps, _, _ in reexplained(model_fn, params, x, target, attribution, method=method,
                                      method_options=method_options, samples=steps, perturbed=perturbed,
                                      key=key, chunk_size=chunk_size):
        num = _flat(maps - attribution.detach()[None]).abs().sum(-1)
        out.append(num / (_flat(xs - x[None]).norm(dim=-1) + 1e-9))
    return torch.cat(out).amax(0)


def _relative(a, a_ref):
    """``(a_ref - a) / a_ref`` for samples ``a [n, B, ...]``, zeros of ``a_ref`` replaced by epsilon_min, flattened
    per sample: ``[n, B, D]``."""
    den = a_ref + (a_ref == 0) * EPS_MIN
    return _flat((a_ref[None] - a) / den[None])


def _stability(model_fn, params, x, target, attribution, *, method, samples, radius, perturb, method_options,
               key, chunk_size, denominator, layers=None):
    perturbed = _noise(perturb, x, samples, lambda g: radius * (2 * keys.uniform(g, x.shape, x) - 1))
    a = _check_attribution(attribution, x)
    with torch.no_grad():
        if layers:
            logits, act = forward_with_activations(model_fn, params, x, layers)
            ref = torch.cat([t.flatten(1) for t in act], 1)
        else:
            logits = model_fn(params, x.clone())
            ref = logits
    check_logits(logits, x)
    label = logits.argmax(-1)
    out = []
    for xs, maps, plogits, acts in reexplained(model_fn, params, x, target, attribution, method=method,
                                               method_options=method_options, samples=samples,
                                               perturbed=perturbed, key=_needed(key, perturb),
                                               chunk_size=chunk_size, forward=True, layers=layers):
        num = _relative(maps, a).norm(dim=-1)
        den = denominator(xs, plogits, acts, ref).clamp_min(EPS_MIN)
        same = plogits.argmax(-1) == label[None]
        out.append(torch.where(same, num / den, torch.full_like(num, -torch.inf)))
    best = torch.cat(out).amax(0)
    return torch.where(best == -torch.inf, torch.full_like(best, torch.nan), best)


_STABILITY_DOC = r"""

    Agarwal et al., "Rethinking Stability for Attribution-based Explanations", ICLR 2022 workshop; the max
    over ``samples`` perturbations :math:`x' = x + \delta`, :math:`\delta \sim U[-r, r]` (or
    ``perturb(x, *, samples, key) -> [samples, B, ...]``), that keep the predicted class; ``NaN`` for an input
    whose every perturbation changes it. Divisions by zero use :math:`\epsilon_{min} = 10^{-6}` as the paper:
    a zero element of the map (or activation) is replaced by it in the ratio, and the denominator is
    :math:`\max(\cdot, \epsilon_{min})`. Lower is better (a more stable explanation). Cost: ``method`` on
    ``samples * B`` inputs and one forward over them.

    Args:
        model_fn, params, x, target, attribution, method, method_options, key, chunk_size: as
            :func:`local_lipschitz_estimate`.
        samples: number of perturbations.
        radius: :math:`r`, the L-infinity radius of the uniform perturbation."""


def _stability_doc(fn):  # the relative stabilities' shared text at their docstrings' {stability} line
    fn.__doc__ = fn.__doc__.replace("    {stability}\n", "\n" + _STABILITY_DOC.lstrip("\n") + "\n")
    return fn


@_stability_doc
def relative_input_stability(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor,
                             *, method, samples: int = 10, radius: float = 0.02, perturb=None,
                             method_options=None, key=None, chunk_size: int | None = None) -> torch.Tensor:
    """Relative input stability (RIS): the map's relative change over the input's relative change.

    .. math:: \\mathrm{RIS}(x) = \\max_{x'} \\frac{\\lVert (\\Phi(x) - \\Phi(x')) / \\Phi(x) \\rVert_2}
              {\\max(\\lVert (x - x') / x \\rVert_2, \\epsilon_{min})}
    {stability}

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> ris = fxai.metrics.relative_input_stability(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    def denominator(xs, logits, acts, ref):
        return _relative(xs, x).norm(dim=-1)

    return _stability(model_fn, params, x, target, attribution, method=method, samples=samples, radius=radius,
                      perturb=perturb, method_options=method_options, key=key, chunk_size=chunk_size,
                      denominator=denominator)


@_stability_doc
def relative_output_stability(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor,
                              *, method, samples: int = 10, radius: float = 0.02, perturb=None,
                              method_options=None, key=None, chunk_size: int | None = None) -> torch.Tensor:
    """Relative output stability (ROS): the map's relative change over the change of the logits.

    .. math:: \\mathrm{ROS}(x) = \\max_{x'} \\frac{\\lVert (\\Phi(x) - \\Phi(x')) / \\Phi(x) \\rVert_2}
              {\\max(\\lVert h(x) - h(x') \\rVert_2, \\epsilon_{min})}

    with :math:`h` the logits (Quantus scores softmax probabilities unless called with ``softmax=False``).
    {stability}

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> ros = fxai.metrics.relative_output_stability(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    def denominator(xs, logits, acts, ref):
        return (logits - ref[None]).norm(dim=-1)

    return _stability(model_fn, params, x, target, attribution, method=method, samples=samples, radius=radius,
                      perturb=perturb, method_options=method_options, key=key, chunk_size=chunk_size,
                      denominator=denominator)


@_stability_doc
def relative_representation_stability(model_fn, params, x: torch.Tensor, target: TargetLike,
                                      attribution: torch.Tensor, *, method, layer=None, samples: int = 10,
                                      radius: float = 0.02, perturb=None, method_options=None, key=None,
                                      chunk_size: int | None = None) -> torch.Tensor:
    """Relative representation stability (RRS): the map's relative change over that of an internal layer.

    .. math:: \\mathrm{RRS}(x) = \\max_{x'} \\frac{\\lVert (\\Phi(x) - \\Phi(x')) / \\Phi(x) \\rVert_2}
              {\\max(\\lVert (L(x) - L(x')) / L(x) \\rVert_2, \\epsilon_{min})}

    with :math:`L` the output of ``layer`` (a dotted module name, or a list whose outputs are flattened and
    concatenated, as Quantus's ``layer_names``; ``None``: the last spatial layer, as the CAMs pick).
    {stability}
        layer: the representation :math:`L`.

    Returns:
        ``[B]`` (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> rrs = fxai.metrics.relative_representation_stability(model_fn, params, x, 3, g,
        ...                                                      method=fxai.gradient, key=0)
    """
    check_input(x)
    layers = resolve_layers(model_fn, layer, params=params, x=x)

    def denominator(xs, logits, acts, ref):
        return _relative(acts, ref).norm(dim=-1)

    return _stability(model_fn, params, x, target, attribution, method=method, samples=samples, radius=radius,
                      perturb=perturb, method_options=method_options, key=key, chunk_size=chunk_size,
                      denominator=denominator, layers=layers)

