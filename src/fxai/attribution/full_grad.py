"""FullGrad: the input gradient and every bias gradient, each rectified, rescaled and summed."""

from __future__ import annotations

import torch

from .._core.discovery import trace_modules
from .._core.docs import documented
from .._core.functional import FunctionalModel
from .._core.layers import layer_and_input_gradients
from .._core.targets import TargetLike, as_target
from ..postprocess import normalize, upsample
from .cam_driver import check_options, first_component


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
    dtype = t.dtype
    t = t.float() if dtype in (torch.float16, torch.bfloat16) else t  # half precision underflows the rescaling
    t = normalize(t.abs(), "minmax", batch_dims=t.ndim - 2)
    return upsample(t, size).sum(-3).to(dtype)


@documented(eigen_smooth="replace the sum of the terms by the first principal component of their maps (the input "
                          "term per channel, each bias term summed over its channels), as pytorch-grad-cam: each "
                          "map min-max rescaled and shrunk to an eighth of the input size, the component upsampled.")
def full_grad(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, eigen_smooth: bool = False,
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

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets).

    Example:
        >>> m = fxai.full_grad(model_fn, params, x, target=3)
    """
    chunk_size = check_options(x, True, None, chunk_size)
    if not isinstance(model_fn, FunctionalModel):
        raise TypeError(f"full_grad needs a model_fn made by fxai.functional(module) (to find its biased layers); "
                        f"got {type(model_fn).__name__}")
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])
    names, biases = _bias_layers(model_fn, params, x)
    _, grads, _, xgrad = layer_and_input_gradients(model_fn, params, x, tgt, names, chunk_size=chunk_size)
    xs = x if not tgt.multi else x[:, None]
    if eigen_smooth:
        terms = [upsample(normalize((xgrad * xs).abs(), "minmax", batch_dims=xgrad.ndim - 2), size)]
        terms += [_per_channel_rescaled(g * b[:, None, None], size).unsqueeze(-3) for g, b in zip(grads, biases)]
        stack = torch.cat(terms, -3)
        small = upsample(normalize(stack, "minmax", batch_dims=stack.ndim - 2), (max(1, size[0] // 8),
                                                                                  max(1, size[1] // 8)))
        return upsample(first_component(small), size)
    total = _per_channel_rescaled(xgrad * xs, size)
    for g, b in zip(grads, biases):
        total = total + _per_channel_rescaled(g * b[:, None, None], size)
    return total
