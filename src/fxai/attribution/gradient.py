"""Vanilla gradient and input × gradient."""

from __future__ import annotations

import torch

from .._core.batching import input_gradients
from .._core.checks import check_input, check_positive_int
from .._core.targets import TargetLike, as_target


def _expand_like(x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` broadcast against maps ``[B, ...]`` or ``[B, K, ...]``."""
    return x if grads.ndim == x.ndim else x.unsqueeze(1)


def gradient(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
             chunk_size: int | None = None) -> torch.Tensor:
    r"""Vanilla gradient (saliency): :math:`\partial f_c(x) / \partial x`.

    Simonyan et al., "Deep Inside Convolutional Networks", 2014.

    Args:
        model_fn: pure ``model_fn(params, x) -> logits`` (see :func:`fxai.functional`).
        params: the parameters and buffers ``model_fn`` takes.
        x: input batch ``[B, ...]``.
        target: class index, ``LongTensor[B]`` or ``[B, K]``, ``None`` (top-1) or
            a callable ``logits -> scores[B]``.
        chunk_size: at most this many inputs per forward/backward pass.

    Returns:
        A map shaped like ``x``, or ``[B, K, ...]`` for K targets per input.

    Example:
        >>> g = fxai.gradient(model_fn, params, x, target=3)
    """
    check_input(x)
    check_positive_int(chunk_size, name="chunk_size", allow_none=True)
    return input_gradients(model_fn, params, x, as_target(target, x), chunk_size=chunk_size)


def input_x_gradient(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
                     chunk_size: int | None = None) -> torch.Tensor:
    r"""Input × gradient: :math:`x \odot \partial f_c(x) / \partial x`.

    Shrikumar et al., "Not Just a Black Box", 2016. Arguments as :func:`gradient`.

    Example:
        >>> a = fxai.input_x_gradient(model_fn, params, x, target=3)
    """
    grads = gradient(model_fn, params, x, target, chunk_size=chunk_size)
    return _expand_like(x, grads) * grads
