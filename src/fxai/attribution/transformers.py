r"""Vision transformers explained through their attention: attention rollout, gradient-weighted attention
(Chefer et al.) and AttnLRP, on any ViT as the user has it (torchvision, timm, HuggingFace).

The attention probabilities ``[B, heads, T, T]`` of every layer are made tensors by
:class:`fxai.rules.attention.AttentionMode` (fused attention computed explicitly, equal to float rounding),
and their gradients by autograd, or through zero ``deltas`` added to them under ``torch.func``. A token
relevance row ``[B, T]`` is read onto the patch grid by :func:`fxai.to_grid` (class, distillation and register
tokens dropped) and upsampled to the input like a CAM: maps are ``[B, H, W]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._core.batching import (auto_chunk, backward, detached, needs_graph, plain_autograd, row_chunks,
                              score_gradients)
from .._core.checks import check_choice, check_input
from .._core.docs import documented
from .._core.grids import to_grid
from .._core.targets import as_target, check_logits
from ..rules.attention import AttentionMode, no_attention
from ..rules.lrp import attnlrp as attnlrp_composite
from .cam_driver import MODES, resize
from .lrp import lrp

FUSIONS = ("mean", "max", "min")
TOKENS = ("auto", "class", "mean")

_DESCRIBED = dict(
    token="which token's relevance row is read: ``\"auto\"`` (the class token where the model has one, else the "
          "mean over the tokens), ``\"class\"`` or ``\"mean\"``.",
    start_layer="the first attention layer taken into account (``0``: all).",
    upsample="``True`` (bilinear to ``x``'s size), ``False`` (the patch grid), or ``\"nearest\"``/``\"bicubic\"``.",
)


def _checked(probs, rows: int, model_fn, suspects):
    if not probs:
        raise no_attention(model_fn, suspects)
    shapes = {tuple(p.shape) for p in probs}
    if any(p.shape[0] != rows for p in probs) or len({s[-1] for s in shapes}) > 1:
        raise ValueError(f"the model's attention is windowed or changes its token count ({len(probs)} attention "
                         f"calls of shapes {sorted(shapes)[:3]} for {rows} inputs; Swin?): rollout and gradient-"
                         "weighted attention need global attention over all tokens in every layer. Use attnlrp, "
                         "grad_cam with reshape=, or another method")
    return probs


def _probe(model_fn, params, rows):
    """Shapes of the attention probabilities for ``rows`` (a forward of one row without gradients)."""
    with torch.no_grad(), AttentionMode() as mode:
        model_fn(params, rows[:1].detach().clone())
    _checked(mode.probs, 1, model_fn, mode.suspects)
    return [(rows.shape[0], *p.shape[1:]) for p in mode.probs]


def attention(model_fn, params, rows, tgt, a: int, *, grads: bool):
    """Attention probabilities of each layer ``[N, h, T, T]`` for ``rows`` (the target validated), and with
    ``grads`` the gradients of the target scores w.r.t. them (``[N, h, T, T]``, ``[N, K, h, T, T]`` for K
    targets): ``(probs, grads or None)``. Differentiable w.r.t. ``params`` and ``rows``."""
    if not grads:
        with AttentionMode() as mode:
            logits = model_fn(params, rows.clone())
        check_logits(logits, rows)
        tgt.scores(logits, a)
        return _checked(mode.probs, rows.shape[0], model_fn, mode.suspects), None
    if plain_autograd() and not tgt.multi:  # autograd reaches the probabilities themselves
        keep = needs_graph(params, rows)
        with torch.enable_grad():
            leaf = rows if rows.requires_grad else rows.detach().requires_grad_()
            with AttentionMode() as mode:
                logits = model_fn(params, leaf.clone())
            check_logits(logits, rows)
            probs = _checked(mode.probs, rows.shape[0], model_fn, mode.suspects)
            gs = backward(tgt.scores(logits, a), probs, keep=keep)
        return (probs, list(gs)) if keep else detached((probs, list(gs)))
    deltas = tuple(torch.zeros(s, dtype=rows.dtype, device=rows.device) for s in _probe(model_fn, params, rows))

    def score(*deltas):
        with AttentionMode(deltas) as mode:
            logits = model_fn(params, rows.clone())
        check_logits(logits, rows)
        s = tgt.scores(logits, a)
        return s, _checked(mode.probs, rows.shape[0], model_fn, mode.suspects)

    gs, _, probs = score_gradients(score, deltas, also=(params, rows), multi=tgt.multi)
    return probs, list(gs)


def read_tokens(relevance: torch.Tensor, size, token: str) -> torch.Tensor:
    """Token relevance ``[..., T, T]`` read as a patch map ``[..., h, w]``: the class token's row (its own
    column and the other leading tokens dropped, :func:`fxai.to_grid`) or the mean of the patch tokens' rows.

    Example:
        >>> read_tokens(torch.eye(17).expand(2, 17, 17), (16, 16), "mean").shape
        torch.Size([2, 4, 4])
    """
    tokens = relevance.shape[-1]
    _, _, h, w = to_grid(relevance.new_zeros(1, tokens, 1), size=size).shape
    prefix = tokens - h * w
    if token == "class" and prefix == 0:
        raise ValueError("token='class': the model has no class token (its tokens are all patches); use "
                         "token='mean' or 'auto'")
    row = relevance[..., 0, :] if prefix and token != "mean" else relevance[..., prefix:, :].mean(-2)
    lead = row.shape[:-1]
    grid = to_grid(row.reshape(-1, tokens, 1), size=size)
    return grid.reshape(*lead, h, w)


def _check(x, upsample, token, chunk_size):
    check_input(x, exact_ndim=4)
    if not isinstance(upsample, bool):
        check_choice(upsample, MODES, name="upsample")
    check_choice(token, TOKENS, name="token")
    return auto_chunk(chunk_size, x)


def _check_start(start_layer, layers: int):
    if not isinstance(start_layer, int) or not 0 <= start_layer < layers:
        raise ValueError(f"start_layer must be an int in [0, {layers}) (the model has {layers} attention layers), "
                         f"got {start_layer!r}")


def _discard(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """``a [N, T, T]`` with the lowest ``ratio`` of each example's entries set to 0 (the class token's
    attention to itself kept), as in Abnar & Zuidema's released code."""
    flat = a.flatten(-2)
    n = int(flat.shape[-1] * ratio)
    if n == 0:
        return a
    low = flat.topk(n, -1, largest=False).indices
    keep = torch.ones_like(flat).scatter(-1, low, 0.0)
    keep = keep.index_fill(-1, torch.tensor([0], device=a.device), 1.0)
    return (flat * keep).view_as(a)


