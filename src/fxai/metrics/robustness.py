"""Infidelity and max-sensitivity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019)."""

from __future__ import annotations

import torch

from .._core import keys
from .._core.batching import scores as stacked_scores
from .._core.batching import auto_chunk, unstack
from .._core.checks import check_finite, check_input, check_positive_int
from .._core.targets import TargetLike, one_per_input, scored_model



def _perturbations(perturb, x, samples, key, default):
    if perturb is None:
        return default(keys.generator(key))
    return given_perturbations(perturb, x, samples, key)


def given_perturbations(perturb, x, samples: int, key) -> torch.Tensor:
    """The perturbations ``perturb(x, samples=samples, key=key)`` of a caller's callable, checked to be a tensor
    ``[samples, *x.shape]``, on ``x``'s device and dtype."""
    if not callable(perturb):
        raise TypeError(f"perturb must be a callable (x, *, samples, key) -> [samples, B, ...] or None, "
                        f"got {type(perturb).__name__}")
    out = perturb(x, samples=samples, key=key)
    if not isinstance(out, torch.Tensor) or out.shape != (samples, *x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"perturb must return a tensor [samples, *x.shape] = {(samples, *x.shape)}, got {got}")
    return out.to(device=x.device, dtype=x.dtype)


def _pixel_map(attribution, x, name="attribution"):
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor shaped like x or [B, H, W]")
    check_finite(attribution, name=name)
    if attribution.shape == x.shape:
        return attribution
    if x.ndim == 4 and attribution.shape == (x.shape[0], *x.shape[2:]):
        return attribution[:, None]
    raise ValueError(f"{name} must have the shape of x {tuple(x.shape)} or [B, H, W]; got {tuple(attribution.shape)}")


def infidelity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
               samples: int = 16, sigma: float = 0.01, perturb=None, normalize: bool = False,
               softmax: bool = False, key=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Explanation infidelity: how badly ``attribution · I`` predicts the score change under perturbations ``I``.

    .. math:: \mathrm{INFD}(\Phi, f, x) = \mathbb E_{I}\Big[\big(I^\top \Phi(x) - (f(x) - f(x - I))\big)^2\Big]

    Yeh et al., NeurIPS 2019. ``I`` is Gaussian noise of std ``sigma`` by default,
    or whatever ``perturb(x, *, samples, key) -> [samples, B, ...]`` returns. With
    ``normalize=True`` the attribution term is first scaled by the
    least-squares factor :math:`\beta = \mathbb E[I^\top\Phi\,\Delta f] / \mathbb E[(I^\top\Phi)^2]`
    (as in the paper's code and Captum), which makes the score invariant to
    the map's scale. All ``samples`` perturbed copies and the clean input are
    scored in one stacked forward pass. A map ``[B, H, W]`` is broadcast over channels.

    Args:
        model_fn, params, x, target: as :func:`fxai.gradient`; target ``None`` is
            the top-1 class on the clean input.
        attribution: map shaped like ``x`` (or ``[B, H, W]``).
        samples: number of perturbations per input.
        sigma: std of the default Gaussian perturbation.
        key: randomness of the default perturbation (required then).
        softmax: score probabilities (True; the sigmoid of a single-logit model) or logits (False).

    Returns:
        ``[B]`` infidelities (lower is better).

    Example:
        >>> inf = fxai.metrics.infidelity(model_fn, params, x, 3, fxai.gradient(model_fn, params, x, 3), key=0)
    """
    check_input(x)
    check_positive_int(samples, name="samples")
    chunk_size = auto_chunk(chunk_size, x)
    amap = _pixel_map(attribution, x)
    noise = _perturbations(perturb, x, samples, key, lambda g: sigma * keys.normal(g, (samples, *x.shape), x))
    fn = scored_model(model_fn, softmax)
    tgt = one_per_input(fn, params, x, target)
    with torch.no_grad():
        rows = torch.cat([x, (x[None] - noise).flatten(0, 1)])
        s = unstack(stacked_scores(fn, params, rows, tgt, chunk_size=chunk_size), samples + 1)
    diff = s[0] - s[1:]
    dot = (noise * amap).flatten(2).sum(-1)
    if normalize:
        beta = (dot * diff).mean(0) / dot.square().mean(0)
        dot = dot * beta
    return (dot - diff).square().mean(0)


def max_sensitivity(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                    method, samples: int = 10, radius: float = 0.02, perturb=None, method_options=None,
                    key=None) -> torch.Tensor:
    r"""Max-sensitivity: the largest relative change of the map under small input perturbations.

    .. math:: \mathrm{SENS}_{max}(\Phi, x) = \max_{\lVert\delta\rVert_\infty \le r}
              \frac{\lVert \Phi(x + \delta) - \Phi(x) \rVert_2}{\lVert \Phi(x) \rVert_2}

    Yeh et al., NeurIPS 2019, estimated with ``samples`` draws of
    :math:`\delta \sim U[-r, r]` (or ``perturb(x, *, samples, key)``). All
    perturbed inputs go to ``method`` as one batch of ``samples * B`` inputs
    with the target fixed on the clean input; a zero map is divided by 1
    (as Captum's ``sensitivity_max``).

    Args:
        model_fn, params, x, target: as :func:`fxai.gradient`.
        attribution: ``method``'s map at ``x`` (``[B, ...]``).
        method: an attribution method ``(model_fn, params, x, target, **options) -> map``.
        samples: number of perturbations per input.
        radius: :math:`r`, the L-infinity radius of the perturbation.
        method_options: keyword options for ``method`` (e.g. ``{"steps": 16}``).
        key: randomness of the perturbations (and of a randomised ``method``); required when either is
            drawn (the default ``perturb``, a method with a ``key``), as in :func:`infidelity`.

    Returns:
        ``[B]`` max-sensitivities (lower is better).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> sens = fxai.metrics.max_sensitivity(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    check_input(x)
    check_positive_int(samples, name="samples")
    if not callable(method):
        raise TypeError(f"method must be an attribution method (model_fn, params, x, target, ...), "
                        f"got {type(method).__name__}")
    if not isinstance(attribution, torch.Tensor) or attribution.shape[0] != x.shape[0]:
        raise ValueError(f"attribution must be the method's map at x, a tensor [B, ...] with B = {x.shape[0]}")
    options = dict(method_options or {})
    random_method = "key" not in options and keys.takes_key(method)
    # A key is needed when something random is drawn: the default perturbation, or a randomised method.
    gen = keys.generator(key) if perturb is None or random_method or key is not None else None
    delta = _perturbations(perturb, x, samples, gen,
                           lambda g: radius * (2 * keys.uniform(g, (samples, *x.shape), x) - 1))
    tgt = one_per_input(model_fn, params, x, target)
    if random_method:
        options["key"] = gen
    maps = method(model_fn, params, (x[None] + delta).flatten(0, 1), tgt.stacked(samples), **options)
    maps = unstack(maps.detach(), samples)
    if maps.shape[1:] != attribution.shape:
        raise ValueError(f"method returned maps of shape {tuple(maps.shape[1:])} for the perturbed inputs but "
                         f"attribution has shape {tuple(attribution.shape)}; pass the same method's map at x")
    norm = attribution.detach().flatten(1).norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    return ((maps - attribution.detach()[None]).flatten(2).norm(dim=-1) / norm).amax(0)
