r"""The arithmetic LRP's rules share: the stabiliser, positive and negative parts, a layer's pullback, and
the share of relevance each input gets, :math:`R_i = \sum_k \sigma_k x_{k,i} (\partial z_k/\partial x_k)^\top
R / \mathrm{stab}(z)` (Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019).
"""

from __future__ import annotations

import torch


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    r""":math:`z + \varepsilon\,(\mathrm{sign}(z) + [z = 0])`: pushed away from zero, keeping the sign.

    Computed as ``copysign(ε, z + 0) + (z + 0)`` (adding 0 turns -0 into +0): no boolean mask, and in place
    on a fresh copy where no graph is recorded (see :func:`in_place`)."""
    e = torch.tensor(eps, dtype=z.dtype, device=z.device)
    if not in_place():
        z = z + 0.0
        return z + torch.copysign(e, z)
    z = z + 0.0
    return z.add_(torch.copysign(e, z))


def in_place() -> bool:
    """Whether a rule's backward may write into its fresh intermediates: first order (no graph recorded),
    outside ``torch.func`` transforms and ``torch.compile``; saves allocations of activation-sized tensors."""
    return not torch.is_grad_enabled() and eager_only()


def positive_part(t):
    """``t⁺`` (``None`` stays ``None``)."""
    return None if t is None else t.clamp(min=0)


def negative_part(t):
    """``t⁻`` (``None`` stays ``None``)."""
    return None if t is None else t.clamp(max=0)


def eager_only() -> bool:
    """Whether data-dependent shortcuts are allowed: outside ``torch.func`` transforms and ``torch.compile``."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None


def split_signs(x):
    """``(x⁺, x⁻)``; for an input known to be non-negative (after a ReLU), ``(x, None)``: one conv saved."""
    if eager_only() and not bool(x.amin() < 0):
        return x, None
    return x.clamp(min=0), x.clamp(max=0)


def signed(sign, t):
    """``t`` or ``-t`` for ``sign`` 1 or -1."""
    return t if sign == 1 else -t


def total(terms):
    """The sum of ``terms`` (tensors), left to right."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def pullback(op, x, w, b):
    """``(z, vjp)`` of ``x -> op(x, w, b)``: the modified forward and its transpose."""
    # a view: a primal saved from an outer torch.func level trips functorch's level check inside vjp
    return torch.func.vjp(lambda x: op(x, w, b), x.view_as(x))


def share(op, parts, relevance, eps, mask=None):
    r"""Relevance of the inputs of :math:`z' = \sum_k \sigma_k op(x_k, W_k, b_k)`: :math:`\sum_k \sigma_k x_k \odot
    \partial op/\partial x_k^\top s`.

    ``parts`` lists ``(x_k, W_k, b_k, sigma_k)`` (parts with ``x_k`` None are zero and left out);
    ``s = R / stab(z')`` (times ``mask``).
    """
    parts = [p for p in parts if p[0] is not None]
    zs, pulls = zip(*(pullback(op, x, w, b) for x, w, b, _ in parts))
    stab = stabilize(total([signed(p[3], z) for p, z in zip(parts, zs)]), eps)
    if not in_place():
        s = relevance / stab
        if mask is not None:
            s = s * mask
        return total([signed(p[3], p[0] * pull(s)[0]) for p, pull in zip(parts, pulls)])
    s = relevance / stab  # (not into stab: autograd's is_grads_batched may batch the relevance)
    if mask is not None:
        s.mul_(mask)
    return total([signed(p[3], pull(s)[0].mul_(p[0])) for p, pull in zip(parts, pulls)])