def rollout_relevance(probs, *, head_fusion: str = "mean", start_layer: int = 0, discard_ratio: float = 0.0):
    r"""Token-to-token rollout :math:`R = \hat a_L \cdots \hat a_s` of per-layer probabilities ``[N, h, T, T]``,
    :math:`\hat a = \mathrm{rownorm}(\mathrm{fuse}_h(A) + I)`: ``[N, T, T]``.

    Example:
        >>> rollout_relevance([torch.full((1, 2, 3, 3), 1 / 3)]).sum(-1)
        tensor([[1., 1., 1.]])
    """
    out = None
    for probs_l in probs[start_layer:]:
        a = {"mean": lambda t: t.mean(1), "max": lambda t: t.amax(1), "min": lambda t: t.amin(1)}[head_fusion](probs_l)
        if discard_ratio:
            a = _discard(a, discard_ratio)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


@documented(head_fusion="how the heads of a layer are fused: ``\"mean\"`` (the paper), ``\"max\"`` or ``\"min\"``.",
            discard_ratio="fraction of each layer's lowest fused attentions set to 0 before the identity is added "
                          "(0 keeps all).", **_DESCRIBED)
def attention_rollout(model_fn, params, x: torch.Tensor, target=None, *, head_fusion: str = "mean",
                      start_layer: int = 0, discard_ratio: float = 0.0, token: str = "auto", upsample=True,
                      chunk_size: int | None = None):
    r"""Attention rollout: how much each patch flows into the class token through all attention layers.

    Per layer the heads are fused, the residual connection added as the identity and rows renormalised,
    :math:`\hat a_l = \mathrm{rownorm}(\mathrm{fuse}_h(A_l) + I)`, and the layers are multiplied,
    :math:`R = \hat a_L \cdots \hat a_{s}`; the map is the class token's row of :math:`R` on the patch grid.
    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    **Target-independent by construction**: the map is the same for every class (a ``target`` is only
    validated, and a ``[B, K]`` target repeats the map K times). One forward pass, no backward.

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; the patch grid with ``upsample=False``).

    Example:
        >>> amap = fxai.attention_rollout(vit_fn, vit_params, x, head_fusion="max", discard_ratio=0.5)
        >>> amap.shape
        torch.Size([2, 32, 32])
    """
    chunk_size = _check(x, upsample, token, chunk_size)
    check_choice(head_fusion, FUSIONS, name="head_fusion")
    if not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])
    maps = []
    for a, b in row_chunks(x.shape[0], chunk_size, tgt.group):
        probs, _ = attention(model_fn, params, x[a:b], tgt, a, grads=False)
        _check_start(start_layer, len(probs))
        rel = rollout_relevance(probs, head_fusion=head_fusion, start_layer=start_layer, discard_ratio=discard_ratio)
        maps.append(resize(read_tokens(rel, size, token), size, upsample))
    out = torch.cat(maps) if len(maps) > 1 else maps[0]
    if tgt.multi:
        return out.unsqueeze(1).expand(-1, tgt.index.shape[1], -1, -1)
    return out


