r"""The driver of the gradient CAMs: a CAM is a declaration of how it weighs a layer's activations.

With ``A, G`` of shape ``[C, h, w]`` at the layer (:math:`G = \partial y_c / \partial A`, all from one
forward pass shared by the K targets), a method weighs the activations channel-wise or element-wise
(its ``weigh(A, G)``), sums over channels (or takes their first principal component), applies the final
ReLU of its paper (``relu=``), fuses the maps of several layers, and upsamples bilinearly to the input
size (``upsample=False`` keeps the layer's resolution). Maps are raw: no min-max normalisation (see
:mod:`fxai.postprocess`).

Smoothing as in pytorch-grad-cam: ``eigen_smooth=True`` replaces the channel sum of the weighted
activations by their first principal component; ``aug_smooth=True`` averages the maps of the input
flipped horizontally or not and multiplied by 0.9, 1.0 and 1.1 (six copies evaluated as one batch),
flipping maps back first; the target (top-1 when ``None``) is fixed on the clean input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .._core.batching import auto_chunk, row_chunks
from .._core.checks import check_choice, check_input
from .._core.discovery import resolve_layers
from .._core.docs import documented
from .._core.layers import forward_with_activations, layer_gradients
from .._core.targets import Target, as_target, check_logits
from .._core.grids import to_grid
from ..postprocess import normalize
from ..postprocess import upsample as _upsample

MODES = ("bilinear", "nearest", "bicubic")
_AUG_FACTORS = (0.9, 1.0, 1.1)

RETURNS = "``[B, H, W]`` (``[B, K, H, W]`` for K targets; the layer's ``h, w`` with ``upsample=False``)."


def check_options(x, upsample, reshape, chunk_size) -> int:
    """Checks of the options every layer method shares; returns the chunk size (:func:`auto_chunk`)."""
    check_input(x, exact_ndim=4)
    chunk_size = auto_chunk(chunk_size, x)
    if not isinstance(upsample, bool):
        check_choice(upsample, MODES, name="upsample")
    if reshape is not None and not callable(reshape):
        raise TypeError(f"reshape must be a callable activation -> [N, C, h, w] or None, got {type(reshape).__name__}")
    return chunk_size


def resize(maps: torch.Tensor, size, upsample) -> torch.Tensor:
    """``maps [..., h, w]`` upsampled to ``size`` as ``upsample`` says (``False``: unchanged)."""
    if upsample is False:
        return maps
    return _upsample(maps, size, mode="bilinear" if upsample is True else upsample)


SIGNS = ("sum", "extreme")


def first_component(weighted: torch.Tensor, sign: str = "sum") -> torch.Tensor:
    r"""Projection of ``[..., C, h, w]`` on its first principal component over the ``h·w`` positions: ``[..., h, w]``.

    The ``[hw, C]`` matrix is centred per channel, :math:`M = U S V^\top`, and the map is
    :math:`M v_1`. SVD leaves the sign free: with ``sign="sum"`` it is chosen so that the map correlates
    non-negatively with the channel sum :math:`\sum_c` ``weighted`` (the map eigen-smoothing replaces);
    with ``sign="extreme"`` so that :math:`|\max| \ge |\min|` (Seg-Eigen-CAM's Eq. 13).

    Example:
        >>> first_component(torch.ones(1, 4, 3, 3)).shape
        torch.Size([1, 3, 3])
    """
    check_choice(sign, SIGNS, name="sign")
    dtype = weighted.dtype
    weighted = weighted.float() if dtype in (torch.float16, torch.bfloat16) else weighted  # no half-precision SVD
    flat = weighted.flatten(-2).transpose(-1, -2)
    flat = flat - flat.mean(-2, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    proj = (flat @ vh[..., :1, :].transpose(-1, -2)).squeeze(-1)
    return oriented(proj, weighted, sign).unflatten(-1, weighted.shape[-2:]).to(dtype)


def oriented(proj: torch.Tensor, weighted: torch.Tensor, sign: str = "sum") -> torch.Tensor:
    """``proj [..., h·w]`` times ±1 per map, by the rule ``sign`` of :func:`first_component`."""
    if sign == "sum":
        flip = (proj * weighted.sum(-3).flatten(-2)).sum(-1, keepdim=True) < 0
    else:
        flip = proj.amin(-1, keepdim=True).abs() > proj.amax(-1, keepdim=True).abs()
    return proj * torch.where(flip, -1.0, 1.0).to(proj.dtype)


def as_grid(t: torch.Tensor, lead: int, reshape, size) -> torch.Tensor:
    """``to_grid`` on a tensor with ``lead`` leading axes (batch, and targets)."""
    flat = t.flatten(0, lead - 1) if lead > 1 else t
    g = to_grid(flat, reshape, size=size)
    return g.unflatten(0, t.shape[:lead]) if lead > 1 else g


def _layer_tensors(model_fn, params, x, tgt: Target, layers, *, grads: bool, reshape, chunk_size):
    """Per layer ``(A [N, 1, C, h, w], G [N, K, C, h, w] or None)``."""
    size = tuple(x.shape[-2:])
    if grads:
        acts, gs, _ = layer_gradients(model_fn, params, x, tgt, layers, chunk_size=chunk_size)
    else:
        parts = []
        for a, b in row_chunks(x.shape[0], chunk_size, tgt.group):
            logits, acts = forward_with_activations(model_fn, params, x[a:b], layers)
            check_logits(logits, x[a:b])
            if not tgt.top1:
                tgt.scores(logits, a)  # validates the target, which class-agnostic maps only repeat
            parts.append(acts)
        acts = [p[0] if len(parts) == 1 else torch.cat(p) for p in zip(*parts)]
        gs = [None] * len(layers)
    out = []
    for a, g in zip(acts, gs):
        big_a = as_grid(a, 1, reshape, size)[:, None]
        if g is not None:
            g = as_grid(g if tgt.multi else g[:, None], 2, reshape, size)
        out.append((big_a, g))
    return out


def _unit(m: torch.Tensor) -> torch.Tensor:
    return normalize(m, "minmax", batch_dims=m.ndim - 2)


def _fuse(maps: list[torch.Tensor], size, upsample, fusion: str, gamma: float = 2.0, **_) -> torch.Tensor:
    if upsample is False and len({m.shape[-2:] for m in maps}) > 1:
        raise ValueError("upsample=False with layers of different resolutions "
                         f"({', '.join(str(tuple(m.shape[-2:])) for m in maps)}): the maps cannot be fused; "
                         "upsample them or pass one layer")
    if fusion == "product":
        return _unit(torch.stack([_unit(resize(m, size, upsample)) for m in maps]).prod(0))
    if len(maps) == 1:
        return resize(maps[0], size, upsample)
    if fusion == "sum":
        return sum(resize(m, size, upsample) for m in maps)
    scaled = []
    for m in maps:
        top = m.flatten(-2).amax(-1)[..., None, None]
        scaled.append(torch.where(top > 0, torch.tanh(gamma * m / top.clamp_min(1e-30)), torch.zeros_like(m)))
    return torch.stack([resize(m, size, upsample) for m in scaled]).amax(0)


def run(model_fn, params, x, target, *, weigh: Callable, layer=None, grads: bool = True, pca=False,
        relu: bool, upsample=True, eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None,
        chunk_size=None, fusion: str = "sum", source: Callable | None = None, **options):
    """``weigh(A, G, **options) -> [N, K, C, h, w]`` per layer, channel reduction, ReLU, fusion, upsampling.

    ``source(model_fn, params, rows, target, layers, reshape=, chunk_size=, **options)``, when given, replaces
    the layer gradients: it returns per layer ``(A [N, 1, C, h, w], W [N, K, C, ...])`` for ``weigh``.
    """
    chunk_size = check_options(x, upsample, reshape, chunk_size)
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])
    project = pca if callable(pca) else first_component

    def maps_of(rows, tgt):
        maps = []
        if source is None:
            tensors = _layer_tensors(model_fn, params, rows, tgt, layers, grads=grads, reshape=reshape,
                                     chunk_size=chunk_size)
        else:
            tensors = source(model_fn, params, rows, tgt, layers, reshape=reshape, chunk_size=chunk_size, **options)
        for big_a, g in tensors:
            weighted = weigh(big_a, g, **options)
            if (pca or eigen_smooth) and weighted.shape[-2:].numel() == 1:
                raise ValueError("layer: a principal component over a 1×1 map is 0 everywhere; pick a layer with a "
                                 "spatial map (eigen methods and eigen_smooth need h·w > 1)")
            if pca:
                m = project(weighted, **options)
            else:
                m = first_component(weighted) if eigen_smooth else weighted.sum(-3)
            maps.append(m.clamp(min=0) if relu else m)
        return _fuse(maps, size, upsample, fusion, **options)

    if aug_smooth:
        tgt = tgt.fixed(model_fn, params, x) if grads or source is not None else tgt
        rows = torch.cat([v * f for v in (x, x.flip(-1)) for f in _AUG_FACTORS])
        maps = maps_of(rows, tgt).unflatten(0, (2, len(_AUG_FACTORS), x.shape[0]))
        maps = torch.cat([maps[0], maps[1].flip(-1)]).mean(0)
    else:
        maps = maps_of(x, tgt)
    if tgt.multi and maps.shape[1] != tgt.index.shape[1]:
        maps = maps.expand(-1, tgt.index.shape[1], -1, -1)
    return maps if tgt.multi else maps.squeeze(1)


def layer_cam_method(name: str, weigh: Callable, *, relu: bool, doc: str, example: str, grads: bool = True,
                     pca=False, fusion: str = "sum", options: dict | None = None,
                     described: dict | None = None, source: Callable | None = None):
    """A CAM method declared by its weighting ``weigh(A, G, **options)`` of the activations.

    ``relu`` is the paper's final ReLU (the default of the method's ``relu=``); ``grads=False`` for
    class-agnostic maps (no backward); ``pca=True`` for methods whose map is the first principal
    component (no ``eigen_smooth`` option), or a projection ``pca(weighted, **options) -> [..., h, w]``;
    ``source`` replaces the layer gradients by other per-channel tensors (see :func:`run`);
    ``fusion`` of several layers: ``"sum"``, ``"max"`` (LayerCAM) or ``"product"`` (of maps min-max
    normalised at the input size, min-max normalised again: Refine-CAM);
    ``options`` are the method's own keyword options with their defaults, ``described`` their docs.
    ``doc`` is the summary (formula, paper, conventions) and ``example`` one line of code; the docstring
    adds the arguments and the returned shape. The returned function has the full signature (for
    ``inspect``, the registry and the CLI).
    """
    options = dict(options or {})
    kw = inspect.Parameter.KEYWORD_ONLY
    shared = [("layer", None), ("relu", relu), ("upsample", True)]
    shared += [] if pca else [("eigen_smooth", False)]
    shared += [("aug_smooth", False), ("reshape", None), *options.items(), ("chunk_size", None)]
    positional = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("model_fn", "params", "x")]
    signature = inspect.Signature([*positional,
                                   inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
                                   *(inspect.Parameter(n, kw, default=d) for n, d in shared)])

    def method(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        return run(a.pop("model_fn"), a.pop("params"), a.pop("x"), a.pop("target"), weigh=weigh, grads=grads,
                   pca=pca, fusion=fusion, source=source, **a)

    method.__name__ = method.__qualname__ = name
    method.__module__ = weigh.__module__
    method.__signature__ = signature
    method.__doc__ = f"{doc.strip()}\n\n{{args}}\n\nReturns:\n    {RETURNS}\n\nExample:\n    >>> {example}\n"
    return documented(method, **(described or {}))
