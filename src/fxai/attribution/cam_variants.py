r"""More CAMs declared on :mod:`fxai.attribution.cam_driver`: element-wise Grad-CAM, Shapley-CAM, KPCA-CAM,
Seg-Eigen-CAM, Refine-CAM and Finer-CAM (pytorch-grad-cam's additions to the family).

Every method is a pure function ``(model_fn, params, x, target=None, *, layer=None, ...) -> [B, H, W]``
(``[B, K, H, W]`` for K targets per input).
"""

from __future__ import annotations

import torch
from torch.func import grad, vjp

from .._core import keys
from .._core.batching import row_chunks
from .._core.checks import check_choice, check_positive_int
from .._core.docs import documented
from .._core.layers import forward_with_activations, layer_gradients, tapped
from .._core.targets import as_target, check_logits
from .cam_driver import as_grid, first_component, layer_cam_method, oriented
from .gradient_cams import grad_cam, mean_gradient, plus_plus

KERNELS = ("sigmoid", "rbf", "poly", "cosine", "linear")


def _positive_elementwise(a, g, **_):
    return (g * a).clamp(min=0)


def _abs_gradient(a, g, **_):
    return g.abs() * a


def _activations(a, g, **_):
    return a


def kernel_component(weighted: torch.Tensor, *, kernel: str = "sigmoid", gamma: float | None = None,
                     **_) -> torch.Tensor:
    r"""Projection of ``[..., C, h, w]`` on its first kernel principal component over the ``h·w`` positions.

    The ``[hw, C]`` matrix is centred per channel; with the kernel matrix :math:`K_{ij} = k(m_i, m_j)`
    double-centred, :math:`\tilde K = J K J` (:math:`J = I - \frac{1}{n}11^\top`), and its top eigenpair
    :math:`(\lambda, u)`, the map is :math:`\sqrt{\lambda}\, u` (scikit-learn's ``KernelPCA.fit_transform``).
    Kernels as scikit-learn's, ``gamma`` :math:`= 1/C` by default: ``sigmoid``
    :math:`\tanh(\gamma\, m_i^\top m_j + 1)`, ``rbf`` :math:`\exp(-\gamma \|m_i - m_j\|^2)`, ``poly``
    :math:`(\gamma\, m_i^\top m_j + 1)^3`, ``cosine`` and ``linear``. The free sign is fixed as
    :func:`~fxai.attribution.cam_driver.first_component`'s.

    Example:
        >>> kernel_component(torch.randn(1, 4, 3, 3)).shape
        torch.Size([1, 3, 3])
    """
    check_choice(kernel, KERNELS, name="kernel")
    dtype = weighted.dtype
    w = weighted.double() if weighted.device.type != "mps" else weighted.float()  # a small h·w × h·w problem
    flat = w.flatten(-2).transpose(-1, -2)
    flat = flat - flat.mean(-2, keepdim=True)
    g = 1.0 / flat.shape[-1] if gamma is None else gamma
    dot = flat @ flat.transpose(-1, -2)
    if kernel == "sigmoid":
        k = torch.tanh(g * dot + 1)
    elif kernel == "poly":
        k = (g * dot + 1) ** 3
    elif kernel == "rbf":
        sq = dot.diagonal(dim1=-2, dim2=-1)
        k = torch.exp(-g * (sq[..., :, None] + sq[..., None, :] - 2 * dot).clamp(min=0))
    elif kernel == "cosine":
        unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = unit @ unit.transpose(-1, -2)
    else:
        k = dot
    k = k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)
    values, vectors = torch.linalg.eigh((k + k.transpose(-1, -2)) / 2)
    proj = vectors[..., -1] * values[..., -1:].clamp(min=0).sqrt()
    return oriented(proj, w, "sum").unflatten(-1, weighted.shape[-2:]).to(dtype)


def _seg_component(weighted, **_):
    return first_component(weighted, sign="extreme")


