"""CAMs whose channel weights come from forward passes on masked inputs or ablated activations: Score-CAM, its
smoothed (SS-CAM) and integrated (IS-CAM) variants, and Ablation-CAM, each declared on
:mod:`fxai.attribution.cam_driver` by how it weighs the channels. The B·C perturbed forwards (per layer, per sample)
are stacked as rows (:mod:`fxai._core.stacking`), built ``chunk_size`` at a time; K targets share them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vjp

from .._core import keys
from .._core.batching import row_chunks
from .._core.checks import check_choice, check_positive_int
from .._core.layers import forward_with_activations, tapped
from .._core.stacking import SCORES, per_input, row_scores, rows_of
from .._core.targets import Target, check_logits
from .._core.grids import to_grid
from ..postprocess import normalize
from ..postprocess import upsample as _resize
from .cam_driver import layer_cam_method

MASK_NORMS = ("input", "layer")

def _interpolate(maps: torch.Tensor, size, *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``maps [..., h, w]`` to ``size``."""
    if not align_corners:
        return _resize(maps, size)
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=True)
    return out.reshape(*maps.shape[:-2], *out.shape[-2:])


def _clean(model_fn, params, x, tgt: Target, layers, reshape):
    """One clean forward: ``(target with top-1 resolved, logits, native activations, grids)``."""
    logits, natives = forward_with_activations(model_fn, params, x, layers)
    check_logits(logits, x)
    tgt.scores(logits)  # validates the target on these logits
    if tgt.top1:
        tgt = Target(x.shape[0], index=logits.detach().argmax(-1, keepdim=True))
    grids = [to_grid(a, reshape, size=tuple(x.shape[-2:])) for a in natives]
    return tgt, logits, natives, grids


def _as_channel_weights(weights: torch.Tensor, multi: bool) -> torch.Tensor:
    """``[C, B]`` or ``[C, B, K]`` weights as ``[B, K, C, 1, 1]``."""
    w = weights.movedim(0, -1)
    return (w if multi else w[:, None])[..., None, None]


def _weighted(a, w, **_):
    return w * a


def _check_masking(score, mask_norm, samples=1, std=1.0):
    check_choice(score, SCORES, name="score")
    check_choice(mask_norm, MASK_NORMS, name="mask_norm")
    check_positive_int(samples, name="samples")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std < 0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")


def _masked_tensors(model_fn, params, x, tgt, layers, *, reshape, chunk_size, score, channel_softmax,
                    align_corners, mask_norm, samples=1, perturb=None, draw=None):
    """Per layer ``(A, w)`` with ``w_k`` the mean over ``samples`` of the target score of ``x ⊙ perturb(M_k)``."""
    size = tuple(x.shape[-2:])
    tgt, _, _, grids = _clean(model_fn, params, x, tgt, layers, reshape)
    out = []
    for act in grids:
        batch, channels = act.shape[:2]
        source = normalize(act, "minmax", batch_dims=2) if mask_norm == "layer" else act
        total = 0
        for s in range(samples):
            extra = draw(act, size) if draw is not None else None
            parts = []
            for a, b in row_chunks(channels * batch, chunk_size, tgt.group):
                r = torch.arange(a, b, device=x.device)
                k, i = r // batch, r % batch
                masks = _interpolate(source[i, k], size, align_corners=align_corners)
                masks = masks if mask_norm == "layer" else normalize(masks, "minmax")
                rows = rows_of(x, i) * masks[:, None] if perturb is None else perturb(masks, x, i, k, s, extra)
                parts.append(row_scores(model_fn, params, rows, tgt, a, score))
            total = total + per_input(parts, batch)
        weights = total / samples
        out.append((act[:, None], _as_channel_weights(weights.softmax(0) if channel_softmax else weights, tgt.multi)))
    return out


def _score_tensors(model_fn, params, x, tgt, layers, *, score, mask_norm, **options):
    _check_masking(score, mask_norm)
    return _masked_tensors(model_fn, params, x, tgt, layers, score=score, mask_norm=mask_norm, **options)


def _smoothed_tensors(model_fn, params, x, tgt, layers, *, score, mask_norm, samples, std, key, **options):
    _check_masking(score, mask_norm, samples, std)
    gen = keys.generator(key)

    def draw(act, size):
        return keys.normal(gen, (*act.shape[:2], *size), act) * std

    def perturb(masks, x, i, k, s, noise):
        return rows_of(x, i) * (masks + noise[i, k])[:, None]

    return _masked_tensors(model_fn, params, x, tgt, layers, score=score, mask_norm=mask_norm, samples=samples,
                           perturb=perturb, draw=draw, **options)


