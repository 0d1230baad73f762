"""Backward rules for ReLU (guided backprop, deconvnet), applied without hooks.

A rule keeps the forward ``max(x, 0)`` and replaces its backward. It is an
``autograd.Function`` (split ``forward``/``setup_context`` form with
``generate_vmap_rule``, so it composes with ``torch.func``) swapped in for every
ReLU spelling by the op-interception mode of :mod:`fxai.rules.engine`, active
only during the call:
``nn.ReLU`` (in-place too), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and
their in-place forms, and ``torch.ops.aten.relu`` for exported graphs.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .engine import Intercept
from .ops import RELU


class _Rule(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)


class GuidedReLU(_Rule):
    """ReLU whose backward passes only positive gradients where the input was positive (Springenberg et al., 2015)."""

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class DeconvReLU(_Rule):
    """ReLU whose backward applies ReLU to the gradient, ignoring the input (Zeiler & Fergus, 2014)."""

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


RULES = {"guided": GuidedReLU, "deconvnet": DeconvReLU}


def _apply(rule):
    return lambda op, operands, options: rule.apply(operands[0])


@contextlib.contextmanager
def relu_rule(rule: str | type[torch.autograd.Function]):
    """Within the block, every ReLU uses the backward ``rule`` (``"guided"``, ``"deconvnet"`` or a Function)."""
    rule = RULES[rule] if isinstance(rule, str) else rule
    with Intercept({RELU: _apply(rule)}):
        yield


def with_relu_rule(method, rule: str | type[torch.autograd.Function]):
    """The attribution ``method`` computed with every ReLU's backward replaced by ``rule``.

    ``fxai.guided_backprop`` is ``with_relu_rule(fxai.gradient, "guided")``.
    """
    @functools.wraps(method)
    def ruled(*args, **kwargs):
        with relu_rule(rule):
            return method(*args, **kwargs)

    return ruled
