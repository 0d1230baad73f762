r"""The CAM family: class activation maps from a layer's activations :math:`A` and gradients :math:`G`.

Every method is a pure function ``(model_fn, params, x, target=None, *, layer=None, ...) -> [B, H, W]``
(``[B, K, H, W]`` for K targets per input). With ``A, G`` of shape ``[C, h, w]`` at the layer
(:math:`G = \partial y_c / \partial A`, all from one forward pass shared by the K targets), a method
weighs the activations channel-wise or element-wise, sums over channels, applies the final ReLU of
its paper (``relu=``), and upsamples bilinearly to the input size (``upsample=False`` keeps the
layer's resolution). Maps are raw: no min-max normalisation (see :mod:`fxai.postprocess`).

Layers: ``layer="layer4"`` names a submodule of a model made by :func:`fxai.functional`; ``None``
picks the last spatial feature map before global pooling (:func:`fxai._core.layers.default_layer`);
a list of layers gives one fused map. A hand-written model given as ``fxai.split(features, head)``
has the one layer ``"features"``. Token activations (ViT ``[B, 1 + hw, D]``) and channels-last ones
(Swin ``[B, h, w, C]``) are read as grids automatically; ``reshape=`` overrides
(:func:`fxai._core.layers.to_grid`).

Smoothing as in pytorch-grad-cam: ``eigen_smooth=True`` replaces the channel sum of the weighted
activations by their first principal component; ``aug_smooth=True`` averages the maps of the input
flipped horizontally or not and multiplied by 0.9, 1.0 and 1.1 (six copies evaluated as one batch),
flipping maps back first; the target (top-1 when ``None``) is fixed on the clean input.
"""

from __future__ import annotations

import torch

from .._core.batching import row_chunks
from .._core.checks import check_choice, check_input, check_positive_int
from .._core.functional import FunctionalModel
from .._core.layers import (forward_with_activations, layer_and_input_gradients, layer_gradients, resolve_layers,
                            to_grid, trace_modules)
from .._core.targets import Target, TargetLike, as_target, check_logits
from ..postprocess import normalize, upsample as _upsample
from .guided import guided_backprop

_MODES = ("bilinear", "nearest", "bicubic")
_AUG_FACTORS = (0.9, 1.0, 1.1)


# ---------------------------------------------------------------- shared machinery

def _check_common(x, upsample, chunk_size):
    check_input(x, exact_ndim=4)
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
    if not isinstance(upsample, bool):
        check_choice(upsample, _MODES, name="upsample")


def _resize(maps: torch.Tensor, size, upsample) -> torch.Tensor:
    if upsample is False:
        return maps
    return _upsample(maps, size, mode="bilinear" if upsample is True else upsample)


