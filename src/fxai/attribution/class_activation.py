"""CAM: the classifier's weights applied at every position of the layer before a GAP + linear head."""

from __future__ import annotations

import torch

from .._core.batching import row_chunks
from .._core.discovery import resolve_layers
from .._core.docs import documented
from .._core.functional import FunctionalModel
from .._core.layers import forward_with_activations
from .._core.targets import TargetLike, as_target, check_logits
from .cam_driver import as_grid, check_options, resize


@documented(fc="name of the linear head, whose ``params[fc + \".weight\"]`` is ``[classes, C]`` (default: the "
                "last ``nn.Linear`` of the module; required for ``fxai.split`` models).",
            target="class index, ``LongTensor[B]`` or ``[B, K]``, or ``None`` (top-1); cam reads the classifier's "
                   "weights, so it takes no callable target.",
            layer="dotted module name of the layer before the pooled linear head, or ``None`` (the last spatial "
                  "feature map before global pooling).")
def cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, fc: str | None = None,
        relu: bool = False, upsample: bool | str = True, reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""CAM: :math:`\sum_c W_{yc} A_c`, the classifier's weights applied at every position.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016. Needs a
    global-average-pooling + linear head right after ``layer``: the logits must equal
    :math:`\frac{1}{hw}\sum_{ij} A_{:ij} W^\top + b`, which is checked on the batch (a clear error
    otherwise). The paper's map has no ReLU (``relu=False``). One forward pass, no gradient.

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; the layer's ``h, w`` with ``upsample=False``).

    Example:
        >>> m = fxai.cam(model_fn, params, x, target=3, layer="layer4", fc="fc")
    """
    chunk_size = check_options(x, upsample, reshape, chunk_size)
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    if len(layers) != 1:
        raise ValueError(f"layer: cam takes one layer (the input of the pooled linear head), got {layers!r}")
    tgt = as_target(target, x)
    if tgt.fn is not None:
        raise TypeError("target: cam reads the classifier's weights, so it needs class indices (an int, a LongTensor "
                        "[B] or [B, K]) or None; a callable target needs a gradient method such as fxai.grad_cam")
    fc = _find_fc(model_fn, fc)
    if f"{fc}.weight" not in params:
        raise ValueError(f"fc: params has no {fc + '.weight'!r}; fc must name the linear head (e.g. 'fc' for ResNets)")
    weight = params[f"{fc}.weight"]
    bias = params.get(f"{fc}.bias")
    size = tuple(x.shape[-2:])
    parts = []
    for a, b in row_chunks(x.shape[0], chunk_size):
        logits, (act,) = forward_with_activations(model_fn, params, x[a:b], layers)
        check_logits(logits, x[a:b])
        big_a = as_grid(act, 1, reshape, size)
        if weight.ndim != 2 or weight.shape[1] != big_a.shape[1]:
            raise ValueError(f"fc: {fc!r} has weight {tuple(weight.shape)} but layer {layers[0]!r} has "
                             f"{big_a.shape[1]} channels; cam needs layer -> global average pooling -> linear fc")
        _check_gap_linear(logits, big_a, weight, bias, fc, layers[0])
        index = logits.detach().argmax(-1, keepdim=True) if tgt.index is None else tgt.index[a:b].to(x.device)
        parts.append(torch.einsum("bkc,bchw->bkhw", weight[index], big_a))
    maps = parts[0] if len(parts) == 1 else torch.cat(parts)
    maps = resize(maps.clamp(min=0) if relu else maps, size, upsample)
    return maps if tgt.multi else maps.squeeze(1)


def _find_fc(model_fn, fc):
    if fc is not None:
        if not isinstance(fc, str):
            raise TypeError(f"fc must be the dotted name of the linear head, got {type(fc).__name__}")
        return fc
    if isinstance(model_fn, FunctionalModel):
        linears = [n for n, m in model_fn.module.named_modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1]
    raise ValueError("fc: found no nn.Linear head; pass fc= naming the linear head whose params[fc + '.weight'] "
                     "maps pooled features to classes")


def _check_gap_linear(logits, big_a, weight, bias, fc, layer):
    expected = big_a.mean((-2, -1)) @ weight.T + (0 if bias is None else bias)
    if expected.shape != logits.shape:
        raise ValueError(f"fc: the model's logits {tuple(logits.shape)} are not the output of {fc!r} "
                         f"{tuple(expected.shape)}; cam needs layer -> global average pooling -> linear fc")
    try:
        ok = float((expected - logits).detach().abs().max()) <= 1e-3 * (1 + float(logits.detach().abs().max()))
    except RuntimeError:  # under vmap: no data-dependent check
        return
    if not ok:
        raise ValueError(f"fc: the logits are not fc(mean over positions of {layer!r}); cam needs the layer to be "
                         "followed only by global average pooling and the linear head "
                         f"{fc!r} (use fxai.grad_cam otherwise, which equals CAM / (h*w) for such heads)")
