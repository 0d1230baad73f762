"""Layer-wise Relevance Propagation (LRP) with composites of rules, applied by op interception."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._core.batching import auto_chunk, backward, needs_graph, per_row, row_chunks, score_gradients
from ..rules.canonizers import fold_batchnorm
from .._core.checks import check_input
from .._core.docs import documented
from ..rules.lrp_mode import RelevanceMode
from ..rules.lrp import as_composite
from .._core.targets import TargetLike, as_target, check_logits


def _relevance_at_input(score, rows, params, multi):
    """``(d s / d rows under the rules, s)``: autograd outside ``torch.func`` (also when compiling), else ``vjp``."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        (g,), s, _ = score_gradients(score, (rows,), also=params, multi=multi)
        return g, s
    keep = needs_graph(params, rows)
    with torch.enable_grad():
        leaf = rows if rows.requires_grad else rows.detach().requires_grad_()
        s, _ = score(leaf.clone())  # a clone: the model may write into its input
        (g,) = backward(s, [leaf], keep=keep)
    return g, (s if keep else s.detach())


@documented(
    x="input batch ``[B, ...]``.",
    composite="which rule each layer gets: a name (``\"epsilon_plus_flat\"``, the default: flat on the first layer, "
              "z⁺ on convolutions, ε on dense layers; ``\"epsilon_plus\"``, ``\"epsilon_alpha2_beta1\"``, "
              "``\"epsilon_alpha2_beta1_flat\"``; ``\"attnlrp\"`` and ``\"cp_lrp\"`` for transformers, see "
              ":func:`fxai.attnlrp`), a composite from ``fxai.lrp_rules`` (e.g. "
              "``epsilon_gamma_box(low=..., high=...)``), or a mapping from a layer kind (``\"first\"``, ``\"conv\"``, "
              "``\"linear\"``, ``\"pool\"``, ``\"add\"``, ``\"activation\"``, ``\"batchnorm\"``) or a layer name "
              "(prefix of its parameter names) to a rule.",
    canonizers="``(model_fn, params, x) -> params`` rewrites applied first; ``None`` (default) folds BatchNorm "
               "layers into the layer before them (``(fxai.fold_batchnorm,)``); ``()`` applies none.",
    return_scores="also return the target scores :math:`f_c(x)` the relevance started from.")
def lrp(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, composite="epsilon_plus_flat",
        canonizers: Sequence[Callable] | None = None, chunk_size: int | None = None,
        return_scores: bool = False):
    r"""Layer-wise Relevance Propagation: the target score redistributed onto the input, layer by layer.

    Starting from :math:`R = f_c(x)` at the output, each layer passes relevance to its
    inputs by its rule, e.g. ε: :math:`R_i = \sum_j x_i W_{ji} R_j / \mathrm{stab}(z_j)`,
    z⁺: :math:`R_i = \sum_j x_i W^+_{ji} R_j / \sum_{i'} x_{i'} W^+_{ji'}`. Rules conserve relevance
    up to biases and stabilisers, so ``map.sum()`` is close to the score (``return_scores``).

    Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
    Relevance Propagation", 2015; Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019.

    Rules are applied to ops, not modules (``F.conv*``, ``F.linear``, average pooling, means and
    sums, same-shape additions such as residual connections, activations, batch norms), so reused
    modules, functional calls and residual blocks are all handled; max-pooling, reshapes and
    concatenations route relevance by their gradient.

    {args}

    Returns:
        Relevance shaped like ``x`` (``[B, K, ...]`` for K targets), and the scores ``[B]``
        (``[B, K]``) when ``return_scores``.

    Example:
        >>> r = fxai.lrp(model_fn, params, x, target=3)
        >>> r, s = fxai.lrp(model_fn, params, x, 3, composite={"conv": fxai.lrp_rules.Gamma(0.25)},
        ...                 return_scores=True)
        >>> r.shape, s.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2]))
    """
    check_input(x)
    chunk_size = auto_chunk(chunk_size, x)
    comp = as_composite(composite)
    comp.check_names(params)
    tgt = as_target(target, x)
    if canonizers is None:
        canonizers = (fold_batchnorm,)
    if isinstance(canonizers, Callable) or not all(callable(c) for c in canonizers):
        raise TypeError("canonizers must be a sequence of callables (model_fn, params, x) -> params, "
                        f"got {canonizers!r}")
    for canonize in canonizers:
        params = canonize(model_fn, params, x)

    # Where the map may be differentiated, a plain forward first: its values feed the rules' backwards and its
    # scores scale the map, so derivatives follow the model's true Jacobian (see fxai.rules.lrp_mode).
    exact = needs_graph(params, x) or torch._C._functorch.peek_interpreter_stack() is not None
    maps, scores = [], []
    for a, b in row_chunks(x.shape[0], chunk_size, tgt.group):
        truth = None
        if exact:
            truth = []
            with RelevanceMode(comp, params, record=truth):
                logits = model_fn(params, x[a:b].clone())
            check_logits(logits, x[a:b])
            true_scores = tgt.scores(logits, a)

        def score(rows, a=a, truth=truth):
            with RelevanceMode(comp, params, truth=truth):
                logits = model_fn(params, rows)
            check_logits(logits, rows)
            s = tgt.scores(logits, a)
            return s, s

        g, s = _relevance_at_input(score, x[a:b], params, tgt.multi)
        if exact:
            s = true_scores
        maps.append(g * per_row(s, g))
        scores.append(s)
    out = maps[0] if len(maps) == 1 else torch.cat(maps)
    if return_scores:
        return out, scores[0] if len(scores) == 1 else torch.cat(scores)
    return out
