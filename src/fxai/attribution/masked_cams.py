"""CAMs whose channel weights come from forward passes on masked inputs or ablated activations: Score-CAM and
Ablation-CAM. The B·C perturbed forwards are stacked as rows (:mod:`fxai._core.stacking`), built ``chunk_size``
at a time; K targets share them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vjp

from .._core.batching import row_chunks
from .._core.checks import check_choice
from .._core.discovery import resolve_layers
from .._core.docs import documented
from .._core.layers import tapped
from .._core.stacking import SCORES, clean_forward, per_input, row_scores, rows_of
from .._core.targets import TargetLike, check_logits
from .._core.grids import to_grid
from ..postprocess import normalize
from ..postprocess import upsample as _resize
from .cam_driver import check_options, resize


def _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size) -> tuple[list[str], int]:
    chunk_size = check_options(x, upsample, reshape, chunk_size)
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    if len(layers) != 1:
        raise ValueError(f"layer must name one layer, got {len(layers)}: {layers!r}")
    return layers, chunk_size


def _interpolate(maps: torch.Tensor, size, *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``maps [..., h, w]`` to ``size``."""
    if not align_corners:
        return _resize(maps, size)
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=True)
    return out.reshape(*maps.shape[:-2], *out.shape[-2:])


def _cam_map(weights: torch.Tensor, act: torch.Tensor, size, upsample) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)`` from weights ``[C, B]`` (or ``[C, B, K]``) and activations ``[B, C, h, w]``."""
    if weights.ndim == 2:
        cam = torch.einsum("cb,bchw->bhw", weights, act)
    else:
        cam = torch.einsum("cbk,bchw->bkhw", weights, act)
    return resize(cam.clamp(min=0), size, upsample)


@documented(channel_softmax="replace the scores by their softmax over channels.",
            align_corners="corner alignment of the bilinear upsampling of channels into masks.",
            layer="dotted module name, or ``None`` (the last spatial feature map before global pooling); a model "
                  "made by ``fxai.split(features, head)`` has the layer ``\"features\"``.",
            chunk_size="at most this many masked inputs per forward pass;"
                       " ``None``: as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).")
def score_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
              score: str = "softmax", channel_softmax: bool = False, align_corners: bool = False,
              upsample: bool | str = True, reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Score-CAM: channels of a layer weighted by the score of the input masked by each.

    .. math:: M_k = \mathrm{minmax}\big(\mathrm{up}(A_k)\big),\quad
              s_k = f_c(x \odot M_k),\quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big),\quad
              w_k = s_k \ \text{or}\ \mathrm{softmax}_k(s)

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020. Each channel of the
    activation ``A`` at ``layer`` is upsampled bilinearly to the input size,
    min–max normalised to [0, 1] (a constant channel gives an all-zero mask)
    and multiplies the input; the B·C masked inputs are one stacked batch
    (built ``chunk_size`` rows at a time), and K targets share its forwards.

    Conventions: the paper's reference code weights channels by the softmax
    probability of the class on each masked input (``score="softmax"``, the
    default); the paper's Algorithm 1 takes logits and a softmax over channels
    (``score="logit", channel_softmax=True``; its baseline term cancels in that
    softmax). pytorch-grad-cam's ``ScoreCAM`` scores the raw output through its
    target callable, applies a softmax over channels and upsamples the masks
    with ``align_corners=True``: ``score="logit", channel_softmax=True,
    align_corners=True`` reproduces it (up to its min–max of the final map).

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; the layer's ``h, w`` with ``upsample=False``).

    Example:
        >>> m = fxai.score_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)
    """
    layers, chunk_size = _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size)
    check_choice(score, SCORES, name="score")
    size = tuple(x.shape[-2:])
    target, _, act = clean_forward(model_fn, params, x, target, layers)
    act = to_grid(act, reshape, size=size)
    batch, channels = act.shape[:2]

    parts = []
    for a, b in row_chunks(channels * batch, chunk_size, target.group):
        r = torch.arange(a, b, device=x.device)
        k, i = r // batch, r % batch
        masks = normalize(_interpolate(act[i, k], size, align_corners=align_corners), "minmax")
        parts.append(row_scores(model_fn, params, rows_of(x, i) * masks[:, None], target, a, score))
    weights = per_input(parts, batch)
    if channel_softmax:
        weights = weights.softmax(0)
    return _cam_map(weights, act, size, upsample)


