"""Sanity checks by parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Randomisation works on ``params`` dicts: a randomised model is a new dict in
which the tensors of the chosen layers are re-initialised; the module and the
original tensors are never touched. Similarities between maps (Spearman rank
correlation, SSIM) are torch functions, batched over inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._core import keys
from .._core.checks import check_choice, check_map
from .._core.functional import FunctionalModel
from .._core.targets import TargetLike, one_per_input


def _parameter_names(params, model_fn=None) -> list[str]:
    if isinstance(model_fn, FunctionalModel):
        names = {n for n, _ in model_fn.module.named_parameters()}
        return [n for n in params if n in names]
    return [n for n, t in params.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and "running_" not in n.rsplit(".", 1)[-1]]


def layer_order(params, model_fn=None) -> list[str]:
    """Prefixes of the layers holding parameters, in the module's order (input side first).

    With ``model_fn`` made by :func:`fxai.functional`, its module tells
    parameters from buffers; otherwise floating tensors not named ``running_*``
    count as parameters.

    Example:
        >>> fxai.metrics.layer_order(params)[-3:]
        ['layer4.conv', 'layer4.bn', 'fc']
    """
    out = []
    for name in _parameter_names(params, model_fn):
        prefix = name.rsplit(".", 1)[0] if "." in name else ""
        if prefix not in out:
            out.append(prefix)
    return out


def _members(params, prefix: str, names) -> list[str]:
    return [n for n in names if (n.startswith(prefix + ".") if prefix else "." not in n)]


def randomised_params(params, layers: Sequence[str], *, key, model_fn=None) -> dict:
    r"""A new params dict whose parameters under each prefix in ``layers`` are re-initialised.

    Each re-initialised tensor is drawn from a Gaussian with the mean and
    (population) standard deviation of the original tensor,
    :math:`w' \sim \mathcal N(\bar w, \sigma_w^2)`, so the layer keeps its scale
    and the randomised network neither saturates nor dies; a constant tensor
    (such as an untrained norm layer's weight, all ones) gets
    :math:`\sigma = |\bar w|` instead, and an all-zero one stays zero. Other entries,
    buffers included, are the same tensor objects as in ``params``.

    Example:
        >>> p2 = fxai.metrics.randomised_params(params, ["fc", "layer4"], key=0)
    """
    names = _parameter_names(params, model_fn)
    gen = keys.generator(key)
    out = dict(params)
    for prefix in layers:
        members = _members(params, prefix, names)
        if not members:
            raise ValueError(f"layers: no parameters under {prefix!r}; known layers: "
                             f"{', '.join(layer_order(params, model_fn)[:40])}")
        for n in members:
            t = params[n].detach()
            noise = keys.normal(gen, t.shape, t)
            mean, std = t.mean(), t.std(unbiased=False)
            out[n] = mean + torch.where(std > 0, std, mean.abs()) * noise
    return out


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) along the last axis."""
    s = v.sort(-1).values.contiguous()
    v = v.contiguous()
    lo = torch.searchsorted(s, v, side="left")
    hi = torch.searchsorted(s, v, side="right")
    return (lo + hi + 1).to(v.dtype) / 2


def spearman(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = False) -> torch.Tensor:
    r"""Spearman rank correlation between maps, per input: ``[B]``.

    The Pearson correlation of the average ranks (ties share their mean rank,
    as ``scipy.stats.spearmanr``) of the flattened maps; with ``absolute=True``,
    of :math:`|a|` and :math:`|b|` (Adebayo et al. report both). Where scipy
    returns NaN, for constant maps: 1 when both maps are constant, 0 when one is.

    Example:
        >>> fxai.metrics.spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]))
        tensor([-1.])
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim < 2:
        raise ValueError("spearman: a and b must be tensors of the same shape [B, ...]")
    a, b = a.flatten(1), b.flatten(1)
    if absolute:
        a, b = a.abs(), b.abs()
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    ra, rb = _ranks(a.to(dtype)), _ranks(b.to(dtype))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    va, vb = ra.square().sum(-1), rb.square().sum(-1)
    rho = (ra * rb).sum(-1) / (va * vb).clamp_min(torch.finfo(dtype).tiny).sqrt()
    # A constant map ranks nothing: two of them agree (1), one against a varying map correlates 0.
    return torch.where((va == 0) & (vb == 0), torch.ones_like(rho), rho)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float | torch.Tensor | None = None,
         win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    r"""Structural similarity (Wang et al. 2004) between maps ``[B, H, W]`` or ``[B, C, H, W]``: ``[B]``.

    .. math:: \mathrm{SSIM} = \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}
              {(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},\quad
              C_i = (k_i L)^2

    averaged over every ``win_size × win_size`` window inside the map (uniform
    window, sample covariances), and over channels: the conventions of
    ``skimage.metrics.structural_similarity``. ``data_range`` :math:`L`
    defaults to each pair's joint range ``max(a, b) - min(a, b)``; two equal
    constant maps (a zero range, where the formula is 0/0) score 1.

    Example:
        >>> m = torch.rand(2, 16, 16)
        >>> fxai.metrics.ssim(m, m)
        tensor([1., 1.])
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape \
            or a.ndim not in (3, 4):
        raise ValueError("ssim: a and b must be tensors of the same shape [B, H, W] or [B, C, H, W]")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"ssim: maps of size {tuple(a.shape[-2:])} are smaller than win_size={win_size}")
    x = (a if a.ndim == 4 else a[:, None]).to(torch.float64 if a.dtype == torch.float64 else torch.float32)
    y = (b if b.ndim == 4 else b[:, None]).to(x.dtype)
    bsz, c = x.shape[:2]
    if data_range is None:
        both = torch.cat([x.flatten(1), y.flatten(1)], 1)
        rng = (both.amax(1) - both.amin(1)).view(bsz, 1, 1, 1)
    else:
        rng = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)

    def pool(t):
        return F.avg_pool2d(t.reshape(bsz * c, 1, *t.shape[-2:]), win_size, stride=1).view(bsz, c, -1)

    npix = win_size * win_size
    cov = npix / (npix - 1)
    mx, my = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)
    x, y = x - mx, y - my  # (co)variances from centred maps: E[x^2] - E[x]^2 cancels less
    ux, uy = pool(x), pool(y)
    vx = cov * (pool(x * x) - ux * ux)
    vy = cov * (pool(y * y) - uy * uy)
    vxy = cov * (pool(x * y) - ux * uy)
    ux, uy = ux + mx.view(bsz, c, 1), uy + my.view(bsz, c, 1)
    c1, c2 = (k1 * rng.view(-1, 1, 1)) ** 2, (k2 * rng.view(-1, 1, 1)) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return torch.where(rng.view(-1) == 0, torch.ones_like(s[:, 0, 0]), s.mean((1, 2)))  # equal constant maps: 1


