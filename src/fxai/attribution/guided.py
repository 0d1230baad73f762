"""Guided backprop and DeconvNet: the gradient under a modified ReLU backward rule."""

from __future__ import annotations

from .._core.docs import documented
from ..rules.relu import with_relu_rule
from .gradient import gradient


def _gradient_under(rule: str, name: str, doc: str):
    """``fxai.gradient`` with every ReLU's backward replaced by ``rule``, named and documented."""
    method = with_relu_rule(gradient, rule)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return documented(method, x="input batch ``[B, ...]``, or a tuple or dict of batches (:func:`fxai.fixed` marks leaves that are not attributed; maps come back in the same structure).")


guided_backprop = _gradient_under("guided", "guided_backprop", r"""
Guided backpropagation: the gradient where every ReLU passes back
:math:`\mathbb{1}[x > 0] \cdot \max(g, 0)`.

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", 2015.
Every ReLU spelling is caught (``nn.ReLU`` including in-place, ``F.relu``,
``torch.relu``, ``Tensor.relu``), with no hooks.

{args}

Returns:
    A map shaped like ``x``, or ``[B, K, ...]`` for K targets per input.

Example:
    >>> m = fxai.guided_backprop(model_fn, params, x, target=3)
""")

deconvnet = _gradient_under("deconvnet", "deconvnet", r"""
DeconvNet: the gradient where every ReLU passes back :math:`\max(g, 0)`,
whatever its input.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014.

{args}

Returns:
    A map shaped like ``x``, or ``[B, K, ...]`` for K targets per input.

Example:
    >>> m = fxai.deconvnet(model_fn, params, x, target=3)
""")
