r"""DeepLIFT's multipliers for ops that mix several inputs: max-pooling, products, softmax.

Same conventions as :mod:`fxai.rules.multipliers` (the elementwise rules): each rule is an ``autograd.Function``
whose forward is the op and whose backward passes multipliers that sum to the output's difference from
its reference, reading only the *true* copy of its inputs.
"""

from __future__ import annotations

import torch

from . import ops as O


def safe_divisor(delta, small):
    """``delta`` with 1 where it is too small to divide by (those places take the derivative instead)."""
    return torch.where(small, torch.ones_like(delta), delta)


def _flat(t):
    return t.flatten(-2)


class MaxPool(torch.autograd.Function):
    r"""Max-pooling: :math:`\Delta y` split as :math:`(\max(y, y') - y') + (y - \max(y, y'))`, the first part
    routed to the input's argmax, the second to the reference's, summed over overlapping windows."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, z_true, ref, options, eps):
        return O.max_pool2d(z, **{**options, "return_indices": False})

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, z_true, ref, ctx.options, ctx.eps = inputs
        ctx.save_for_backward(z_true, ref)

    @staticmethod
    def backward(ctx, grad):
        z, ref = ctx.saved_tensors
        opts = {**ctx.options, "return_indices": True}
        y, at = O.max_pool2d(z, **opts)
        y_ref, at_ref = O.max_pool2d(ref, **opts)
        top = torch.maximum(y, y_ref)
        zero = torch.zeros_like(_flat(z))
        routed = (zero.scatter_add(-1, _flat(at), _flat(grad * (top - y_ref)))
                  .scatter_add(-1, _flat(at_ref).expand_as(_flat(at)), _flat(grad * (y - top))))
        plain = zero.scatter_add(-1, _flat(at), _flat(grad))
        delta = _flat(z - ref)
        small = delta.abs() < ctx.eps
        return torch.where(small, plain, routed / safe_divisor(delta, small)).view_as(z), None, None, None, None


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


class QuietMaxPool(torch.autograd.Function):
    r""":class:`MaxPool` for first-order use: indices, routing weights and :math:`1/\Delta` computed in the forward
    (no input saved), the backward three native max-pool backwards (which sum over overlapping windows).
    Not differentiable twice, not for ``torch.func``."""

    @staticmethod
    def forward(ctx, z, ref, options, eps):
        opts = {**options, "return_indices": True}
        y, at = O.max_pool2d(z, **opts)
        y_ref, at_ref = O.max_pool2d(ref, **opts)
        top = torch.maximum(y, y_ref)
        delta = z - ref
        small = None
        if delta.numel() and bool(delta.abs().amin() < eps):  # units the input does not move: the gradient
            small = delta.abs() < eps
            inv = delta.masked_fill_(small, 1.0).reciprocal_().masked_fill_(small, 0.0)
            small = small.to(z.dtype)
        else:
            inv = delta.reciprocal_()
        ctx.pool = [_pair(options[k]) for k in ("kernel_size", "stride", "padding", "dilation")] + \
            [options["ceil_mode"]]
        ctx.small = small is not None
        ctx.save_for_backward(at, at_ref.expand_as(at).contiguous(), top - y_ref, y - top, inv,
                              *(() if small is None else (small,)))
        return y

    @staticmethod
    def backward(ctx, grad):
        at, at_ref, up, down, inv, *small = ctx.saved_tensors

        def unpool(g, index):
            return torch.ops.aten.max_pool2d_with_indices_backward(g, inv, *ctx.pool, index)

        out = (unpool(grad * up, at) + unpool(grad * down, at_ref)).mul_(inv)
        if ctx.small:
            out += unpool(grad, at).mul_(small[0])
        return out, None, None, None


class Product(torch.autograd.Function):
    r"""An elementwise product :math:`y = ab`: :math:`m_a = (b + b')/2`, :math:`m_b = (a + a')/2` (exact:
    :math:`\Delta(ab) = \tfrac{b + b'}2\Delta a + \tfrac{a + a'}2\Delta b`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b, a_true, b_true, ref_a, ref_b):
        return a * b

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, grad):
        a, b, ref_a, ref_b = ctx.saved_tensors
        ga = (grad * (b + ref_b) / 2).sum_to_size(a.shape)
        gb = (grad * (a + ref_a) / 2).sum_to_size(b.shape)
        return ga, gb, None, None, None, None


class Softmax(torch.autograd.Function):
    r"""(Log-)softmax over ``dim``: the smallest multiplier with summation to delta that ignores shifts.

    With :math:`\tilde\Delta = \Delta z - \operatorname{mean}(\Delta z)` (softmax is blind to adding a constant
    to every input), :math:`m = \big(\sum_i g_i \Delta y_i\big)\,\tilde\Delta / \lVert\tilde\Delta\rVert^2`, so
    :math:`\sum_j m_j \Delta z_j = \sum_i g_i \Delta y_i`; for one input this is the Rescale rule. The
    gradient where :math:`\lVert\tilde\Delta\rVert < \epsilon`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, z_true, ref, log, dim, eps):
        return torch.log_softmax(z, dim) if log else torch.softmax(z, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, z_true, ref, ctx.log, ctx.dim, ctx.eps = inputs
        ctx.save_for_backward(z_true, ref)

    @staticmethod
    def backward(ctx, grad):
        z, ref = ctx.saved_tensors
        dim, f = ctx.dim, (torch.log_softmax if ctx.log else torch.softmax)
        y = f(z, dim)
        shift = (z - ref) - (z - ref).mean(dim, keepdim=True)
        norm2 = shift.square().sum(dim, keepdim=True)
        change = (grad * (y - f(ref, dim))).sum(dim, keepdim=True)
        p = torch.softmax(z, dim)
        plain = grad - p * grad.sum(dim, keepdim=True) if ctx.log else p * (grad - (grad * p).sum(dim, keepdim=True))
        small = norm2.sqrt() < ctx.eps
        return torch.where(small, plain, change * shift / safe_divisor(norm2, small)), None, None, None, None, None