def _shapley_tensors(model_fn, params, x, tgt, layers, *, reshape, chunk_size, **_):
    r"""Per layer ``(A, G - ½ H A)``: the gradient and the Hessian-vector product along the activation itself
    (one ``vjp`` of the gradient)."""
    fn = tapped(model_fn, layers)
    size = tuple(x.shape[-2:])
    k_count = tgt.index.shape[1] if tgt.multi else 1
    acts_all, weights_all = [], []
    for a, b in row_chunks(x.shape[0], chunk_size, tgt.group):
        rows = x[a:b]
        logits, acts = fn(params, rows.clone())
        check_logits(logits, rows)
        tgt.scores(logits, a)
        acts = tuple(acts)
        zeros = tuple(torch.zeros_like(t) for t in acts)
        per_k = []
        for k in range(k_count):
            def total(*deltas, k=k, a=a, rows=rows):
                s = tgt.scores(fn(params, rows.clone(), deltas)[0], a)
                return (s[:, k] if tgt.multi else s).sum()

            g, pull = vjp(grad(total, argnums=tuple(range(len(acts)))), *zeros)
            hv = pull(acts)
            per_k.append([gi - 0.5 * hi for gi, hi in zip(g, hv)])
        acts_all.append(acts)
        weights_all.append([torch.stack([p[i] for p in per_k], 1) for i in range(len(acts))])
    out = []
    for i in range(len(layers)):
        act = torch.cat([c[i] for c in acts_all])
        w = torch.cat([c[i] for c in weights_all])
        out.append((as_grid(act, 1, reshape, size)[:, None], as_grid(w, 2, reshape, size)))
    return out


grad_cam_element_wise = layer_cam_method(
    "grad_cam_element_wise", _positive_elementwise, relu=True,
    example='m = fxai.grad_cam_element_wise(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Element-wise Grad-CAM: :math:`\mathrm{ReLU}\big(\sum_c \mathrm{ReLU}(G_c \odot A_c)\big)`.

pytorch-grad-cam's ``GradCAMElementWise``: HiResCAM with each product rectified before the channel sum
(the positive evidence of every channel at every position). With ``eigen_smooth`` the principal
component is taken of the rectified products, as pytorch-grad-cam does.
""")

shapley_cam = layer_cam_method(
    "shapley_cam", mean_gradient, relu=True, source=_shapley_tensors,
    example='m = fxai.shapley_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Shapley-CAM: Grad-CAM with the gradient corrected by half the Hessian along the activation,
:math:`w_c = \frac{1}{hw}\sum_{ij} \big(G - \tfrac12 H A\big)_{cij}`,
:math:`H = \partial^2 y_c / \partial A^2`.

Cai et al., "CAMs as Shapley Value-based Explainers", 2025 (arXiv:2501.06261): the second-order
Taylor estimate of each channel's Shapley value. :math:`HA` is one Hessian-vector product, computed
by reverse-over-reverse differentiation (``torch.func.vjp`` of the gradient; :math:`H` is symmetric), for
each of K targets.
For a network piecewise linear after the layer (ReLU, max-pooling, a linear head), :math:`HA = 0`
and Shapley-CAM is Grad-CAM; the correction acts through smooth activations (GELU, SiLU) or a
callable target such as a softmax probability. As pytorch-grad-cam's ``ShapleyCAM``.
""")

kpca_cam = layer_cam_method(
    "kpca_cam", _activations, relu=False, grads=False, pca=kernel_component,
    options={"kernel": "sigmoid", "gamma": None},
    described={"kernel": f"the kernel of the kernel PCA, one of {', '.join(KERNELS)} (default ``\"sigmoid\"``).",
               "gamma": "the kernel coefficient; ``None``: 1 / channels (scikit-learn's default)."},
    example='m = fxai.kpca_cam(model_fn, params, x, layer="layer4")',
    doc=r"""
KPCA-CAM: Eigen-CAM with kernel PCA, the activations projected on their first kernel principal component.

Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA",
2024 (:func:`kernel_component`). Class-agnostic: one forward pass, no gradient. The ``h·w × h·w``
kernel matrix is eigendecomposed in torch (float64) on ``x``'s device (pytorch-grad-cam runs scikit-learn's
``KernelPCA`` per image); the free sign is fixed as Eigen-CAM's. No final ReLU by default
(pytorch-grad-cam applies one).
""")

seg_eigen_cam = layer_cam_method(
    "seg_eigen_cam", _abs_gradient, relu=False, pca=_seg_component,
    example='m = fxai.seg_eigen_cam(model_fn, params, x, target=3, layer="layer4")',
    doc=r"""
Seg-Eigen-CAM: the first principal component of :math:`|G| \odot A`, its sign chosen so that
:math:`|\max| \ge |\min|`.

Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic Segmentation
Models", Applied Sciences 2025 (Eqs. 10-13); for segmentation pass a callable target such as
:func:`fxai.segmentation_target`. No final ReLU by default (pytorch-grad-cam applies one).
""")