def first_component(weighted: torch.Tensor) -> torch.Tensor:
    r"""Projection of ``[..., C, h, w]`` on its first principal component over the ``h·w`` positions: ``[..., h, w]``.

    The ``[hw, C]`` matrix is centred per channel, :math:`M = U S V^\top`, and the map is
    :math:`M v_1`. SVD leaves the sign free: it is chosen so that the map correlates
    non-negatively with the channel sum :math:`\sum_c` ``weighted`` (the map eigen-smoothing replaces).
    """
    flat = weighted.flatten(-2).transpose(-1, -2)
    flat = flat - flat.mean(-2, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    proj = (flat @ vh[..., :1, :].transpose(-1, -2)).squeeze(-1)
    ref = weighted.sum(-3).flatten(-2)
    sign = torch.where((proj * ref).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign).unflatten(-1, weighted.shape[-2:])


def _grid(t: torch.Tensor, lead: int, reshape, size) -> torch.Tensor:
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
            tgt.scores(logits, a)  # validates the target, which class-agnostic maps only repeat
            parts.append(acts)
        acts = [p[0] if len(parts) == 1 else torch.cat(p) for p in zip(*parts)]
        gs = [None] * len(layers)
    out = []
    for a, g in zip(acts, gs):
        big_a = _grid(a, 1, reshape, size)[:, None]
        if g is not None:
            g = g if tgt.multi else g[:, None]
            g = _grid(g, 2, reshape, size)
        out.append((big_a, g))
    return out


def _fuse(maps: list[torch.Tensor], size, upsample, fusion: str, gamma: float) -> torch.Tensor:
    if len(maps) == 1:
        return _resize(maps[0], size, upsample)
    if upsample is False and len({m.shape[-2:] for m in maps}) > 1:
        raise ValueError("upsample=False with layers of different resolutions "
                         f"({', '.join(str(tuple(m.shape[-2:])) for m in maps)}): the maps cannot be fused; "
                         "upsample them or pass one layer")
    if fusion == "sum":
        return sum(_resize(m, size, upsample) for m in maps)
    scaled = []
    for m in maps:
        top = m.flatten(-2).amax(-1)[..., None, None]
        scaled.append(torch.where(top > 0, torch.tanh(gamma * m / top.clamp_min(1e-30)), torch.zeros_like(m)))
    return torch.stack([_resize(m, size, upsample) for m in scaled]).amax(0)


def _run(model_fn, params, x, target, *, layer, reduce, grads=True, relu, upsample, eigen_smooth=False,
         aug_smooth=False, reshape=None, chunk_size=None, fusion="sum", gamma=2.0):
    """Shared driver: ``reduce(A, G) -> [N, K, h, w]`` per layer, ReLU, fusion, upsampling, augmentation."""
    _check_common(x, upsample, chunk_size)
    if reshape is not None and not callable(reshape):
        raise TypeError(f"reshape must be a callable activation -> [N, C, h, w] or None, got {type(reshape).__name__}")
    layers = resolve_layers(model_fn, layer, params=params, x=x)
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])

    def maps_of(rows, tgt):
        maps = []
        for big_a, g in _layer_tensors(model_fn, params, rows, tgt, layers, grads=grads, reshape=reshape,
                                       chunk_size=chunk_size):
            m = reduce(big_a, g, eigen_smooth)
            maps.append(m.clamp(min=0) if relu else m)
        return _fuse(maps, size, upsample, fusion, gamma)

    if aug_smooth:
        tgt = tgt.fixed(model_fn, params, x) if grads else tgt
        rows = torch.cat([v * f for v in (x, x.flip(-1)) for f in _AUG_FACTORS])
        maps = maps_of(rows, tgt).unflatten(0, (2, len(_AUG_FACTORS), x.shape[0]))
        maps = torch.cat([maps[0], maps[1].flip(-1)]).mean(0)
    else:
        maps = maps_of(x, tgt)
    if tgt.multi and maps.shape[1] != tgt.index.shape[1]:
        maps = maps.expand(-1, tgt.index.shape[1], -1, -1)
    return maps if tgt.multi else maps.squeeze(1)


def _channel_reduce(weighted, eigen_smooth):
    return first_component(weighted) if eigen_smooth else weighted.sum(-3)


def _options_doc(relu: bool, *, eigen: bool = True, extra: str = "") -> str:
    doc = f"""
    Args:
        model_fn: ``fxai.functional(module)[0]`` or ``fxai.split(features, head)``.
        params: the parameters and buffers ``model_fn`` takes.
        x: input batch ``[B, C, H, W]``.
        target: class index, ``LongTensor[B]`` or ``[B, K]``, ``None`` (top-1) or a callable
            ``logits -> scores``.
        layer: dotted module name, a list of them (one fused map), or ``None`` (the last spatial
            feature map before global pooling).
        relu: apply the final ReLU (default ``{relu}``).
        upsample: ``True`` (bilinear to ``x``'s size), ``False`` (the layer's resolution), or
            ``"nearest"``/``"bicubic"``.
        eigen_smooth: replace the channel sum by the first principal component of the
            weighted activations (:func:`first_component`).
        aug_smooth: average over horizontal flips × intensity factors 0.9, 1.0, 1.1 (one batch).
        reshape: callable turning the layer's output into ``[N, C, h, w]`` (default: automatic
            for ``[N, C, h, w]``, channels-last and ViT tokens).
        chunk_size: at most this many rows per forward/backward.
{extra}
    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; ``h, w`` with ``upsample=False``).
"""
    if not eigen:
        doc = doc.replace(_EIGEN_ARG, "")
    return doc


_EIGEN_ARG = ("        eigen_smooth: replace the channel sum by the first principal component of the\n"
              "            weighted activations (:func:`first_component`).\n")


def _documented(relu: bool, **kw):
    """Fill the ``{OPTIONS}`` line of a method's docstring with the arguments every CAM method shares."""
    def deco(fn):
        fn.__doc__ = fn.__doc__.replace("    {OPTIONS}\n", _options_doc(relu, **kw))
        return fn
    return deco


