r"""Deep Feature Factorization: the concepts a layer represents, and where each one is in every image.

Collins, Achanta & Süsstrunk, "Deep Feature Factorization For Concept Discovery", ECCV 2018.
The activations :math:`A` ``[B, C, h, w]`` of one layer over a batch are arranged as a matrix
:math:`V` ``[C, B·h·w]`` (one column per position of every image) and factorised by non-negative
matrix factorisation, :math:`V \approx W H` with :math:`W \ge 0` ``[C, K]`` and :math:`H \ge 0`
``[K, B·h·w]``: column :math:`k` of :math:`W` is a concept (a channel profile shared by the batch),
row :math:`k` of :math:`H` its heat map in every image. A classifier head applied to the concepts
names them by the classes they score highest.
"""

from typing import NamedTuple

import torch

from .._core.batching import row_chunks
from .._core.checks import check_positive_int
from .._core.keys import Key, generator
from .._core.discovery import resolve_layers
from .._core.functional import SplitModel
from .._core.layers import forward_with_activations
from .nmf import nmf
from .._core.targets import check_logits
from .._core.grids import to_grid
from .cam_driver import check_options, resize


class Factorization(NamedTuple):
    """The result of :func:`deep_feature_factorization`.

    - ``maps`` ``[B, K, H, W]``: the heat map of each concept in each image (``[B, K, h, w]`` with
      ``upsample=False``), scaled so that each concept's largest value over the batch, at the
      layer's resolution, is 1;
    - ``concepts`` ``[K, C]``: the layer activation where the concept is at full strength (map
      value 1) and no other concept is present;
    - ``class_scores`` ``[K, classes]``: the head's raw outputs for each concept (``None`` without
      a head).
    """

    maps: torch.Tensor
    concepts: torch.Tensor
    class_scores: torch.Tensor | None


def deep_feature_factorization(model_fn, params, x: torch.Tensor, *, layer=None, concepts: int = 5, head=None,
                               iterations: int = 200, tol: float = 1e-4, restarts: int = 1, key: Key,
                               upsample: bool | str = True, reshape=None,
                               chunk_size: int | None = None) -> Factorization:
    r"""Deep Feature Factorization: :math:`V \approx W H`, :math:`W, H \ge 0`, on a layer's activations over the batch.

    Collins et al., "Deep Feature Factorization For Concept Discovery", ECCV 2018. With the
    layer's activations as :math:`V` ``[C, B·h·w]``, non-negative matrix factorisation with
    ``concepts`` = K components gives concepts :math:`W` ``[C, K]`` shared by the batch and their
    heat maps :math:`H` ``[K, B·h·w]``. The factorisation runs in torch on ``x``'s device by HALS
    (the coordinate descent of scikit-learn's ``NMF(solver="cd")``), from a random start drawn
    from ``key`` as scikit-learn's ``init="random"``, until ten iterations lower the relative
    reconstruction error :math:`\lVert V - WH\rVert_F / \lVert V\rVert_F` by less than ``tol`` of
    its value, or for ``iterations`` iterations. ``restarts`` random starts are solved together as one
    batch and the one with the lowest error is kept (each start reaches its own local minimum).

    NMF needs :math:`V \ge 0`. The paper factorises post-ReLU activations, which are; for a
    layer that can be negative, each channel is shifted by its minimum over the batch and
    positions when that minimum is negative, :math:`V_c - \min(0, \min V_c)` (pytorch-grad-cam
    shifts every channel by its minimum), and the shift is added back to the concepts.

    NMF leaves a scale free per concept (:math:`W_k s`, :math:`H_k / s`); it is fixed so that
    each heat map's largest value over the batch is 1, so a concept is the activation at a
    position where it is at full strength. With a head, each concept is scored as that
    activation: ``head="auto"`` applies the model's last ``nn.Linear`` to it (the right reading
    when the layer is followed by global pooling and that linear layer, as the last block of a
    CNN; ``model_fn.head`` on a 1×1 map for ``fxai.split`` models), a callable
    ``head(concepts [K, C]) -> [K, classes]`` is applied as given. Scores are raw logits.

    Args:
        model_fn: ``fxai.functional(module)[0]`` or ``fxai.split(features, head)``.
        params: the parameters and buffers ``model_fn`` takes.
        x: input batch ``[B, C, H, W]``; the concepts are shared by all its images.
        layer: dotted module name, or ``None`` (the last spatial feature map before global pooling).
        concepts: number of concepts K (at most the layer's channels).
        head: ``None``, ``"auto"`` or a callable ``[K, C] -> [K, classes]``.
        iterations: at most this many HALS iterations.
        tol: stop when ten iterations lower the relative error by less than ``tol`` of its value
            (checked every ten iterations; 0 runs every iteration).
        restarts: number of random starts solved together; the best is kept.
        key: int seed or ``torch.Generator`` for the random start (required).
        upsample: ``True`` (bilinear to ``x``'s size, as the CAMs), ``False`` (the layer's
            resolution), or ``"nearest"``/``"bicubic"``.
        reshape: callable turning the layer's output into ``[N, C, h, w]`` (default: automatic
            for ``[N, C, h, w]``, channels-last and ViT tokens).
        chunk_size: at most this many images per forward pass.

    Returns:
        :class:`Factorization` ``(maps [B, K, H, W], concepts [K, C], class_scores [K, classes] or None)``.
        Not differentiable: NMF is an iterative solver, run without autograd.

    Example:
        >>> dff = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3,
        ...                                       head="auto", key=0)
        >>> dff.maps.shape, dff.class_scores.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([3, 5]))
    """
    chunk_size = check_options(x, upsample, reshape, chunk_size)
    check_positive_int(concepts, name="concepts")
    check_positive_int(iterations, name="iterations")
    check_positive_int(restarts, name="restarts")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if not (head is None or _is_auto(head) or callable(head)):
        raise TypeError(f"head must be None, 'auto' or a callable concepts [K, C] -> scores [K, classes]; got {head!r}")
    if reshape is not None and not callable(reshape):
        raise TypeError(f"reshape must be a callable activation -> [N, C, h, w] or None, got {type(reshape).__name__}")
    gen = generator(key)
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    if len(layers) != 1:
        raise ValueError(f"layer: deep_feature_factorization takes one layer, got {layers!r}")
    act = _activations(model_fn, params, x, layers, reshape, chunk_size)
    batch, channels, h, w = act.shape
    if concepts > channels:
        raise ValueError(f"concepts must be at most the {channels} channels of layer {layers[0]!r}, got {concepts}")
    with torch.no_grad():
        v = act.transpose(0, 1).reshape(channels, batch * h * w)
        v = v if v.dtype in (torch.float32, torch.float64) else v.float()
        offset = v.amin(1).clamp(max=0)
        fit = nmf((v - offset[:, None]).expand(restarts, -1, -1), concepts, iterations=iterations, tol=tol, key=gen)
        best = int(fit.error.argmin())
        w_best, h_best = fit.w[best], fit.h[best]
        top = h_best.amax(1)
        scale = torch.where(top > 0, top, torch.ones_like(top))
        basis = (w_best * scale + offset[:, None]).T.contiguous()
        maps = (h_best / scale[:, None]).reshape(concepts, batch, h, w).transpose(0, 1)
        maps = resize(maps.to(x.dtype), tuple(x.shape[-2:]), upsample)
        scores = None if head is None else _class_scores(model_fn, params, head, basis, concepts)
    return Factorization(maps, basis.to(x.dtype), scores)


