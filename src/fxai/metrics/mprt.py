r"""Model-parameter randomisation revisited (Hedström et al., "Sanity Checks Revisited: An Exploration to Repair
the Model Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023).

:func:`smooth_mprt` (sMPRT) denoises the maps of the randomisation test by averaging them over noisy copies
of the input; :func:`efficient_mprt` (eMPRT) compares the complexity (:func:`histogram_entropy`) of the map
before and after randomising the whole network. Randomised models are params dicts
(:func:`~fxai.metrics.randomised_params`, or given as ``stages``); the module and ``params`` are untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._core import keys
from .._core.batching import unstack
from .._core.checks import check_choice, check_input, check_positive_int
from .._core.targets import TargetLike, one_per_input
from .randomisation import layer_order, randomised_params, similarity_function


def histogram_entropy(attribution: torch.Tensor, *, bins: int = 100) -> torch.Tensor:
    r"""Shannon entropy (nats) of the histogram of each map's values: ``[B]``.

    .. math:: H = -\sum_k p_k \log p_k,\quad p_k = n_k / \sum_j n_j

    over ``bins`` equal bins between the map's minimum and maximum (NumPy's ``histogram`` bins, the last one
    closed; a constant map has one full bin and entropy 0): Quantus's ``discrete_entropy``.

    Example:
        >>> fxai.metrics.histogram_entropy(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), bins=2)
        tensor([0.6931])
    """
    check_positive_int(bins, name="bins")
    a = attribution.detach().flatten(1).double()
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    same = lo == hi
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    steps = torch.linspace(0, 1, bins + 1, dtype=a.dtype, device=a.device)
    edges = lo + (hi - lo) * steps  # [B, bins + 1]
    idx = ((a - lo) * (bins / (hi - lo))).long().clamp(0, bins - 1)
    idx = idx - (a < edges.gather(1, idx)).long()  # NumPy's corrections at the edges
    idx = idx + ((a >= edges.gather(1, idx + 1)) & (idx != bins - 1)).long()
    counts = torch.zeros(a.shape[0], bins, dtype=a.dtype, device=a.device).scatter_add_(1, idx, torch.ones_like(a))
    p = counts / counts.sum(1, keepdim=True)
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1).to(attribution.dtype)


def _method_options(method, method_options, gen):
    if not callable(method):
        raise TypeError(f"method must be an attribution method, got {type(method).__name__}")
    options = dict(method_options or {})
    if "key" not in options and keys.takes_key(method):
        options["key"] = gen if gen is not None else keys.generator(None)
    return options


def _fixed_target(model_fn, params, x, target):
    tgt = one_per_input(model_fn, params, x, target)
    return tgt.index[:, 0] if tgt.index is not None else tgt.fn, tgt


def cascade(params, layers: Sequence[str], *, key, model_fn=None) -> list[dict]:
    """The params dicts of a cascading randomisation: entry ``i`` has ``layers[: i + 1]`` re-initialised
    (:func:`~fxai.metrics.randomised_params`, each layer drawn once and kept at later stages).

    Example:
        >>> stages = fxai.metrics.cascade(params, ["fc", "layer4.conv"], key=0)
        >>> len(stages), stages[0]["layer4.conv.weight"] is params["layer4.conv.weight"]
        (2, True)
    """
    random = randomised_params(params, list(layers), key=key, model_fn=model_fn)
    out, current = [], dict(params)
    for prefix in layers:
        current = dict(current)
        current.update({n: t for n, t in random.items() if t is not params.get(n)
                        and (n.startswith(prefix + ".") if prefix else "." not in n)})
        out.append(current)
    return out


def _stages(params, model_fn, layers, order, stages, gen):
    if stages is not None:
        stages = list(stages)
        if not stages or not all(isinstance(p, dict) for p in stages):
            raise ValueError("stages must be a non-empty sequence of params dicts (the randomised models)")
        return stages
    check_choice(order, ("bottom_up", "top_down"), name="order")
    chosen = list(layer_order(params, model_fn) if layers is None else layers)
    if not chosen:
        raise ValueError("layers: no layer to randomise")
    return cascade(params, chosen if order == "bottom_up" else chosen[::-1], key=gen, model_fn=model_fn)


def smoothed_maps(model_fn, params, x: torch.Tensor, target, *, method, samples: int = 50, magnitude: float = 0.1,
                  noise: Callable | None = None, method_options=None, key=None) -> torch.Tensor:
    r"""The map of ``method`` averaged over ``samples`` copies of ``x``: ``samples - 1`` with Gaussian noise of
    std ``magnitude · (max x - min x)`` (per image) and the clean input, all in one call of ``method``.

    ``noise(shape) -> tensor`` draws standard normal noise of ``x``'s shape (``samples - 1`` calls, in order);
    default: from ``key``.

    Example:
        >>> m = fxai.metrics.smoothed_maps(model_fn, params, x, 3, method=fxai.gradient, samples=4, key=0)
    """
    check_positive_int(samples, name="samples")
    gen = keys.generator(key) if noise is None or key is not None else None
    draw = noise if noise is not None else (lambda shape: keys.normal(gen, shape, x))
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *[1] * (x.ndim - 1))
    eps = [torch.as_tensor(draw(tuple(x.shape))).to(x) * magnitude * span for _ in range(samples - 1)]
    rows = torch.cat([x + e for e in eps] + [x])
    tgt = target.repeat(samples) if isinstance(target, torch.Tensor) else target
    options = _method_options(method, method_options, gen)
    return unstack(method(model_fn, params, rows, tgt, **options).detach(), samples).mean(0)


def smooth_mprt(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, method,
                samples: int = 50, magnitude: float = 0.1, layers: Sequence[str] | None = None,
                order: str = "bottom_up", stages=None, similarity="spearman", absolute: bool = True,
                noise: Callable | None = None, method_options=None, key=None) -> torch.Tensor:
    r"""Smooth MPRT: similarity of a map with the noise-averaged maps of ever more randomised models.

    .. math:: \operatorname{sim}\Big(|a|,\ \Big|\frac{1}{N}\sum_{n=1}^{N} \Phi(f_{\theta_\ell}, x + \epsilon_n)
              \Big|\Big),\quad \epsilon_N = 0,\ \epsilon_n \sim \mathcal N(0, (\sigma (\max x - \min x))^2)

    Hedström et al. 2023. Stage :math:`\ell` randomises the layers up to :math:`\ell` (``order="bottom_up"``,
    input side first, as the paper and Quantus; or ``"top_down"``), and the maps of the randomised model are
    averaged over ``samples`` inputs (:func:`smoothed_maps`: ``samples - 1`` noisy copies and the clean one).
    ``attribution`` is the reference, usually the smoothed map of the original model. Both sides are compared
    in absolute value (``absolute``) by ``similarity`` (as :func:`~fxai.metrics.randomisation`). Lower is better
    (the map depends on the parameters). Cost: ``samples`` calls of ``method`` per input and stage.

    Args:
        attribution: the reference map ``[B, ...]``.
        method: attribution method ``(model_fn, params, x, target, **options) -> map``.
        stages: optional randomised params dicts, one per stage (replaces ``layers``, ``order`` and ``key``'s
            re-initialisation; see :func:`cascade`).
        noise: optional ``(shape) -> standard normal tensor``, called ``samples - 1`` times per stage in order.
        key: randomness of the re-initialisation and the noise.

    Returns:
        ``[B, L]`` similarities, one column per stage.

    Example:
        >>> ref = fxai.metrics.smoothed_maps(model_fn, params, x, 3, method=fxai.gradient, samples=4, key=1)
        >>> fxai.metrics.smooth_mprt(model_fn, params, x, 3, ref, method=fxai.gradient, samples=4,
        ...                          layers=["layer4.conv", "fc"], key=0).shape
        torch.Size([2, 2])
    """
    check_input(x)
    if not isinstance(attribution, torch.Tensor) or attribution.shape[0] != x.shape[0]:
        raise ValueError(f"attribution must be the reference map, a tensor [B, ...] with B = {x.shape[0]}")
    sim = similarity_function(similarity)
    gen = keys.generator(key) if stages is None or noise is None or key is not None else None
    fixed, _ = _fixed_target(model_fn, params, x, target)
    ref = attribution.detach()
    out = []
    for p in _stages(params, model_fn, layers, order, stages, gen):
        maps = smoothed_maps(model_fn, p, x, fixed, method=method, samples=samples, magnitude=magnitude,
                             noise=noise, method_options=method_options, key=gen)
        if maps.shape != ref.shape:
            raise ValueError(f"attribution has shape {tuple(ref.shape)} but method returns {tuple(maps.shape)}")
        out.append(sim(ref.abs(), maps.abs()) if absolute else sim(ref, maps))
    return torch.stack(out, -1)


def efficient_mprt(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, method,
                   layers: Sequence[str] | None = None, randomised: dict | None = None, bins: int = 100,
                   method_options=None, key=None) -> torch.Tensor:
    r"""Efficient MPRT: the relative rise of the map's complexity when the whole network is randomised.

    .. math:: \mathrm{eMPRT} = \frac{H(\Phi(f_{\tilde\theta}, x)) - H(\Phi(f_\theta, x))}{H(\Phi(f_\theta, x))}

    Hedström et al. 2023, with :math:`H` the :func:`histogram_entropy` of the map (``bins`` bins, Quantus's
    ``discrete_entropy``) and :math:`\tilde\theta` every layer of ``layers`` (default all) re-initialised
    (:func:`~fxai.metrics.randomised_params`) or the given ``randomised`` params. Higher is better (a map of a
    random network should look like noise). Cost: one call of ``method`` on the batch.

    Args:
        attribution: ``method``'s map under ``params``.
        randomised: optional params dict of the randomised model (instead of drawing it from ``key``).

    Returns:
        ``[B]`` relative entropy changes.

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> fxai.metrics.efficient_mprt(model_fn, params, x, 3, g, method=fxai.gradient, key=0).shape
        torch.Size([2])
    """
    check_input(x)
    if not isinstance(attribution, torch.Tensor) or attribution.shape[0] != x.shape[0]:
        raise ValueError(f"attribution must be the method's map at x, a tensor [B, ...] with B = {x.shape[0]}")
    gen = keys.generator(key) if randomised is None or key is not None else None
    if randomised is None:
        chosen = list(layer_order(params, model_fn) if layers is None else layers)
        randomised = randomised_params(params, chosen, key=gen, model_fn=model_fn)
    fixed, _ = _fixed_target(model_fn, params, x, target)
    maps = method(model_fn, randomised, x, fixed, **_method_options(method, method_options, gen)).detach()
    if maps.shape != attribution.shape:
        raise ValueError(f"attribution has shape {tuple(attribution.shape)} but method returns {tuple(maps.shape)}")
    h0 = histogram_entropy(attribution, bins=bins)
    return (histogram_entropy(maps, bins=bins) - h0) / h0
