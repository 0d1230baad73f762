"""Guided backprop and DeconvNet: the gradient under a modified ReLU backward rule."""

from __future__ import annotations

from .._core.rules import with_relu_rule
from .gradient import gradient

guided_backprop = with_relu_rule(gradient, "guided")
guided_backprop.__name__ = guided_backprop.__qualname__ = "guided_backprop"
guided_backprop.__doc__ = r"""Guided backpropagation: the gradient where every ReLU passes back
:math:`\mathbb{1}[x > 0] \cdot \max(g, 0)`.

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", 2015.
Every ReLU spelling is caught (``nn.ReLU`` including in-place, ``F.relu``,
``torch.relu``, ``Tensor.relu``), with no hooks. Arguments and shape as
:func:`fxai.gradient`.

Example:
    >>> m = fxai.guided_backprop(model_fn, params, x, target=3)
"""

deconvnet = with_relu_rule(gradient, "deconvnet")
deconvnet.__name__ = deconvnet.__qualname__ = "deconvnet"
deconvnet.__doc__ = r"""DeconvNet: the gradient where every ReLU passes back :math:`\max(g, 0)`,
whatever its input.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014.
Arguments and shape as :func:`fxai.gradient`.

Example:
    >>> m = fxai.deconvnet(model_fn, params, x, target=3)
"""
