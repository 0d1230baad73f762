r"""The gradient CAMs, each a declaration over :mod:`fxai.attribution.cam_driver`: how it weighs the
activations :math:`A` with their gradients :math:`G`, its final ReLU and its own options.

Every method is a pure function ``(model_fn, params, x, target=None, *, layer=None, ...) -> [B, H, W]``
(``[B, K, H, W]`` for K targets per input).
"""

from __future__ import annotations

import torch

from .._core.docs import documented
from .cam_driver import layer_cam_method
from .guided import guided_backprop


def mean_gradient(a, g, **_):
    """Grad-CAM's weighting: the channel's mean gradient times its activation."""
    return g.mean((-2, -1), keepdim=True) * a


def _elementwise(a, g, **_):
    return g * a


def plus_plus(a, g, *, eps, **_):
    """Grad-CAM++'s weighting (see :data:`grad_cam_plus_plus`)."""
    g2 = g * g
    denom = 2 * g2 + a.sum((-2, -1), keepdim=True) * g2 * g + eps
    alpha = torch.where(g != 0, g2 / denom, torch.zeros_like(g))
    return (alpha * g.clamp(min=0)).sum((-2, -1), keepdim=True) * a


def _axiom(a, g, *, eps, **_):
    return (g * a / (a.sum((-2, -1), keepdim=True) + eps)).sum((-2, -1), keepdim=True) * a


def _positive_gradient(a, g, **_):
    return g.clamp(min=0) * a


def _activations(a, g, **_):
    return a


grad_cam = layer_cam_method(
    "grad_cam", mean_gradient, relu=True,
    example='m = fxai.grad_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Grad-CAM: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \frac{1}{hw}\sum_{ij} G_{cij}`.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. With a list of layers, the fused map is the sum of the per-layer
maps, each upsampled to the input size (pytorch-grad-cam averages min-max normalised maps).
For a GAP + linear head, Grad-CAM at the pooled layer is CAM / (h·w).
""")

hires_cam = layer_cam_method(
    "hires_cam", _elementwise, relu=False,
    example='m = fxai.hires_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
HiResCAM: :math:`\sum_c G_c \odot A_c` (element-wise instead of Grad-CAM's averaged weights).

Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional
neural networks", 2020. The definition has no final ReLU (``relu=False``; pytorch-grad-cam
applies one). For a GAP + linear head it equals CAM / (h·w) and sums to the score minus the bias
(over h·w).
""")

grad_cam_plus_plus = layer_cam_method(
    "grad_cam_plus_plus", plus_plus, relu=True, options={"eps": 1e-6},
    described={"eps": "added to the denominator of :math:`\\alpha` (default 1e-6)."},
    example='m = fxai.grad_cam_plus_plus(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Grad-CAM++: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \sum_{ij} \alpha_{cij}\,\mathrm{ReLU}(G_{cij})`,

.. math:: \alpha_{cij} = \frac{G_{cij}^2}{2 G_{cij}^2 + \sum_{ab} A_{cab}\, G_{cij}^3 + \epsilon}
          \quad (0 \text{ where } G_{cij} = 0).

Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
WACV 2018. The closed form of :math:`\alpha` assumes the explained score is
:math:`S = \exp(y_c)`, whose higher derivatives are powers of the first: then
:math:`\partial S/\partial A = e^{y_c} G`, and the positive factor :math:`e^{y_c}` (one per map)
is dropped from :math:`w_c`. This is pytorch-grad-cam's ``GradCAMPlusPlus`` formula
(same ``eps``), without its min-max normalisation.
""")

xgrad_cam = layer_cam_method(
    "xgrad_cam", _axiom, relu=True, options={"eps": 1e-7},
    described={"eps": "added to the channel sums (default 1e-7, as pytorch-grad-cam): keeps dead channels finite."},
    example='m = fxai.xgrad_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
XGrad-CAM: :math:`\mathrm{ReLU}\big(\sum_c w_c A_c\big)`, :math:`w_c = \sum_{ij} \frac{A_{cij}}{\sum_{ab} A_{cab} + \epsilon} G_{cij}`.

Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
BMVC 2020.
""")

layer_cam = layer_cam_method(
    "layer_cam", _positive_gradient, relu=True, fusion="max", options={"gamma": 2.0},
    described={"gamma": "the scaling of the multi-layer fusion (default 2)."},
    example='m = fxai.layer_cam(model_fn, params, x, target=3, layer=["layer3", "layer4"])',
    doc=r"""
LayerCAM: :math:`M = \mathrm{ReLU}\big(\sum_c \mathrm{ReLU}(G_c) \odot A_c\big)`.

Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP
2021. With a list of layers, each map is scaled as in the paper's Eq. 9,
:math:`\tanh(\gamma M / \max M)` (``gamma=2``), upsampled, and the maps are fused by their
element-wise maximum (as TorchCAM does). One layer gives the raw map.
""")

eigen_cam = layer_cam_method(
    "eigen_cam", _activations, relu=False, grads=False, pca=True,
    example='m = fxai.eigen_cam(model_fn, params, x, layer="layer4")',
    doc=r"""
Eigen-CAM: the projection of the activations on their first principal component.

Bany Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.
Class-agnostic: one forward pass, no gradient; for K targets the map is repeated K times. The
SVD's free sign is fixed so that the map correlates non-negatively with :math:`\sum_c A_c`
(:func:`~fxai.attribution.cam_driver.first_component`). No final ReLU by default (pytorch-grad-cam
applies one).
""")

eigen_grad_cam = layer_cam_method(
    "eigen_grad_cam", _elementwise, relu=False, pca=True,
    example='m = fxai.eigen_grad_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Eigen-Grad-CAM: the first principal component of :math:`G \odot A` (HiResCAM's weighted activations).

pytorch-grad-cam's ``EigenGradCAM``; the sign is fixed so that the map correlates non-negatively
with HiResCAM's map :math:`\sum_c G_c \odot A_c`
(:func:`~fxai.attribution.cam_driver.first_component`). No final ReLU by default (pytorch-grad-cam
applies one).
""")


@documented(upsample="how Grad-CAM is resized to the input: ``True`` (bilinear), ``\"nearest\"`` or "
                     "``\"bicubic\"``.")
def guided_grad_cam(model_fn, params, x: torch.Tensor, target=None, *, layer=None, upsample: bool | str = True,
                    reshape=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Guided Grad-CAM: guided backpropagation × upsampled Grad-CAM, :math:`\mathrm{GB}_c(x) \odot \mathrm{GradCAM}_c`.

    Selvaraju et al., 2017 (Sec. 3.1). The composition ``fxai.guided_backprop(...) *
    fxai.grad_cam(...)[:, None]`` (Grad-CAM with its ReLU, broadcast over the input channels).
    Captum's ``GuidedGradCam`` upsamples with ``"nearest"``; pass ``upsample="nearest"`` to match it.

    {args}

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
