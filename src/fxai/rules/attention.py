r"""Attention made explicit: fused attention calls decomposed into :math:`\mathrm{softmax}(q k^\top s + m)\, v`.

Vision transformers compute attention in one fused call, so the attention probabilities never exist as
tensors. Under :class:`AttentionMode` (a ``TorchFunctionMode``: no hooks, no change to the model) each call of

- ``F.scaled_dot_product_attention`` (timm's ``Attention`` with ``fused_attn``, HuggingFace's ``sdpa`` path,
  any model that calls it), with its ``attn_mask`` (boolean or additive), ``is_causal``, ``scale`` and
  ``enable_gqa``;
- ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, torchvision's ViT, whatever ``need_weights``);
- a softmax over the last axis of a square ``[B, heads, T, T]`` tensor (the unfused spelling: timm with
  ``fused_attn=False``, HuggingFace's ``eager`` path)

is computed explicitly as :math:`A = \mathrm{softmax}(q k^\top s + m)`, :math:`o = A v`, and ``A`` is kept,
in call order, as a tensor that a method can read and differentiate. The result equals the fused call to
float rounding. Dropout is refused in training mode (the probabilities would be random); eval mode passes
``dropout_p = 0``. :func:`decompose` is the decomposition itself, shared with LRP's mode (AttnLRP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SDPA = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
MHA = (F.multi_head_attention_forward,)
SOFTMAX = (F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax)
# calls that may compute attention another way: named in the error when no attention was caught
_SUSPECTS = {torch.matmul: "torch.matmul", torch.Tensor.__matmul__: "@", torch.bmm: "torch.bmm",
             torch.baddbmm: "torch.baddbmm", torch.einsum: "torch.einsum", torch.Tensor.matmul: "Tensor.matmul"}
CAUGHT = ("F.scaled_dot_product_attention", "F.multi_head_attention_forward (nn.MultiheadAttention)",
          "softmax over the last axis of a [B, heads, T, T] tensor")


class NoAttentionError(LookupError, ValueError):
    """The model ran without any attention call that fxai catches (not a transformer, or another spelling)."""


def _bias(mask, dtype, device, *, keep_when_true: bool):
    """An additive float mask from a boolean (``keep_when_true``: True = attend) or additive mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        keep = mask if keep_when_true else ~mask
        return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
    return mask.to(dtype)


def _combine(*biases):
    out = None
    for b in biases:
        if b is not None:
            out = b if out is None else out + b
    return out


def probabilities(q, k, bias=None, scale=None):
    r""":math:`\mathrm{softmax}(q k^\top s + m)` over the last axis, :math:`s = 1/\sqrt{d}` unless given.

    Example:
        >>> probabilities(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)).sum(-1)
        tensor([[[1., 1., 1.],
                 [1., 1., 1.]]])
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        s = s + bias
    return torch.softmax(s, -1)


def _sdpa_operands(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """``(q, k, v, bias, scale)`` of an ``F.scaled_dot_product_attention`` call."""
    if dropout_p:
        raise ValueError(f"attention: scaled_dot_product_attention called with dropout_p={dropout_p} (a model in "
                         "training mode?); the probabilities would be random: put the model in eval mode")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    length, source = query.shape[-2], key.shape[-2]
    bias = _bias(attn_mask, query.dtype, query.device, keep_when_true=True)
    if is_causal:
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        bias = _combine(bias, _bias(causal, query.dtype, query.device, keep_when_true=True))
    return query, key, value, bias, (1 / math.sqrt(query.shape[-1]) if scale is None else scale)


def _mha(attend, linear, query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k,
         bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
         need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
         v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True, is_causal=False):
    """``F.multi_head_attention_forward`` with the attention by ``attend`` and the projections by ``linear``."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise ValueError("attention: nn.MultiheadAttention with add_bias_kv, add_zero_attn or static keys is not "
                         "decomposed; use a model without them")
    if training and dropout_p:
        raise ValueError(f"attention: nn.MultiheadAttention in training mode with dropout={dropout_p}; the "
                         "probabilities would be random: put the model in eval mode")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    length, batch, dim = query.shape
    source, heads = key.shape[0], num_heads
    head_dim = dim // heads
    same = query is key and key is value
    # contiguous inputs: F.linear on a transposed [T, B, E] runs as a batched matmul, several times slower
    query, key, value = (query.contiguous(),) * 3 if same else (t.contiguous() for t in (query, key, value))
    if not use_separate_proj_weight:
        if same:
            q, k, v = linear(query, in_proj_weight, in_proj_bias).chunk(3, -1)
        else:
            w = in_proj_weight.chunk(3)
            b = (None,) * 3 if in_proj_bias is None else in_proj_bias.chunk(3)
            q, k, v = (linear(t, wi, bi) for t, wi, bi in zip((query, key, value), w, b))
    else:
        b = (None,) * 3 if in_proj_bias is None else in_proj_bias.chunk(3)
        q, k, v = (linear(t, wi, bi) for t, wi, bi in zip((query, key, value), (q_proj_weight, k_proj_weight,
                                                                                 v_proj_weight), b))

    def heads_first(t, n):  # [n, B, E] -> [B, heads, n, d]
        return t.reshape(n, batch * heads, head_dim).transpose(0, 1).reshape(batch, heads, n, head_dim)

    dtype, device = query.dtype, query.device
    if attn_mask is not None:
        attn_mask = attn_mask.reshape(batch, heads, length, source) if attn_mask.dim() == 3 else attn_mask
    elif is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=device).tril().logical_not()
    padding = None if key_padding_mask is None else key_padding_mask.reshape(batch, 1, 1, source)
    bias = _combine(_bias(attn_mask, dtype, device, keep_when_true=False),
                    _bias(padding, dtype, device, keep_when_true=False))
    q, k, v = heads_first(q, length), heads_first(k, source), heads_first(v, source)
    out, probs = attend(q, k, v, bias, 1 / math.sqrt(head_dim))
    out = linear(out.permute(2, 0, 1, 3).reshape(length, batch, dim), out_proj_weight, out_proj_bias)
    weights = None
    if need_weights:
        probs = probabilities(q, k, bias, 1 / math.sqrt(head_dim)).detach() if probs is None else probs
        weights = probs.mean(1) if average_attn_weights else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out), weights