def chefer_relevance(probs, grads, *, start_layer: int = 0):
    r""":math:`R = I`, then per layer :math:`R \leftarrow R + \bar E R` with
    :math:`\bar E = \mathrm{mean}_h((\nabla A \odot A)^+)`: ``[N, (K,) T, T]`` from probabilities
    ``[N, h, T, T]`` and gradients ``[N, (K,) h, T, T]``.

    Example:
        >>> a = torch.full((1, 2, 3, 3), 1 / 3)
        >>> chefer_relevance([a], [torch.ones_like(a)])[0, 0]
        tensor([1.3333, 0.3333, 0.3333])
    """
    out = None
    for a, g in list(zip(probs, grads))[start_layer:]:
        a = a if g.ndim == a.ndim else a.unsqueeze(1)
        e = (g * a).clamp(min=0).mean(-3)
        if out is None:
            out = torch.eye(e.shape[-1], dtype=e.dtype, device=e.device).expand_as(e)
        out = out + e @ out
    return out


@documented(**_DESCRIBED)
def chefer(model_fn, params, x: torch.Tensor, target=None, *, start_layer: int = 0, token: str = "auto",
           upsample=True, chunk_size: int | None = None):
    r"""Gradient-weighted attention ("generic attention-model explainability"): attention weighted by its
    gradient for the target, propagated through the layers.

    With :math:`R = I` and per layer :math:`\bar E_l = \mathrm{mean}_h((\partial y_c/\partial A_l \odot A_l)^+)`,
    :math:`R \leftarrow R + \bar E_l R`; the map is the class token's row of :math:`R` on the patch grid.
    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", ICCV 2021. Class-specific through the target; one forward and one backward pass.

    {args}

    Returns:
        ``[B, H, W]`` (``[B, K, H, W]`` for K targets; the patch grid with ``upsample=False``).

    Example:
        >>> amap = fxai.chefer(vit_fn, vit_params, x, target=3)
        >>> amap.shape
        torch.Size([2, 32, 32])
    """
    chunk_size = _check(x, upsample, token, chunk_size)
    tgt = as_target(target, x)
    size = tuple(x.shape[-2:])
    maps = []
    for a, b in row_chunks(x.shape[0], chunk_size, tgt.group):
        probs, grads = attention(model_fn, params, x[a:b], tgt, a, grads=True)
        _check_start(start_layer, len(probs))
        rel = chefer_relevance(probs, grads, start_layer=start_layer)
        maps.append(resize(read_tokens(rel, size, token), size, upsample))
    return torch.cat(maps) if len(maps) > 1 else maps[0]


@documented(variant="``\"uniform\"`` (AttnLRP: uniform and softmax rules inside attention) or ``\"cp\"`` (CP-LRP: "
                    "relevance through the values only, LXT's default for torchvision's ViT).",
            gamma="``None`` (LRP-0 on every linear layer, as LXT), a number (γ-rule on every linear layer) or a "
                  "mapping ``{layer name: γ}`` (e.g. the MLPs of the later blocks, as LXT recommends for ViTs).",
            return_scores="also return the target scores :math:`f_c(x)` the relevance started from.")
def attnlrp(model_fn, params, x: torch.Tensor, target=None, *, variant: str = "uniform", gamma=None,
            chunk_size: int | None = None, return_scores: bool = False):
    r"""AttnLRP: LRP with rules for the operations transformers add, on any ViT as it is.

    :func:`fxai.lrp` with the composite :func:`fxai.lrp_rules.attnlrp`: inside attention
    :math:`o = A v`, :math:`A = \mathrm{softmax}(S)`, :math:`S = q k^\top s`, the uniform rule gives half of
    each product's relevance to each operand, and the softmax rule :math:`R_S = S \odot (R_A - A \sum_j R_{A,j})`
    (``variant="cp"``: :math:`A` held constant, all relevance to :math:`v`); LayerNorm with its scale held
    constant; GELU/SiLU by the identity rule; linear layers by LRP-0 (or γ). Relevance is conserved up to what
    biases and the softmax absorb (``map.sum()`` against ``return_scores``).

    Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024;
    Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022.
    Attention must be fused (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``); an unfused
    softmax path is refused. On a model without attention this is LRP-0.

    {args}

    Returns:
        Relevance shaped like ``x`` (``[B, K, ...]`` for K targets), and the scores when ``return_scores``.

    Example:
        >>> r, s = fxai.attnlrp(vit_fn, vit_params, x, target=3, return_scores=True)
        >>> r.shape, s.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2]))
    """
    composite = attnlrp_composite(variant=variant, gamma=gamma)
    return lrp(model_fn, params, x, target, composite=composite, chunk_size=chunk_size, return_scores=return_scores)