@documented(ablation_value="the value an ablated channel takes.",
            layer="dotted module name, or ``None`` (the last spatial feature map before global pooling); a model "
                  "made by ``fxai.split(features, head)`` has the layer ``\"features\"``.",
            chunk_size="at most this many ablated forwards per pass;"
                       " ``None``: as many as fit 8 images of 3×224×224 (:func:`fxai._core.batching.auto_chunk`).")
def ablation_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
                 ablation_value: float = 0.0, upsample: bool | str = True, reshape=None,
                 chunk_size: int | None = None) -> torch.Tensor:
    r"""Ablation-CAM: channels weighted by the relative score drop when each is ablated.

    .. math:: w_k = \frac{y_c - y_c^{(k)}}{y_c},\quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020. :math:`y_c^{(k)}` is the
    target score with channel ``k`` of the activation ``A`` at ``layer`` set to
    ``ablation_value`` (0 in the paper). The B·C ablated forwards are one
    stacked batch: row ``(k, b)`` adds :math:`\delta = (v - A_k) e_k` to the
    layer's output of input ``b``, and K targets share the forwards. The weight
    divides by :math:`y_c`: a score near 0 makes it unstable and a negative
    score flips its sign (as in the paper). Token layers are ablated at the
    positions of the grid only (a ViT class token is left as is).

    pytorch-grad-cam's ``AblationCAM`` computes the same weights on the raw
    target output; it differs where the layer's activation has negative values
    (it then ablates to ``min(A) - 1e7`` instead of 0, re-reading the minimum
    after each channel of a batch is overwritten, so the k-th channel of a
    batch gets ``min(A) - (k + 1) 1e7``), for token layers (it
    also ablates the class token) and with ``ratio_channels_to_ablate < 1``
    (skipped channels get weight 0).

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; the layer's ``h, w`` with ``upsample=False``).

    Example:
        >>> m = fxai.ablation_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)
    """
    layers, chunk_size = _check_layer_options(model_fn, params, x, layer, upsample, reshape, chunk_size)
    if isinstance(ablation_value, bool) or not isinstance(ablation_value, (int, float)):
        raise TypeError(f"ablation_value must be a number, got {type(ablation_value).__name__}")
    size = tuple(x.shape[-2:])
    target, logits, native = clean_forward(model_fn, params, x, target, layers)
    clean = target.scores(logits)
    act = to_grid(native, reshape, size=size)
    batch, channels = act.shape[:2]
    fn = tapped(model_fn, layers)
    eye = torch.eye(channels, dtype=act.dtype, device=act.device)

    parts = []
    for a, b in row_chunks(channels * batch, chunk_size, target.group):
        r = torch.arange(a, b, device=x.device)
        k, i = r // batch, r % batch
        delta = _to_native((ablation_value - act[i]) * eye[k][:, :, None, None], native[i], reshape, size)
        rows = x[i]
        out, _ = fn(params, rows, (delta,))
        check_logits(out, rows)
        parts.append(target.scores(out, a))
    weights = (clean - per_input(parts, batch)) / clean
    return _cam_map(weights, act, size, upsample)


def _to_native(delta: torch.Tensor, native: torch.Tensor, reshape, size) -> torch.Tensor:
    """A change ``delta`` of the grid read by ``to_grid`` as a change of the layer's own output ``native``.

    ``to_grid`` only moves and selects entries, so its adjoint maps a grid change
    back to the entries it was read from (zeros for dropped tokens).
    """
    if reshape is None and to_grid(native, None, size=size) is native:
        return delta
    _, pullback = vjp(lambda a: to_grid(a, reshape, size=size), native)
    return pullback(delta)[0]
