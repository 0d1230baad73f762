"""Python-side steps that ``torch.compile`` must run eagerly, without importing ``torch._dynamo`` up front.

``torch.compiler.disable`` imports ``torch._dynamo`` (about a second) when it decorates; :func:`eager` applies
it at the first call made once ``torch._dynamo`` is loaded, which only ``torch.compile`` does, so that
``import fxai`` stays light and compiled code still runs the step eagerly.

    >>> from fxai._core.eager import eager
    >>> @eager
    ... def layer_names(module):
    ...     return [name for name, _ in module.named_modules()]
"""

from __future__ import annotations

import functools
import sys

import torch


def eager(fn):
    """``fn``, run eagerly (outside the graph) inside ``torch.compile``; a plain call otherwise."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return _disabled(fn)(*args, **kwargs)
        return fn(*args, **kwargs)
    return call


@functools.cache
def _disabled(fn):
    return torch.compiler.disable(fn)
