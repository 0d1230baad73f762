"""Explicit post-processing of raw maps: heat maps, channel reduction, normalisation, clipping.

Methods return raw maps; nothing here is applied behind the user's back. Every
function works per input (over all dimensions but the leading ``batch_dims``),
so maps stay comparable only when you choose so.
"""

from __future__ import annotations

import torch

from ._core.checks import check_choice, check_finite

REDUCTIONS = ("sum", "mean", "abs_sum", "abs_max", "l2", "max")


def reduce_channels(amap: torch.Tensor, how: str = "sum", *, dim: int = -3) -> torch.Tensor:
    r"""Collapse the channel axis of a pixel map ``[..., C, H, W] -> [..., H, W]``.

    ``how``: ``"sum"`` (signed, keeps completeness), ``"mean"``, ``"abs_sum"``
    (:math:`\sum_c |a_c|`), ``"abs_max"`` (:math:`\max_c |a_c|`, Simonyan et al.),
    ``"l2"`` (:math:`\lVert a \rVert_2` over channels) or ``"max"``.

    Example:
        >>> heat = fxai.postprocess.reduce_channels(fxai.gradient(model_fn, params, x), "abs_max")
    """
    check_choice(how, REDUCTIONS, name="how")
    if how == "sum":
        return amap.sum(dim)
    if how == "mean":
        return amap.mean(dim)
    if how == "abs_sum":
        return amap.abs().sum(dim)
    if how == "abs_max":
        return amap.abs().amax(dim)
    if how == "l2":
        return amap.square().sum(dim).sqrt()
    return amap.amax(dim)


def _flat(amap: torch.Tensor, batch_dims: int) -> torch.Tensor:
    return amap.flatten(batch_dims) if amap.ndim > batch_dims else amap.reshape(*amap.shape, 1)


def _per_map(values: torch.Tensor, amap: torch.Tensor, batch_dims: int) -> torch.Tensor:
    return values.reshape(*amap.shape[:batch_dims], *([1] * (amap.ndim - batch_dims)))


def normalize(amap: torch.Tensor, mode: str = "minmax", *, batch_dims: int = 1, eps: float = 1e-12) -> torch.Tensor:
    r"""Rescale each map: ``"minmax"`` to [0, 1], ``"maxabs"`` to [-1, 1] keeping 0 and the sign, ``"sum"`` to unit L1 mass.

    .. math:: \mathrm{minmax}(a) = \frac{a - \min a}{\max a - \min a},\quad
              \mathrm{maxabs}(a) = \frac{a}{\max |a|}

    A constant map becomes zeros. ``batch_dims`` leading axes index separate
    maps (2 for ``[B, K, H, W]``).

    Example:
        >>> scaled = fxai.postprocess.normalize(cam, "minmax")
    """
    check_choice(mode, ("minmax", "maxabs", "sum"), name="mode")
    flat = _flat(amap, batch_dims)
    if mode == "minmax":  # two passes over the pixels (range, one fused scale): Score-CAM makes a mask per row
        lo, hi = flat.aminmax(dim=-1)
        span = hi - lo
        scale = _per_map(torch.where(span > eps, 1 / span.clamp_min(eps), torch.zeros_like(span)), amap, batch_dims)
        return torch.addcmul(-_per_map(lo, amap, batch_dims) * scale, amap, scale)
    scale = flat.abs().amax(-1) if mode == "maxabs" else flat.abs().sum(-1)
    scale = _per_map(scale, amap, batch_dims)
    return torch.where(scale > eps, amap / scale.clamp_min(eps), torch.zeros_like(amap))


def clip_percentile(amap: torch.Tensor, low: float = 0.0, high: float = 99.0, *, batch_dims: int = 1) -> torch.Tensor:
    """Clip each map to its ``[low, high]`` percentiles (e.g. 99 as in SmoothGrad's figures).

    Example:
        >>> clipped = fxai.postprocess.clip_percentile(fxai.postprocess.reduce_channels(g, "abs_sum"), 0, 99)
    """
    if not 0 <= low <= high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100, got low={low}, high={high}")
    flat = _flat(amap, batch_dims).to(torch.float64 if amap.dtype == torch.float64 else torch.float32)
    q = torch.quantile(flat, torch.tensor([low / 100, high / 100], dtype=flat.dtype, device=flat.device), dim=-1)
    return torch.clamp(amap, _per_map(q[0], amap, batch_dims).to(amap.dtype), _per_map(q[1], amap, batch_dims).to(amap.dtype))


def positive(amap: torch.Tensor) -> torch.Tensor:
    """Keep the positive evidence: ``max(a, 0)`` (the final ReLU of Grad-CAM)."""
    return amap.clamp(min=0)


def upsample(amap: torch.Tensor, size: tuple[int, int], *, mode: str = "bilinear") -> torch.Tensor:
    """Resize maps ``[..., h, w]`` to ``size`` (bilinear, ``align_corners=False``), keeping leading axes."""
    lead = amap.shape[:-2]
    out = torch.nn.functional.interpolate(amap.reshape(-1, 1, *amap.shape[-2:]), size=tuple(size), mode=mode,
                                          align_corners=False if mode in ("bilinear", "bicubic") else None)
    return out.reshape(*lead, *out.shape[-2:])


SIGNS = ("all", "positive", "negative", "absolute")


def heatmap(attribution: torch.Tensor, *, kind: str | None = None, reduce: str = "sum", sign: str = "all",
            size: tuple[int, int] | None = None, name: str = "attribution") -> torch.Tensor:
    r"""A heat map ``[..., H, W]`` from a method's raw map: channels reduced, the chosen sign kept, resized.

    ``kind="pixel"`` maps ``[B, (K,) C, H, W]`` are reduced over their channel axis by ``reduce``
    (:func:`reduce_channels`); ``kind="cam"`` maps ``[B, (K,) H, W]`` are kept; ``None`` reads
    ``[B, C, H, W]`` as a pixel map and ``[B, H, W]`` as a heat map already. ``sign``: ``"all"`` keeps
    the values, ``"positive"`` :math:`\max(a, 0)`, ``"negative"`` :math:`\max(-a, 0)`, ``"absolute"``
    :math:`|a|`. ``size``: bilinear resize to ``(H, W)``. The one heat map of the library: the
    localisation metrics, the plots, the demo and the CLI read maps through it.

    Example:
        >>> heatmap(fxai.gradient(model_fn, params, x), reduce="abs_sum").shape
        torch.Size([2, 32, 32])
    """
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point():
        got = attribution.dtype if isinstance(attribution, torch.Tensor) else type(attribution).__name__
        raise TypeError(f"{name} must be a floating-point tensor [B, H, W] or [B, C, H, W], got {got}")
    check_choice(sign, SIGNS, name="sign")
    check_finite(attribution, name=name)
    if kind is None:
        if attribution.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape [B, H, W] or [B, C, H, W], got {tuple(attribution.shape)}")
        kind = "pixel" if attribution.ndim == 4 else "cam"
    check_choice(kind, ("pixel", "cam"), name="kind")
    heat = reduce_channels(attribution, check_choice(reduce, REDUCTIONS, name="reduce")) if kind == "pixel" \
        else attribution
    heat = {"all": heat, "positive": heat.clamp(min=0), "negative": (-heat).clamp(min=0), "absolute": heat.abs()}[sign]
    if size is not None and tuple(heat.shape[-2:]) != tuple(size):
        heat = upsample(heat, size)
    return heat