def is_attention_softmax(args, kwargs) -> bool:
    """Whether a softmax call normalises the last axis of a square ``[B, heads, T, T]`` tensor."""
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[-1] == x.shape[-2] and dim is not None
            and dim % 4 == 3)


def decompose(func, args, kwargs, *, attend, linear=F.linear):
    """The result of an attention call ``func(*args, **kwargs)`` with its attention computed by
    ``attend(q, k, v, bias, scale) -> (out, probs or None)`` and its projections by ``linear``; ``NotImplemented`` when
    ``func`` is not a fused attention spelling (:data:`SDPA`, :data:`MHA`)."""
    if func in SDPA:
        out, _ = attend(*_sdpa_operands(*args, **kwargs))
        return out
    if func in MHA:
        return _mha(attend, linear, *args, **kwargs)
    return NotImplemented


def explicit(q, k, v, bias=None, scale=None):
    """``(A v, A)`` with ``A`` = :func:`probabilities`."""
    probs = probabilities(q, k, bias, scale)
    return torch.matmul(probs, v), probs


class AttentionMode(TorchFunctionMode):
    """Within the block, attention calls are computed explicitly and their probabilities kept in :attr:`probs`
    (call order, ``[B, heads, T, T]``). ``deltas``: tensors added to the probabilities of the calls in order
    (zeros whose gradient is the gradient w.r.t. the probabilities, under ``torch.func``).

    Example:
        >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> t = torch.randn(1, 5, 8)
        >>> with AttentionMode() as mode:
        ...     out, _ = mha(t, t, t, need_weights=False)
        >>> mode.probs[0].shape
        torch.Size([1, 2, 5, 5])
    """

    def __init__(self, deltas=None):
        super().__init__()
        self.probs, self.deltas, self.suspects = [], deltas, set()

    def _keep(self, probs):
        if self.deltas is not None:
            i = len(self.probs)
            if i >= len(self.deltas) or self.deltas[i].shape != probs.shape:
                raise ValueError("attention: the model's attention calls changed between two forwards of the same "
                                 "input (control flow on values?)")
            probs = probs + self.deltas[i]
        self.probs.append(probs)
        return probs

    def _attend(self, q, k, v, bias, scale):
        probs = self._keep(probabilities(q, k, bias, scale))
        return torch.matmul(probs, v), probs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = decompose(func, args, kwargs, attend=self._attend)
        if out is not NotImplemented:
            return out
        if func in SOFTMAX and is_attention_softmax(args, kwargs):
            return self._keep(func(*args, **kwargs))
        if func in _SUSPECTS:
            self.suspects.add(_SUSPECTS[func])
        return func(*args, **kwargs)


def no_attention(model_fn, suspects=()) -> NoAttentionError:
    """The error for a forward in which no attention call was caught: what the model has that looks like
    attention, and the spellings fxai catches."""
    module = getattr(model_fn, "module", None)
    found = [f"{n} ({type(m).__name__})" for n, m in (module.named_modules() if module is not None else ())
             if "attention" in type(m).__name__.lower() or "attn" in type(m).__name__.lower()]
    what = type(module).__name__ if module is not None else "the model"
    parts = [f"no attention call was caught in {what}'s forward"]
    if found:
        parts.append(f"its attention modules: {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}")
    if suspects:
        parts.append(f"it calls {', '.join(sorted(suspects))}, which fxai does not read as attention")
    parts.append(f"caught spellings: {'; '.join(CAUGHT)}. These methods need a vision transformer")
    return NoAttentionError("; ".join(parts))