def _integrated_tensors(model_fn, params, x, tgt, layers, *, score, mask_norm, samples, **options):
    _check_masking(score, mask_norm, samples)

    def perturb(masks, x, i, k, s, _):
        return (s + 1) * (s + 2) / (2 * samples) * (rows_of(x, i) * masks[:, None])

    return _masked_tensors(model_fn, params, x, tgt, layers, score=score, mask_norm=mask_norm, samples=samples,
                           perturb=perturb, **options)


def _ablation_tensors(model_fn, params, x, tgt, layers, *, reshape, chunk_size, ablation_value, **_):
    if isinstance(ablation_value, bool) or not isinstance(ablation_value, (int, float)):
        raise TypeError(f"ablation_value must be a number, got {type(ablation_value).__name__}")
    size = tuple(x.shape[-2:])
    tgt, logits, natives, grids = _clean(model_fn, params, x, tgt, layers, reshape)
    clean = tgt.scores(logits)
    out = []
    for name, native, act in zip(layers, natives, grids):
        batch, channels = act.shape[:2]
        fn = tapped(model_fn, [name])
        eye = torch.eye(channels, dtype=act.dtype, device=act.device)
        parts = []
        for a, b in row_chunks(channels * batch, chunk_size, tgt.group):
            r = torch.arange(a, b, device=x.device)
            k, i = r // batch, r % batch
            delta = _to_native((ablation_value - act[i]) * eye[k][:, :, None, None], native[i], reshape, size)
            rows = x[i]
            scores, _ = fn(params, rows.clone(), (delta,))
            check_logits(scores, rows)
            parts.append(tgt.scores(scores, a))
        weights = (clean - per_input(parts, batch)) / clean
        out.append((act[:, None], _as_channel_weights(weights, tgt.multi)))
    return out


_MASKING = {
    "score": "``\"softmax\"`` (class probabilities, the paper's code) or ``\"logit\"`` (raw outputs) of the masked "
             "inputs.",
    "channel_softmax": "replace the channel weights by their softmax over channels.",
    "align_corners": "corner alignment of the bilinear upsampling of channels into masks.",
    "mask_norm": "where each channel is min-max normalised into a mask: ``\"input\"`` (after upsampling, the "
                 "paper) or ``\"layer\"`` (at the layer's resolution, then upsampled: TorchCAM).",
    "chunk_size": "at most this many masked inputs per forward pass; ``None``: as many as fit 8 images of "
                  "3×224×224 (:func:`fxai._core.batching.auto_chunk`).",
}

score_cam = layer_cam_method(
    "score_cam", _weighted, relu=True, grads=False, source=_score_tensors,
    options={"score": "softmax", "channel_softmax": False, "align_corners": False, "mask_norm": "input"},
    described=_MASKING,
    example='m = fxai.score_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)',
    doc=r"""
Score-CAM: channels of a layer weighted by the score of the input masked by each.

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
Several layers: each layer's channels weighted by their own masked forwards,
the maps summed (as the gradient CAMs).

Conventions: the paper's reference code weights channels by the softmax
probability of the class on each masked input (``score="softmax"``, the
default); the paper's Algorithm 1 takes logits and a softmax over channels
(``score="logit", channel_softmax=True``; its baseline term cancels in that
softmax). pytorch-grad-cam's ``ScoreCAM`` scores the raw output through its
target callable, applies a softmax over channels and upsamples the masks
with ``align_corners=True``: ``score="logit", channel_softmax=True,
align_corners=True`` reproduces it (up to its min–max of the final map).
TorchCAM's ``ScoreCAM`` normalises at the layer's resolution:
``score="logit", channel_softmax=True, mask_norm="layer"``.
""")

