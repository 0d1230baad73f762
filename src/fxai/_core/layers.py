"""Layer access without persistent hooks: a layer's activation and the gradient at it.

A zero ``delta`` is added to the layer's output inside the forward (a tap, see
:mod:`fxai._core.taps`); the gradient of the scores w.r.t. ``delta`` is the
gradient w.r.t. the activation (the ``perturb`` trick of Flax). This module runs
taps in chunks; :mod:`fxai._core.discovery` finds and checks layer names, and
:mod:`fxai._core.grids` reads layer outputs as spatial grids.
"""

from __future__ import annotations

import torch

from .batching import cat_rows, backward, detached, needs_graph, plain_autograd, row_chunks, score_gradients
from .discovery import dry_run
from .functional import SplitModel
from .targets import Target, check_logits
from .taps import module_tap


def tapped(model_fn, layers: list[str]):
    """``fn(params, x, deltas=None) -> (logits, activations)``, with ``deltas`` added to the layers' outputs."""
    if isinstance(model_fn, SplitModel):
        def split_fn(params, x, deltas=None):
            act = model_fn.features(params, x)
            if not isinstance(act, torch.Tensor):
                raise TypeError(f"split: features returned {type(act).__name__}, not a tensor")
            return model_fn.head(params, act if deltas is None else act + deltas[0]), [act]

        return split_fn
    return module_tap(model_fn, layers)


def activation_shapes(model_fn, params, x: torch.Tensor, layers: list[str]) -> list[torch.Size]:
    """Shapes of the layers' activations for input ``x``, from a dry run on the ``meta`` device."""
    fn = tapped(model_fn, layers)
    _, acts = dry_run(lambda p, rows: fn(p, rows), params, x)
    return [a.shape for a in acts]


def layer_gradients(model_fn, params, x: torch.Tensor, target: Target, layers: list[str], *,
                    chunk_size: int | None = None):
    """Activations and target-score gradients at ``layers``: ``(acts, grads, scores)``.

    ``acts[i]`` is ``[B, ...]``; ``grads[i]`` is ``[B, ...]`` or ``[B, K, ...]`` for
    K targets (one forward, K vmapped backwards); ``scores`` is ``[B]`` or ``[B, K]``.
    Differentiable w.r.t. ``params`` and ``x``.
    """
    acts, grads, s, _ = layer_and_input_gradients(model_fn, params, x, target, layers, chunk_size=chunk_size,
                                                  wrt_input=False)
    return acts, grads, s


def layer_and_input_gradients(model_fn, params, x: torch.Tensor, target: Target, layers: list[str], *,
                              chunk_size: int | None = None, wrt_input: bool = True):
    """As :func:`layer_gradients`, plus the gradient w.r.t. ``x`` from the same backward: ``(acts, grads, scores, xgrad)``.

    ``xgrad`` is ``[B, ...]`` or ``[B, K, ...]`` (``None`` when ``wrt_input=False``).
    """
    fn = tapped(model_fn, layers)
    n = len(layers)
    plain = plain_autograd() and not target.multi  # K targets: one vmapped backward, by torch.func
    keep = needs_graph(params, x)
    shapes = None if plain else activation_shapes(model_fn, params, x[:1], layers)
    acts_all, grads_all, xgrads_all, scores_all = [], [], [], []
    for a, b in row_chunks(x.shape[0], chunk_size, target.group):
        rows = x[a:b]
        if plain:  # autograd reaches the activations themselves: no deltas, no dry run for their shapes
            with torch.enable_grad():
                leaf = rows if rows.requires_grad else rows.detach().requires_grad_()
                logits, acts = fn(params, leaf.clone())
                check_logits(logits, rows)
                s_aux = target.scores(logits, a)
                grads = backward(s_aux, [*acts, leaf] if wrt_input else acts, keep=keep)
            if not keep:
                s_aux, acts = detached((s_aux, acts))
        else:
            deltas = tuple(torch.zeros((b - a, *s[1:]), dtype=x.dtype, device=x.device) for s in shapes)

            def score(*inputs, rows=rows, a=a):
                logits, acts = fn(params, inputs[n] if wrt_input else rows, inputs[:n])
                check_logits(logits, rows)
                s = target.scores(logits, a)
                return s, (s, acts)

            grads, _, (s_aux, acts) = score_gradients(score, (*deltas, rows) if wrt_input else deltas,
                                                      also=(params, rows), multi=target.multi)
        acts_all.append(acts)
        grads_all.append(grads[:n])
        xgrads_all.append(grads[n] if wrt_input else None)
        scores_all.append(s_aux)
    acts = [cat_rows([c[i] for c in acts_all]) for i in range(n)]
    grads = [cat_rows([c[i] for c in grads_all]) for i in range(n)]
    xgrad = cat_rows(xgrads_all) if wrt_input else None
    return acts, grads, cat_rows(scores_all), xgrad


def forward_with_activations(model_fn, params, x: torch.Tensor, layers: list[str]):
    """``(logits, activations)`` of one forward pass (no gradient bookkeeping), on a copy of ``x`` (a model may
    write into its input)."""
    return tapped(model_fn, layers)(params, x.clone())