SIMILARITIES = {
    "spearman": spearman,
    "spearman_abs": lambda a, b: spearman(a, b, absolute=True),
    "ssim": lambda a, b: ssim(a if a.ndim != 4 else a.abs().sum(1), b if b.ndim != 4 else b.abs().sum(1)),
}


def similarity_function(similarity):
    """The similarity ``(a, b) -> [B]`` named by ``similarity`` (a key of :data:`SIMILARITIES`) or given as a
    callable."""
    sim = SIMILARITIES.get(similarity) if isinstance(similarity, str) else similarity
    if sim is None or not callable(sim):
        raise ValueError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))} or a callable (a, b) -> [B]; "
                         f"got {similarity!r}")
    return sim


def randomisation(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
                  method, mode: str = "cascading", layers: Sequence[str] | None = None, similarity="spearman",
                  method_options=None, key=None) -> torch.Tensor:
    r"""Model-parameter randomisation test: similarity of the map before and after randomising layers.

    Adebayo et al., NeurIPS 2018. ``layers`` (default: every layer with
    parameters, :func:`layer_order`) are visited from the top (output side)
    down. ``mode="cascading"``: stage ``i`` randomises the ``i + 1`` top-most
    layers together; ``"independent"``: stage ``i`` randomises layer ``i`` alone.
    A layer gets the same random weights at every stage (see
    :func:`randomised_params`). The map of ``method`` under each randomised
    ``params`` is compared with ``attribution`` by ``similarity``
    (``"spearman"``, ``"spearman_abs"``, ``"ssim"`` on channel-summed absolute
    maps, or a callable ``(a, b) -> [B]``). The target is fixed on the clean
    input with the original params. A map that stays similar as the
    network is randomised does not explain the model.

    Args:
        model_fn, params, x, target: as :func:`fxai.gradient`.
        attribution: ``method``'s map under the original ``params``.
        method: attribution method ``(model_fn, params, x, target, **options) -> map``.
        layers: layer prefixes (input side first, as :func:`layer_order`).
        key: randomness of the re-initialisation (and of a randomised ``method``).

    Returns:
        ``[B, L]`` similarities, column ``i`` for stage ``i`` (top layer first).

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> sims = fxai.metrics.randomisation(model_fn, params, x, 3, g, method=fxai.gradient, key=0)
    """
    check_choice(mode, ("cascading", "independent"), name="mode")
    check_map(attribution, x)
    if not callable(method):
        raise TypeError(f"method must be an attribution method, got {type(method).__name__}")
    sim = similarity_function(similarity)
    order = list(layer_order(params, model_fn) if layers is None else layers)[::-1]
    if not order:
        raise ValueError("layers: no layer to randomise")
    gen = keys.generator(key)
    random = randomised_params(params, order, key=gen, model_fn=model_fn)
    tgt = one_per_input(model_fn, params, x, target)
    fixed = tgt.index[:, 0] if tgt.index is not None else tgt.fn
    options = dict(method_options or {})
    if "key" not in options and keys.takes_key(method):
        options["key"] = gen
    names = _parameter_names(params, model_fn)
    out = []
    for i, prefix in enumerate(order):
        chosen = order[: i + 1] if mode == "cascading" else [prefix]
        p = dict(params)
        for layer in chosen:
            p.update({n: random[n] for n in _members(params, layer, names)})
        maps = method(model_fn, p, x, fixed, **options).detach()
        out.append(sim(attribution.detach(), maps))
    return torch.stack(out, -1)