# ---------------------------------------------------------------- methods

@_documented(True)
def grad_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, relu: bool = True,
             upsample: bool | str = True, eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None,
             chunk_size: int | None = None) -> torch.Tensor:
    r"""Grad-CAM: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \frac{1}{hw}\sum_{ij} G_{cij}`.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017. With a list of layers, the fused map is the sum of the per-layer
    maps, each upsampled to the input size (pytorch-grad-cam averages min-max normalised maps).
    For a GAP + linear head, Grad-CAM at the pooled layer is CAM / (h·w).
    {OPTIONS}

    Example:
        >>> m = fxai.grad_cam(model_fn, params, x, target=3, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        return _channel_reduce(g.mean((-2, -1), keepdim=True) * big_a, eigen)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


@_documented(False)
def hires_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, relu: bool = False,
              upsample: bool | str = True, eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None,
              chunk_size: int | None = None) -> torch.Tensor:
    r"""HiResCAM: :math:`\sum_c G_c \odot A_c` (element-wise instead of Grad-CAM's averaged weights).

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional
    neural networks", 2020. The definition has no final ReLU (``relu=False``; pytorch-grad-cam
    applies one). For a GAP + linear head it equals CAM / (h·w) and sums to the score minus the bias
    (over h·w).
    {OPTIONS}

    Example:
        >>> m = fxai.hires_cam(model_fn, params, x, target=3, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        return _channel_reduce(g * big_a, eigen)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


@_documented(True, extra="        eps: added to the denominator of :math:`\\alpha` (default 1e-6).\n")
def grad_cam_plus_plus(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
                       relu: bool = True, upsample: bool | str = True, eigen_smooth: bool = False,
                       aug_smooth: bool = False, reshape=None, eps: float = 1e-6,
                       chunk_size: int | None = None) -> torch.Tensor:
    r"""Grad-CAM++: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \sum_{ij} \alpha_{cij}\,\mathrm{ReLU}(G_{cij})`,

    .. math:: \alpha_{cij} = \frac{G_{cij}^2}{2 G_{cij}^2 + \sum_{ab} A_{cab}\, G_{cij}^3 + \epsilon}
              \quad (0 \text{ where } G_{cij} = 0).

    Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
    WACV 2018. The closed form of :math:`\alpha` assumes the explained score is
    :math:`S = \exp(y_c)`, whose higher derivatives are powers of the first: then
    :math:`\partial S/\partial A = e^{y_c} G`, and the positive factor :math:`e^{y_c}` (one per map)
    is dropped from :math:`w_c`. This is pytorch-grad-cam's ``GradCAMPlusPlus`` formula
    (same ``eps``), without its min-max normalisation.
    {OPTIONS}

    Example:
        >>> m = fxai.grad_cam_plus_plus(model_fn, params, x, target=3, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        g2 = g * g
        denom = 2 * g2 + big_a.sum((-2, -1), keepdim=True) * g2 * g + eps
        alpha = torch.where(g != 0, g2 / denom, torch.zeros_like(g))
        w = (alpha * g.clamp(min=0)).sum((-2, -1), keepdim=True)
        return _channel_reduce(w * big_a, eigen)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


@_documented(True, extra="        eps: added to the channel sums (default 1e-7).\n")
def xgrad_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, relu: bool = True,
              upsample: bool | str = True, eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None,
              eps: float = 1e-7, chunk_size: int | None = None) -> torch.Tensor:
    r"""XGrad-CAM: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \sum_{ij} \frac{A_{cij}}{\sum_{ab} A_{cab} + \epsilon} G_{cij}`.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020. ``eps`` (default 1e-7, as pytorch-grad-cam) keeps dead channels finite.
    {OPTIONS}

    Example:
        >>> m = fxai.xgrad_cam(model_fn, params, x, target=3, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        w = (g * big_a / (big_a.sum((-2, -1), keepdim=True) + eps)).sum((-2, -1), keepdim=True)
        return _channel_reduce(w * big_a, eigen)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


@_documented(True, extra="        gamma: the scaling of the multi-layer fusion (default 2).\n")
def layer_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, relu: bool = True,
              upsample: bool | str = True, eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None,
              gamma: float = 2.0, chunk_size: int | None = None) -> torch.Tensor:
    r"""LayerCAM: :math:`M = \mathrm{ReLU}\big(\sum_c \mathrm{ReLU}(G_c) \odot A_c\big)`.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP
    2021. With a list of layers, each map is scaled as in the paper's Eq. 9,
    :math:`\tanh(\gamma M / \max M)` (``gamma=2``), upsampled, and the maps are fused by their
    element-wise maximum (as TorchCAM does). One layer gives the raw map.
    {OPTIONS}

    Example:
        >>> m = fxai.layer_cam(model_fn, params, x, target=3, layer=["layer2", "layer3", "layer4"])
    """
    def reduce(big_a, g, eigen):
        return _channel_reduce(g.clamp(min=0) * big_a, eigen)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size,
                fusion="max", gamma=gamma)


@_documented(False, eigen=False)
def eigen_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, relu: bool = False,
              upsample: bool | str = True, aug_smooth: bool = False, reshape=None,
              chunk_size: int | None = None) -> torch.Tensor:
    r"""Eigen-CAM: the projection of the activations on their first principal component.

    Bany Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.
    Class-agnostic: one forward pass, no gradient; for K targets the map is repeated K times. The
    SVD's free sign is fixed so that the map correlates non-negatively with :math:`\sum_c A_c`
    (:func:`first_component`). No final ReLU by default (pytorch-grad-cam applies one).
    {OPTIONS}

    Example:
        >>> m = fxai.eigen_cam(model_fn, params, x, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        return first_component(big_a)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, grads=False, relu=relu, upsample=upsample,
                aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


@_documented(False, eigen=False)
def eigen_grad_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
                   relu: bool = False, upsample: bool | str = True, aug_smooth: bool = False, reshape=None,
                   chunk_size: int | None = None) -> torch.Tensor:
    r"""Eigen-Grad-CAM: the first principal component of :math:`G \odot A` (HiResCAM's weighted activations).

    pytorch-grad-cam's ``EigenGradCAM``; the sign is fixed so that the map correlates non-negatively
    with HiResCAM's map :math:`\sum_c G_c \odot A_c` (:func:`first_component`). No final ReLU by
    default (pytorch-grad-cam applies one).
    {OPTIONS}

    Example:
        >>> m = fxai.eigen_grad_cam(model_fn, params, x, target=3, layer="layer4")
    """
    def reduce(big_a, g, eigen):
        return first_component(g * big_a)

    return _run(model_fn, params, x, target, layer=layer, reduce=reduce, relu=relu, upsample=upsample,
                aug_smooth=aug_smooth, reshape=reshape, chunk_size=chunk_size)


def cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None, fc: str | None = None,
        relu: bool = False, upsample: bool | str = True, reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""CAM: :math:`\sum_c W_{yc} A_c`, the classifier's weights applied at every position.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016. Needs a
    global-average-pooling + linear head right after ``layer``: the logits must equal
    :math:`\frac{1}{hw}\sum_{ij} A_{:ij} W^\top + b`, which is checked on the batch (a clear error
    otherwise). The paper's map has no ReLU (``relu=False``). One forward pass, no gradient.

    Args:
        fc: name of the linear head, whose ``params[fc + ".weight"]`` is ``[classes, C]``
            (default: the last ``nn.Linear`` of the module; required for ``fxai.split`` models).
        Other arguments as :func:`grad_cam` (targets must be class indices or ``None``).

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.cam(model_fn, params, x, target=3, layer="layer4", fc="fc")
    """
    _check_common(x, upsample, chunk_size)
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
        big_a = _grid(act, 1, reshape, size)
        if weight.ndim != 2 or weight.shape[1] != big_a.shape[1]:
            raise ValueError(f"fc: {fc!r} has weight {tuple(weight.shape)} but layer {layers[0]!r} has "
                             f"{big_a.shape[1]} channels; cam needs layer -> global average pooling -> linear fc")
        _check_gap_linear(logits, big_a, weight, bias, fc, layers[0])
        index = logits.detach().argmax(-1, keepdim=True) if tgt.index is None else tgt.index[a:b].to(x.device)
        parts.append(torch.einsum("bkc,bchw->bkhw", weight[index], big_a))
    maps = parts[0] if len(parts) == 1 else torch.cat(parts)
    maps = _resize(maps.clamp(min=0) if relu else maps, size, upsample)
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


def _bias_layers(model_fn, params, x):
    """Names and bias vectors of the Conv2d / BatchNorm2d layers that run, in execution order."""
    calls = trace_modules(model_fn, params, x[:1])
    module = dict(model_fn.module.named_modules())
    names, biases = [], []
    for n, count in calls.items():
        m = module[n]
        if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            bias = params[f"{n}.bias"]
        elif isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            scale = torch.rsqrt(params[f"{n}.running_var"] + m.eps)
            if m.affine:
                scale = scale * params[f"{n}.weight"]
            bias = -params[f"{n}.running_mean"] * scale + (params[f"{n}.bias"] if m.affine else 0)
        else:
            continue
        if count > 1:
            raise ValueError(f"full_grad: layer {n!r} runs {count} times in one forward pass; FullGrad needs each "
                             "biased layer to run once")
        names.append(n)
        biases.append(bias)
    return names, biases


def _per_channel_rescaled(t: torch.Tensor, size) -> torch.Tensor:
    """FullGrad's post-processing: ``|t|`` rescaled to [0, 1] per channel map, upsampled, summed over channels."""
    t = normalize(t.abs(), "minmax", batch_dims=t.ndim - 2)
    return _upsample(t, size).sum(-3)


def full_grad(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
              chunk_size: int | None = None) -> torch.Tensor:
    r"""FullGrad: :math:`\psi(\nabla_x y_c \odot x) + \sum_{l}\sum_{c} \psi(\nabla_{z_l} y_c \odot b_l)_c`.

    Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS 2019.
    The bias terms come from every ``Conv2d`` with a bias and every eval-mode ``BatchNorm2d``
    (implicit bias :math:`\beta - \mu\gamma/\sqrt{\sigma^2 + \epsilon}`), with :math:`z_l` the layer's
    output; all gradients come from one backward pass. :math:`\psi` is the paper's
    post-processing, applied per channel as in its Eq. 7 and in pytorch-grad-cam: absolute value,
    min-max rescaling of each channel map to [0, 1], bilinear upsampling to the input size; channels
    and terms are summed. (The authors' code rescales each layer as a whole, not each channel.) The
    result is not rescaled as a whole: pytorch-grad-cam's ``FullGrad`` equals its min-max
    normalisation. Needs a model from :func:`fxai.functional`.

    Args:
        model_fn, params, x, target, chunk_size: as :func:`grad_cam`.

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.full_grad(model_fn, params, x, target=3)
    """
    _check_common(x, True, chunk_size)
    if not isinstance(model_fn, FunctionalModel):
        raise TypeError(f"full_grad needs a model_fn made by fxai.functional(module) (to find its biased layers); "
                        f"got {type(model_fn).__name__}")
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])
    names, biases = _bias_layers(model_fn, params, x)
    _, grads, _, xgrad = layer_and_input_gradients(model_fn, params, x, tgt, names, chunk_size=chunk_size)
    xs = x if not tgt.multi else x[:, None]
    total = _per_channel_rescaled(xgrad * xs, size)
    for g, b in zip(grads, biases):
        total = total + _per_channel_rescaled(g * b[:, None, None], size)
    return total


def guided_grad_cam(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, layer=None,
                    upsample: bool | str = True, reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Guided Grad-CAM: guided backpropagation × upsampled Grad-CAM, :math:`\mathrm{GB}_c(x) \odot \mathrm{GradCAM}_c`.

    Selvaraju et al., 2017 (Sec. 3.1). The composition ``fxai.guided_backprop(...) *
    fxai.grad_cam(...)[:, None]`` (Grad-CAM with its ReLU, broadcast over the input channels).
    Captum's ``GuidedGradCam`` upsamples with ``"nearest"``; pass ``upsample="nearest"`` to match it.

    Args:
        upsample: how Grad-CAM is resized to the input: ``True`` (bilinear), ``"nearest"`` or ``"bicubic"``.
        Other arguments as :func:`grad_cam`.

    Returns:
        A map shaped like ``x`` (``[B, K, C, H, W]`` for K targets).

    Example:
        >>> m = fxai.guided_grad_cam(model_fn, params, x, target=3, layer="layer4")
    """
    if upsample is False:
        raise ValueError("upsample: guided_grad_cam multiplies by a map at the input's size; use True, 'nearest' or "
                         "'bicubic'")
    heat = grad_cam(model_fn, params, x, target, layer=layer, upsample=upsample, reshape=reshape,
                    chunk_size=chunk_size)
    return guided_backprop(model_fn, params, x, target, chunk_size=chunk_size) * heat.unsqueeze(-3)
