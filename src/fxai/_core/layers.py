"""Layer access without persistent hooks: a layer's activation and the gradient at it.

A zero ``delta`` is added to the layer's output inside the forward; the
gradient of the scores w.r.t. ``delta`` is the gradient w.r.t. the activation
(the ``perturb`` trick of Flax). The hook that adds it lives only for the
duration of one call, so nothing is left registered on the user's module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import vjp, vmap

from .batching import row_chunks
from .functional import FunctionalModel
from .targets import Target, check_logits


def layer_names(module: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``module`` (what ``layer=`` accepts)."""
    return [name for name, _ in module.named_modules() if name]


def resolve_layers(model_fn, layer: str | Sequence[str], *, name: str = "layer") -> list[str]:
    """Check ``layer`` (a dotted name or a list of them) against ``model_fn``'s module."""
    if not isinstance(model_fn, FunctionalModel):
        raise TypeError(f"{name}= needs a model_fn made by fxai.functional(module) (to find the layer); "
                        f"got {type(model_fn).__name__}")
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"{name} must be a dotted layer name such as 'layer4' or a non-empty list of them; got {layer!r}")
    known = dict(model_fn.module.named_modules())
    for n in layers:
        if n not in known or not n:
            names = layer_names(model_fn.module)
            shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
            raise ValueError(f"{name}: unknown layer {n!r}; available layers: {shown}")
    return layers


@contextlib.contextmanager
def _injected(module: nn.Module, layers: list[str], deltas, store: list):
    """Within the block, each layer's output ``a`` becomes ``a + delta`` and ``a`` is stored."""
    modules = dict(module.named_modules())
    calls = [0] * len(layers)
    handles = []

    def make(i):
        def hook(mod, args, out):
            calls[i] += 1
            if calls[i] > 1:
                raise ValueError(f"layer: {layers[i]!r} runs more than once in one forward pass (a module reused "
                                 "inside the model, like torchvision's ReLU in a BasicBlock); choose its parent block "
                                 "or another layer")
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layer: {layers[i]!r} returns {type(out).__name__}, not a tensor; choose another layer")
            store[i] = out
            return out if deltas is None else out + deltas[i]
        return hook

    try:
        for i, n in enumerate(layers):
            handles.append(modules[n].register_forward_hook(make(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def tapped(model_fn: FunctionalModel, layers: list[str]):
    """``fn(params, x, deltas) -> (logits, activations)``, with ``deltas`` added to the layers' outputs."""
    def fn(params, x, deltas=None):
        store = [None] * len(layers)
        with _injected(model_fn.module, layers, deltas, store):
            logits = model_fn(params, x)
        return logits, store

    return fn


def activation_shapes(model_fn: FunctionalModel, params, x: torch.Tensor, layers: list[str]) -> list[torch.Size]:
    """Shapes of the layers' activations for input ``x``, from a dry run on the ``meta`` device."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in params.items()}
    _, acts = tapped(model_fn, layers)(meta, torch.empty_like(x, device="meta"))
    return [a.shape for a in acts]


def layer_gradients(model_fn: FunctionalModel, params, x: torch.Tensor, target: Target, layers: list[str], *,
                    chunk_size: int | None = None):
    """Activations and target-score gradients at ``layers``: ``(acts, grads, scores)``.

    ``acts[i]`` is ``[B, ...]``; ``grads[i]`` is ``[B, ...]`` or ``[B, K, ...]`` for
    K targets (one forward, K vmapped backwards); ``scores`` is ``[B]`` or ``[B, K]``.
    Differentiable w.r.t. ``params`` and ``x``.
    """
    fn = tapped(model_fn, layers)
    shapes = activation_shapes(model_fn, params, x[:1], layers)
    acts_all, grads_all, scores_all = [], [], []
    for a, b in row_chunks(x.shape[0], chunk_size, target.group):
        rows = x[a:b]
        deltas = tuple(torch.zeros((b - a, *s[1:]), dtype=x.dtype, device=x.device) for s in shapes)

        def score(deltas, a=a, rows=rows):
            logits, acts = fn(params, rows, deltas)
            check_logits(logits, rows)
            s = target.scores(logits, a)
            return s, (s, acts)

        s, pullback, (s_aux, acts) = vjp(score, deltas, has_aux=True)
        if s.ndim == 1:
            (grads,) = pullback(torch.ones_like(s))
        else:
            k = s.shape[1]
            onehot = torch.eye(k, dtype=s.dtype, device=s.device)[:, None, :].expand(k, *s.shape)
            (grads,) = vmap(pullback)(onehot)
            grads = tuple(g.movedim(0, 1) for g in grads)
        acts_all.append(acts)
        grads_all.append(grads)
        scores_all.append(s_aux)
    cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts)  # noqa: E731
    acts = [cat([c[i] for c in acts_all]) for i in range(len(layers))]
    grads = [cat([c[i] for c in grads_all]) for i in range(len(layers))]
    return acts, grads, cat(scores_all)


def forward_with_activations(model_fn: FunctionalModel, params, x: torch.Tensor, layers: list[str]):
    """``(logits, activations)`` of one forward pass (no gradient bookkeeping)."""
    return tapped(model_fn, layers)(params, x)