def random_logit(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *, method,
                 off_class=None, similarity="ssim", normalise: bool = True, method_options=None,
                 key=None) -> torch.Tensor:
    r"""Random logit test: similarity of the map of the target with the map of a random other class.

    .. math:: \operatorname{sim}\big(\Phi(x, y),\ \Phi(x, y')\big),\quad y' \sim U(\{1..K\} \setminus \{y\})

    Sixt et al., "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML 2020. A map that
    explains the class must change with it: lower is better. The off class is drawn from ``key`` as an index
    ``r`` into the other classes in increasing order (``y' = r + [r >= y]``, Quantus's convention), or
    given as ``off_class`` (``LongTensor [B]``). With ``normalise=True`` (as Quantus) each map is divided by
    its largest absolute value before the comparison; ``similarity`` as in :func:`randomisation` (default
    ``"ssim"``). Cost: one call of ``method`` on the batch.

    Args:
        attribution: ``method``'s map for ``target``.
        method: attribution method ``(model_fn, params, x, target, **options) -> map``.
        off_class: the other classes ``[B]``; drawn from ``key`` when None.
        key: randomness of the off class (and of a randomised ``method``).

    Returns:
        ``[B]`` similarities.

    Example:
        >>> g = fxai.gradient(model_fn, params, x, 3)
        >>> fxai.metrics.random_logit(model_fn, params, x, 3, g, method=fxai.gradient, key=0).shape
        torch.Size([2])
    """
    check_map(attribution, x)
    if not callable(method):
        raise TypeError(f"method must be an attribution method, got {type(method).__name__}")
    sim = similarity_function(similarity)
    tgt = one_per_input(model_fn, params, x, target)
    if tgt.index is None:
        raise ValueError("target: the random logit test needs class indices (an int, a LongTensor [B] or None)")
    y = tgt.index[:, 0]
    gen = None
    if off_class is None:
        gen = keys.generator(key)
        with torch.no_grad():
            classes = model_fn(params, x[:1].clone()).shape[-1]
        r = keys.integers(gen, classes - 1, (x.shape[0],), y)
        off_class = r + (r >= y).long()
    off_class = torch.as_tensor(off_class, device=y.device).long().reshape(-1)
    if off_class.shape != y.shape or (off_class == y).any() or off_class.min() < 0:
        raise ValueError("off_class must be a LongTensor [B] of classes other than the target")
    options = dict(method_options or {})
    if "key" not in options and keys.takes_key(method):
        options["key"] = gen if gen is not None else keys.generator(key)
    other = method(model_fn, params, x, off_class, **options).detach()

    def scaled(a):
        if not normalise:
            return a
        top = a.flatten(1).abs().amax(1).view(-1, *[1] * (a.ndim - 1))
        return a / torch.where(top > 0, top, torch.ones_like(top))

    return sim(scaled(attribution.detach()), scaled(other))
