"""The ops backward rules intercept, each with every spelling torch has for it.

Elementwise nonlinearities (:data:`ELEMENTWISE`) carry their derivative, for
rules that fall back to the gradient; the others are max-pooling, the
elementwise product of two tensors, softmax and the linear layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .engine import Op

aten = torch.ops.aten
T = torch.Tensor


@dataclass(frozen=True, eq=False)
class Elementwise(Op):
    """An elementwise nonlinearity ``f`` with its derivative ``derivative(x, **options) = f'(x)``."""

    derivative: object = None


def _unary(**defaults):
    """A binder for ``f(input, <options in this order>, inplace=False)``."""
    names = list(defaults)

    def bind(x, *args, inplace=False, **kwargs):
        if args and isinstance(args[-1], bool):  # a positional ``inplace``: no option is a bool
            inplace, args = args[-1], args[:-1]
        options = dict(defaults)
        options.update(zip(names, args))
        options.update({k: v for k, v in kwargs.items() if k in defaults})
        return (x,), options, bool(inplace)

    return bind


def _elementwise(name, compute, derivative, out_of_place, in_place=(), **defaults):
    return Elementwise(name, _unary(**defaults), compute, tuple(out_of_place), tuple(in_place), derivative)


def _gelu(x, approximate="none"):
    return F.gelu(x, approximate=approximate)


def _gelu_derivative(x, approximate="none"):
    if approximate == "tanh":
        k, c = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(k * (x + c * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return scale * F.elu(input_scale * x, alpha)


def _elu_derivative(x, alpha=1.0, scale=1.0, input_scale=1.0):
    u = input_scale * x
    return scale * input_scale * torch.where(u > 0, torch.ones_like(u), alpha * torch.exp(u))


def _sigmoid_derivative(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _silu_derivative(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _softplus_derivative(x, beta=1.0, threshold=20.0):
    return torch.where(beta * x > threshold, torch.ones_like(x), torch.sigmoid(beta * x))


RELU = _elementwise(
    "relu", lambda x: x.clamp(min=0), lambda x: (x > 0).to(x.dtype),
    (torch.relu, F.relu, T.relu, aten.relu.default), (torch.relu_, F.relu_, T.relu_, aten.relu_.default))
LEAKY_RELU = _elementwise(
    "leaky_relu", lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    lambda x, negative_slope=0.01: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, negative_slope)),
    (F.leaky_relu, torch._C._nn.leaky_relu, aten.leaky_relu.default),
    (F.leaky_relu_, aten.leaky_relu_.default), negative_slope=0.01)
ELU = _elementwise(
    "elu", _elu, _elu_derivative, (F.elu, torch._C._nn.elu, aten.elu.default), (F.elu_, aten.elu_.default),
    alpha=1.0, scale=1.0, input_scale=1.0)
SIGMOID = _elementwise(
    "sigmoid", torch.sigmoid, _sigmoid_derivative, (torch.sigmoid, T.sigmoid, aten.sigmoid.default),
    (torch.sigmoid_, T.sigmoid_, aten.sigmoid_.default))
TANH = _elementwise(
    "tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, (torch.tanh, T.tanh, aten.tanh.default),
    (torch.tanh_, T.tanh_, aten.tanh_.default))
SOFTPLUS = _elementwise(
    "softplus", lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold), _softplus_derivative,
    (F.softplus, aten.softplus.default), beta=1.0, threshold=20.0)
GELU = _elementwise("gelu", _gelu, _gelu_derivative, (F.gelu, aten.gelu.default), (aten.gelu_.default,),
                    approximate="none")
SILU = _elementwise("silu", F.silu, _silu_derivative, (F.silu, torch._C._nn.silu, aten.silu.default),
                    (torch._C._nn.silu_, aten.silu_.default))

HARDTANH = _elementwise(
    "hardtanh", lambda x, min_val=-1.0, max_val=1.0: x.clamp(min_val, max_val),
    lambda x, min_val=-1.0, max_val=1.0: ((x > min_val) & (x < max_val)).to(x.dtype),
    (F.hardtanh, torch._C._nn.hardtanh, aten.hardtanh.default), (F.hardtanh_, aten.hardtanh_.default),
    min_val=-1.0, max_val=1.0)
RELU6 = _elementwise("relu6", lambda x: x.clamp(0, 6), lambda x: ((x > 0) & (x < 6)).to(x.dtype), (F.relu6,))
HARDSIGMOID = _elementwise(
    "hardsigmoid", F.hardsigmoid, lambda x: ((x > -3) & (x < 3)).to(x.dtype) / 6,
    (F.hardsigmoid, torch._C._nn.hardsigmoid, aten.hardsigmoid.default),
    (torch._C._nn.hardsigmoid_, aten.hardsigmoid_.default))
HARDSWISH = _elementwise(
    "hardswish", F.hardswish, lambda x: torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, x / 3 + 0.5)).to(x.dtype),
    (F.hardswish, torch._C._nn.hardswish, aten.hardswish.default),
    (torch._C._nn.hardswish_, aten.hardswish_.default))

