"""AttnLRP's rules for the ops transformers add, as autograd functions that
:class:`fxai.rules.lrp_mode.RelevanceMode` applies: attention (uniform and softmax rules, or CP-LRP) and
normalisations with their scale held constant (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise
Relevance Propagation for Transformers", ICML 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import explicit, probabilities
from .lrp_terms import stabilize


class AttentionRelevance(torch.autograd.Function):
    r"""``softmax(q kᵀ s + m) v`` carrying AttnLRP's relevance: with :math:`g = R / o`, :math:`R_v = \tfrac12 v
    \odot A^\top g`, :math:`R_A = \tfrac12 A \odot g v^\top` (uniform rule), :math:`R_S = S \odot (R_A - A
    \sum_j R_A)` (softmax rule), :math:`R_q, R_k` half each of :math:`R_S` (uniform rule); CP-LRP: :math:`R_v =
    v \odot A^\top g`, nothing to ``q, k``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, q_true, k_true, v_true, bias, scale, cp, eps, probs):
        return explicit(q, k, v, bias, scale)[0] if probs is None else probs @ v

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, q, k, v, ctx.bias, ctx.scale, ctx.cp, ctx.eps, probs = inputs
        ctx.save_for_backward(q, k, v)
        # first order: the forward's probabilities (computed without a graph) and a detached alias of its output
        ctx.probs, ctx.z = probs, (None if probs is None else output.detach())
        ctx.version = None if ctx.z is None else ctx.z._version

    @staticmethod
    def backward(ctx, relevance):
        q, k, v = ctx.saved_tensors
        if ctx.probs is not None and ctx.z._version == ctx.version:
            probs, z = ctx.probs, ctx.z
        else:
            probs = probabilities(q, k, ctx.bias, ctx.scale)
            z = probs @ v
        g = relevance / stabilize(z, ctx.eps)
        gv = probs.transpose(-1, -2) @ g
        none = (None,) * 8
        if ctx.cp:
            return None, None, v * gv, *none
        ga = 0.5 * (g @ v.transpose(-1, -2))
        gs = (0.5 * ctx.scale) * probs * (ga - (probs * ga).sum(-1, keepdim=True))
        return q * (gs @ k), k * (gs.transpose(-1, -2) @ q), 0.5 * v * gv, *none


class FrozenScale(torch.autograd.Function):
    """``fn(x)`` for a normalisation: relevance by LRP-ε of the linear map ``frozen(x)`` (its scale held at the
    value it has at ``x``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, x_true, fn, frozen, eps):
        return fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, _, ctx.frozen, ctx.eps = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        z, transpose = ctx.frozen(x)
        return x * transpose(relevance / stabilize(z, ctx.eps)), None, None, None, None


def norm_parts(func, args, kwargs):
    """``(x, frozen)`` of a ``F.layer_norm``/``F.rms_norm`` call: ``frozen(x0) -> (z, transpose)`` gives the norm's
    output at ``x0`` and the transpose of its Jacobian there, the normalising scale held constant:
    :math:`J^\\top g = (g w - \\overline{g w}) / \\sigma` (LayerNorm), :math:`g w / \\sigma` (RMSNorm)."""
    names = ("input", "normalized_shape", "weight", "bias", "eps") if func is F.layer_norm else \
        ("input", "normalized_shape", "weight", "eps")
    a = {**dict(zip(names, args)), **kwargs}
    x, dims = a["input"], tuple(range(-len(a["normalized_shape"]), 0))
    weight, bias, eps = a.get("weight"), a.get("bias"), a.get("eps")
    layer = func is F.layer_norm

    def frozen(x0):
        if layer:
            centred = x0 - x0.mean(dims, keepdim=True)
            scale = (centred.square().mean(dims, keepdim=True) + (1e-5 if eps is None else eps)).sqrt()
        else:
            centred = x0
            e = torch.finfo(x0.dtype).eps if eps is None else eps
            scale = (x0.square().mean(dims, keepdim=True) + e).sqrt()
        z = centred / scale
        z = z if weight is None else z * weight
        z = z if bias is None else z + bias

        def transpose(g):
            g = g if weight is None else g * weight
            return (g - g.mean(dims, keepdim=True) if layer else g) / scale
        return z, transpose

    return x, frozen
