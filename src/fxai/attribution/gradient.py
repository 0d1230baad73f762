"""Vanilla gradient and input × gradient."""

from __future__ import annotations

import torch

from .._core.batching import auto_chunk, expand_like, input_gradients
from .._core.docs import documented
from .._core.structured import accepts_structured
from .._core.checks import check_input
from .._core.targets import TargetLike, as_target


@accepts_structured
@documented(x="input batch ``[B, ...]``, or a tuple or dict of batches (:func:`fxai.fixed` marks leaves that are not attributed; maps come back in the same structure).")
def gradient(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
             chunk_size: int | None = None) -> torch.Tensor:
    r"""Vanilla gradient (saliency): :math:`\partial f_c(x) / \partial x`.

    Simonyan et al., "Deep Inside Convolutional Networks", 2014.

    {args}

    Returns:
        A map shaped like ``x``, or ``[B, K, ...]`` for K targets per input.

    Example:
        >>> g = fxai.gradient(model_fn, params, x, target=3)
    """
    check_input(x)
    chunk_size = auto_chunk(chunk_size, x)
    return input_gradients(model_fn, params, x, as_target(target, x), chunk_size=chunk_size)


@accepts_structured
@documented(x="input batch ``[B, ...]``, or a tuple or dict of batches (:func:`fxai.fixed` marks leaves that are not attributed; maps come back in the same structure).")
def input_x_gradient(model_fn, params, x: torch.Tensor, target: TargetLike = None, *,
                     chunk_size: int | None = None) -> torch.Tensor:
    r"""Input × gradient: :math:`x \odot \partial f_c(x) / \partial x`.

    Shrikumar et al., "Not Just a Black Box", 2016.

    {args}

    Returns:
        A map shaped like ``x``, or ``[B, K, ...]`` for K targets per input.

    Example:
        >>> a = fxai.input_x_gradient(model_fn, params, x, target=3)
    """
    grads = gradient(model_fn, params, x, target, chunk_size=chunk_size)
    return expand_like(x, grads) * grads