ELEMENTWISE = (RELU, LEAKY_RELU, ELU, SIGMOID, TANH, SOFTPLUS, GELU, SILU, HARDTANH, RELU6, HARDSIGMOID, HARDSWISH)


def _bind_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel_size
    return (x,), dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                      ceil_mode=ceil_mode, return_indices=return_indices), False


def _bind_max_pool_with_indices(x, *args, **kwargs):
    operands, options, _ = _bind_max_pool(x, *args, **kwargs)
    options["return_indices"] = True
    return operands, options, False


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=False):
    """``F.max_pool2d`` with every argument given by keyword or position, as the rules call it."""
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


MAX_POOL2D = Op("max_pool2d", _bind_max_pool, max_pool2d, (F.max_pool2d, torch.max_pool2d))
MAX_POOL2D_WITH_INDICES = Op("max_pool2d", _bind_max_pool_with_indices, max_pool2d,
                            (F.max_pool2d_with_indices,))


def _bind_mul(a, b, *, out=None):
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or out is not None \
            or not (a.is_floating_point() and b.is_floating_point()):
        return None  # a product with a number or a mask is linear
    return (a, b), {}, False


MUL = Op("mul", _bind_mul, torch.mul, (torch.mul, T.mul, T.__mul__, T.__rmul__, aten.mul.Tensor),
         (T.mul_, T.__imul__, aten.mul_.Tensor))


def _softmax_binder(name):
    def bind(x, dim=None, _stacklevel=3, dtype=None):
        if dim is None:
            dim = F._get_softmax_dim(name, x.dim(), _stacklevel)
        if dtype is not None:
            x = x.to(dtype)
        return (x,), {"dim": dim}, False
    return bind


SOFTMAX = Op("softmax", _softmax_binder("softmax"), lambda x, dim: torch.softmax(x, dim),
             (F.softmax, torch.softmax, T.softmax, torch.special.softmax))
LOG_SOFTMAX = Op("log_softmax", _softmax_binder("log_softmax"), lambda x, dim: torch.log_softmax(x, dim),
                 (F.log_softmax, torch.log_softmax, T.log_softmax, torch.special.log_softmax))

# Linear layers: the operand is the input; weights and options are fixed between passes.


def _bind_linear(x, weight, bias=None):
    return (x,), {"weight": weight, "bias": bias}, False


def _conv_binder(stride_default=1):
    def bind(x, weight, bias=None, stride=stride_default, padding=0, dilation=1, groups=1):
        return (x,), dict(weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                          groups=groups), False
    return bind


def _bind_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5):
    if training or running_mean is None:
        return None  # batch statistics couple the examples: not a per-example linear map
    return (x,), dict(running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                      eps=eps), False


def _batch_norm(x, running_mean, running_var, weight, bias, eps):
    return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)


LINEAR = Op("linear", _bind_linear, lambda x, weight, bias: F.linear(x, weight, bias), (F.linear,))
CONV1D = Op("conv1d", _conv_binder(), lambda x, **o: F.conv1d(x, **o), (F.conv1d,))
CONV2D = Op("conv2d", _conv_binder(), lambda x, **o: F.conv2d(x, **o), (F.conv2d,))
CONV3D = Op("conv3d", _conv_binder(), lambda x, **o: F.conv3d(x, **o), (F.conv3d,))
BATCH_NORM = Op("batch_norm", _bind_batch_norm, _batch_norm, (F.batch_norm,))

LINEAR_OPS = (LINEAR, CONV1D, CONV2D, CONV3D, BATCH_NORM)


def is_inplace(func) -> bool:
    """Whether a torch function writes into its first argument (``add_``, ``__iadd__``, ``copy_``, ``x[i] = v``)."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or name == "__setitem__"