refine_cam = layer_cam_method(
    "refine_cam", plus_plus, relu=True, fusion="product", options={"eps": 1e-6},
    described={"eps": "added to the denominator of Grad-CAM++'s :math:`\\alpha` (default 1e-6)."},
    example='m = fxai.refine_cam(model_fn, params, x, target=3, layer=["layer3", "layer4"])',
    doc=r"""
Refine-CAM: the product over layers of Grad-CAM++ maps, each upsampled and min-max normalised,
:math:`M = \mathrm{minmax}\big(\prod_l \mathrm{minmax}(\mathrm{up}(M_l))\big)`.

pytorch-grad-cam's ``RefineCAM`` (its default base, Grad-CAM++): a position survives only where every
layer lights it, which denoises the maps of early layers. The maps are normalised by definition
(values in [0, 1]); one layer gives its min-max normalised Grad-CAM++.
""")


@documented(alpha="the strength of the comparison: the score is :math:`\\sum_j p_j (y_c - \\alpha y_j) / \\sum_j p_j`.",
            comparison="ranks of the compared classes, in the order of :math:`|y_j - y_c|` on each input "
                       "(0 is the target itself); default ``(1, 2, 3)``, the three most similar classes.",
            base="the CAM computed on the weighted target: a function of the CAM family taking a callable "
                 "target (default :func:`fxai.grad_cam`).",
            layer="as the base method's ``layer``.",
            options="further keyword options of the base method (``relu``, ``upsample``, ``eigen_smooth``, "
                    "``aug_smooth``, ``chunk_size``, ...).")