def _activations(model_fn, params, x, layers, reshape, chunk_size) -> torch.Tensor:
    """The layer's activations ``[B, C, h, w]`` (as a grid), from forward passes of at most ``chunk_size`` images."""
    parts = []
    with torch.no_grad():
        for a, b in row_chunks(x.shape[0], chunk_size):
            logits, (act,) = forward_with_activations(model_fn, params, x[a:b], layers)
            check_logits(logits, x[a:b])
            parts.append(to_grid(act.detach(), reshape, size=tuple(x.shape[-2:])))
    act = parts[0] if len(parts) == 1 else torch.cat(parts)
    if not bool(torch.isfinite(act).all()):
        raise ValueError(f"layer {layers[0]!r}: the activations are not all finite; NMF needs finite values")
    return act


def _is_auto(head) -> bool:
    return isinstance(head, str) and head == "auto"


def _class_scores(model_fn, params, head, basis: torch.Tensor, concepts: int) -> torch.Tensor:
    if _is_auto(head):
        if isinstance(model_fn, SplitModel):
            out = model_fn.head(params, basis[:, :, None, None])
        else:
            linears = [n for n, m in model_fn.module.named_modules() if isinstance(m, torch.nn.Linear)]
            weight = params.get(f"{linears[-1]}.weight") if linears else None
            if weight is None or weight.ndim != 2 or weight.shape[1] != basis.shape[1]:
                found = f"its last linear layer {linears[-1]!r} does not take" if linears else "it has no nn.Linear for"
                raise ValueError(f"head='auto' applies the model's last nn.Linear to the concepts, but {found} the "
                                 f"layer's {basis.shape[1]} channels; pass head= a callable concepts [K, C] -> "
                                 "scores [K, classes]")
            out = torch.nn.functional.linear(basis.to(weight.dtype), weight, params.get(f"{linears[-1]}.bias"))
    else:
        out = head(basis)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != concepts:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"head must return class scores [K, classes] = [{concepts}, classes] for the concepts "
                         f"[{concepts}, C]; got {got}")
    return out.detach()