ss_cam = layer_cam_method(
    "ss_cam", _weighted, relu=True, grads=False, source=_smoothed_tensors,
    options={"samples": 35, "std": 2.0, "score": "logit", "channel_softmax": True, "align_corners": False,
             "mask_norm": "input", "key": None},
    described={**_MASKING, "samples": "noisy copies of each mask (default 35, as TorchCAM).",
               "std": "standard deviation of the Gaussian noise added to each mask (default 2, as TorchCAM).",
               "key": "int seed or ``torch.Generator`` (required): the noise."},
    example='m = fxai.ss_cam(model_fn, params, x, 3, layer="layer4", samples=4, key=0)',
    doc=r"""
SS-CAM: Score-CAM with each channel's score averaged over noisy copies of its mask.

.. math:: w_k = \mathrm{softmax}_k\Big(\frac{1}{N}\sum_{n=1}^{N} f_c\big(x \odot (M_k + \delta_{n,k})\big)\Big),
          \quad \delta_{n,k} \sim \mathcal{N}(0, \sigma^2)^{H \times W},\quad
          L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", 2020 (noise on the
masks, as TorchCAM's ``SSCAM``). The N·B·C masked inputs are one stacked batch; the noise of sample
``n`` is drawn from ``key`` for all masks at once, so chunking never changes it. TorchCAM subtracts the
clean input's score from every score, which cancels in the softmax over channels (the default);
``mask_norm="layer"`` normalises the channels as TorchCAM does.
""")

is_cam = layer_cam_method(
    "is_cam", _weighted, relu=True, grads=False, source=_integrated_tensors,
    options={"samples": 10, "score": "logit", "channel_softmax": True, "align_corners": False,
             "mask_norm": "input"},
    described={**_MASKING, "samples": "steps of the integration (default 10, as TorchCAM)."},
    example='m = fxai.is_cam(model_fn, params, x, 3, layer="layer4", samples=4)',
    doc=r"""
IS-CAM: Score-CAM with each channel's score integrated over scaled copies of its masked input.

.. math:: w_k = \mathrm{softmax}_k\Big(\frac{1}{N}\sum_{n=1}^{N} f_c\big(c_n\, x \odot M_k\big)\Big),
          \quad c_n = \sum_{j=1}^{n} \frac{j}{N} = \frac{n(n+1)}{2N}

Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", 2020, with TorchCAM's
``ISCAM`` coefficients :math:`c_n` (a running sum of :math:`j/N`, reaching :math:`(N+1)/2` at the last
step). The N·B·C scaled inputs are one stacked batch. As SS-CAM, the clean score TorchCAM subtracts
cancels in the softmax over channels; ``mask_norm="layer"`` normalises the channels as TorchCAM does.
""")

ablation_cam = layer_cam_method(
    "ablation_cam", _weighted, relu=True, grads=False, source=_ablation_tensors, options={"ablation_value": 0.0},
    described={"ablation_value": "the value an ablated channel takes.",
               "chunk_size": "at most this many ablated forwards per pass; ``None``: as many as fit 8 images of "
                             "3×224×224 (:func:`fxai._core.batching.auto_chunk`)."},
    example='m = fxai.ablation_cam(model_fn, params, x, 3, layer="layer4", chunk_size=64)',
    doc=r"""
Ablation-CAM: channels weighted by the relative score drop when each is ablated.

.. math:: w_k = \frac{y_c - y_c^{(k)}}{y_c},\quad L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
Network via Gradient-free Localization", WACV 2020. :math:`y_c^{(k)}` is the
target score with channel ``k`` of the activation ``A`` at ``layer`` set to
``ablation_value`` (0 in the paper). The B·C ablated forwards are one
stacked batch: row ``(k, b)`` adds :math:`\delta = (v - A_k) e_k` to the
layer's output of input ``b``, and K targets share the forwards. The weight
divides by :math:`y_c`: a score near 0 makes it unstable and a negative
score flips its sign (as in the paper). Token layers are ablated at the
positions of the grid only (a ViT class token is left as is). Several
layers: each ablated on its own, the maps summed.

pytorch-grad-cam's ``AblationCAM`` computes the same weights on the raw
target output; it differs where the layer's activation has negative values
(it then ablates to ``min(A) - 1e7`` instead of 0, re-reading the minimum
after each channel of a batch is overwritten, so the k-th channel of a
batch gets ``min(A) - (k + 1) 1e7``), for token layers (it
also ablates the class token) and with ``ratio_channels_to_ablate < 1``
(skipped channels get weight 0).
""")


def _to_native(delta: torch.Tensor, native: torch.Tensor, reshape, size) -> torch.Tensor:
    """A change ``delta`` of the grid read by ``to_grid`` as a change of the layer's own output ``native``.

    ``to_grid`` only moves and selects entries, so its adjoint maps a grid change
    back to the entries it was read from (zeros for dropped tokens).
    """
    if reshape is None and to_grid(native, None, size=size) is native:
        return delta
    _, pullback = vjp(lambda a: to_grid(a, reshape, size=size), native)
    return pullback(delta)[0]