def finer_cam(model_fn, params, x: torch.Tensor, target=None, *, layer=None, alpha: float = 1.0,
              comparison=(1, 2, 3), base=None, **options) -> torch.Tensor:
    r"""Finer-CAM: a CAM of the target's score against the classes most similar to it.

    .. math:: S = \frac{\sum_{j \in J} p_j\,(y_c - \alpha\, y_j)}{\sum_{j \in J} p_j + 10^{-9}}

    with :math:`p = \mathrm{softmax}(y)` (differentiated through) and :math:`J` the classes at ranks
    ``comparison`` when all classes are sorted by :math:`|y_j - y_c|` on the input itself. Zhang et al.,
    "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation", CVPR 2025; as
    pytorch-grad-cam's ``FinerCAM`` with ``FinerWeightedTarget`` (base Grad-CAM). The comparison classes
    are chosen in the same forward pass as the score (no extra pass). ``None`` targets the top-1 class;
    K targets per input run K passes.

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.finer_cam(model_fn, params, x, target=3, layer="layer4")
    """
    base = grad_cam if base is None else base
    if not callable(base):
        raise TypeError(f"base must be a CAM function such as fxai.grad_cam, got {type(base).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    ranks = [comparison] if isinstance(comparison, int) else list(comparison)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks):
        raise ValueError(f"comparison must be non-negative ranks (ints), got {comparison!r}")
    tgt = as_target(target, x)
    if tgt.fn is not None:
        raise TypeError("target: finer_cam builds its own callable target; pass class indices or None")
    with torch.no_grad():
        logits = model_fn(params, x.clone())  # a copy: a model may write into its input
    check_logits(logits, x)
    classes = logits.argmax(-1, keepdim=True) if tgt.top1 else tgt.index
    tgt.scores(logits)  # the range of the class indices
    maps = [base(model_fn, params, x, finer_target(classes[:, k], alpha=alpha, comparison=ranks), layer=layer,
                 **options) for k in range(classes.shape[1])]
    return torch.stack(maps, 1) if tgt.multi else maps[0]


def finer_target(classes: torch.Tensor, *, alpha: float = 1.0, comparison=(1, 2, 3)):
    r"""Finer-CAM's weighted score as a callable target ``logits [B, classes] -> [B]`` for the classes
    ``[B]`` (see :func:`finer_cam`).

    Example:
        >>> fn = finer_target(torch.tensor([0]))
        >>> fn(torch.tensor([[3.0, 2.5, 0.0, -1.0, 2.0]])).shape
        torch.Size([1])
    """
    ranks = list(comparison)

    def score(logits: torch.Tensor) -> torch.Tensor:
        main = classes.to(logits.device)[:, None]
        y_c = logits.gather(1, main)
        keep = [r for r in ranks if r < logits.shape[1]]
        order = (logits - y_c).detach().abs().argsort(dim=-1, stable=True)
        others = order[:, keep]
        p = logits.softmax(-1).gather(1, others)
        y_j = logits.gather(1, others)
        return (p * (y_c - alpha * y_j)).sum(-1) / (p.sum(-1) + 1e-9)

    return score


def _smooth_plus_plus_tensors(model_fn, params, x, tgt, layers, *, reshape, chunk_size, samples, std, eps, key,
                              **_):
    """Per layer ``(A, w)``: Grad-CAM++ weights from gradient powers averaged over noisy copies of ``x``."""
    check_positive_int(samples, name="samples")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std < 0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")
    size = tuple(x.shape[-2:])
    tgt = tgt.fixed(model_fn, params, x)
    noisy = (x.unsqueeze(0) + keys.normal(key, (samples, *x.shape), x) * std).flatten(0, 1)
    stacked = as_target(tgt.stacked(samples) if tgt.fn is None else tgt.fn, noisy)
    _, grads, _ = layer_gradients(model_fn, params, noisy, stacked, layers, chunk_size=chunk_size)
    _, acts = forward_with_activations(model_fn, params, x, layers)
    out = []
    for act, g in zip(acts, grads):
        a = as_grid(act, 1, reshape, size)[:, None]
        g = g if tgt.multi else g[:, None]
        g = as_grid(g, 2, reshape, size).unflatten(0, (samples, x.shape[0]))
        g1, g2, g3 = g.mean(0), (g * g).mean(0), (g * g * g).mean(0)
        alpha = torch.where(g2 != 0, g2 / (2 * g2 + a.sum((-2, -1), keepdim=True) * g3 + eps), torch.zeros_like(g2))
        out.append((a, (alpha * g1.clamp(min=0)).sum((-2, -1), keepdim=True)))
    return out


def _weighted(a, w, **_):
    return w * a


smooth_grad_cam_plus_plus = layer_cam_method(
    "smooth_grad_cam_plus_plus", _weighted, relu=True, source=_smooth_plus_plus_tensors,
    options={"samples": 4, "std": 0.3, "eps": 1e-6, "key": None},
    described={"samples": "noisy copies of the input (default 4, as TorchCAM).",
               "std": "standard deviation of the Gaussian noise added to the input (default 0.3, as TorchCAM).",
               "eps": "added to the denominator of :math:`\\alpha` (default 1e-6, as Grad-CAM++).",
               "key": "int seed or ``torch.Generator`` (required): the noise."},
    example='m = fxai.smooth_grad_cam_plus_plus(model_fn, params, x, 3, layer="layer4", key=0)',
    doc=r"""
Smooth Grad-CAM++: Grad-CAM++ with the gradient's powers averaged over noisy copies of the input.

.. math:: w_c = \sum_{ij} \alpha_{cij}\, \mathrm{ReLU}(\bar G_{cij}),\quad
          \alpha_{cij} = \frac{\overline{G^2}_{cij}}{2\,\overline{G^2}_{cij} + \sum_{ab} A_{cab}\,
          \overline{G^3}_{cij} + \epsilon}

with :math:`\overline{G^p} = \frac1N \sum_n G(x + \delta_n)^p`, :math:`\delta_n \sim \mathcal N(0, \sigma^2)`
and :math:`A` the clean input's activation. Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference
Level Visualization Technique for Deep Convolutional Neural Network Models", 2019. Not SmoothGrad over
Grad-CAM++ (a mean of maps): the averages enter :math:`\alpha` before the weights are formed. The N·B
noisy copies run as one stacked batch. ``std=0`` gives Grad-CAM++. TorchCAM's ``SmoothGradCAMpp``
differs: its denominator sums :math:`\overline{G^3} \odot A` over positions (instead of
:math:`\sum_{ab} A_{cab}` times :math:`\overline{G^3}_{cij}`), and the weights and the map use the
gradient and activation of the last noisy copy (instead of the mean gradient and the clean activation).
""")
