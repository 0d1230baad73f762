"""Layer taps: ``fn(params, x, deltas) -> (logits, activations)`` for named layers of a module.

A tap adds a ``delta`` to a layer's output inside the forward pass and returns
the layer's output (before the ``delta``) next to the logits: the gradient
w.r.t. a zero ``delta`` is the gradient w.r.t. the activation (the ``perturb``
trick of Flax). Two ways to build one, with the same signature:

- an FX rewrite (the default): the module is traced once with the tapped
  layers kept as leaves, and an ``_inject`` node is placed after each of
  them. The result is a pure graph that ``torch.compile(fullgraph=True)``
  takes whole; it holds the user's own submodules and parameters (nothing is
  copied or changed).
- a scoped forward hook, for models FX cannot trace (data-dependent control
  flow): registered and removed inside each call, so nothing stays on the
  module; it compiles with graph breaks only.

Either way the activation is kept apart from what flows on: an in-place op
after the layer (ResNet's ``ReLU(inplace=True)`` after ``bn1``) changes the
copy the model goes on with, never the activation returned.
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call


def _reused(layer: str) -> ValueError:
    return ValueError(f"layer: {layer!r} runs more than once in one forward pass (a module reused inside the model, "
                      "like torchvision's ReLU in a BasicBlock); choose its parent block or another layer")


def _check_output(layer: str, out) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"layer: {layer!r} returns {type(out).__name__}, not a tensor; choose another layer")


def _inject(activation, deltas, i: int, layer: str):
    """What flows on from a tapped layer: ``activation + deltas[i]``, or a copy when there are no deltas."""
    _check_output(layer, activation)
    return activation.clone() if deltas is None else activation + deltas[i]


class _LeafTracer(fx.Tracer):
    """The default tracer, with the tapped layers kept whole as ``call_module`` nodes."""

    def __init__(self, layers):
        super().__init__()
        self.layers = set(layers)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.layers or super().is_leaf_module(m, qualname)


def graph_tap(module: nn.Module, layers: list[str]) -> fx.GraphModule | None:
    """``module`` rewritten as ``gm(x, deltas=None) -> (logits, [activation per layer])``; ``None`` if FX cannot trace it
    or a layer is hidden inside a module FX keeps whole."""
    try:
        graph = _LeafTracer(layers).trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure means: use the hook tap
        return None
    nodes = []
    for layer in layers:
        found = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
        if len(found) > 1:
            raise _reused(layer)
        if not found:
            return None
        nodes.append(found[0])
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    with graph.inserting_after(placeholders[0]):
        deltas = graph.placeholder("deltas", default_value=None)
    for i, (layer, node) in enumerate(zip(layers, nodes)):
        with graph.inserting_after(node):
            flowing = graph.call_function(_inject, (node, deltas, i, layer))
        node.replace_all_uses_with(flowing, delete_user_cb=lambda user, flowing=flowing: user is not flowing)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output.args = ((output.args[0], tuple(nodes)),)
    graph.lint()
    return fx.GraphModule(module, graph, class_name=f"Tapped{type(module).__name__}")


@contextlib.contextmanager
def _hooked(module: nn.Module, layers: list[str], deltas, store: list):
    """Within the block, each layer's output ``a`` goes on as :func:`_inject` makes it and ``a`` is stored."""
    modules = dict(module.named_modules())
    calls = [0] * len(layers)
    handles = []

    def make(i):
        def hook(mod, args, out):
            calls[i] += 1
            if calls[i] > 1:
                raise _reused(layers[i])
            store[i] = out
            return _inject(out, deltas, i, layers[i])
        return hook

    try:
        for i, n in enumerate(layers):
            handles.append(modules[n].register_forward_hook(make(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def module_tap(model_fn, layers: list[str]):
    """``fn(params, x, deltas=None) -> (logits, activations)`` for a model made by :func:`fxai.functional`.

    The FX rewrite is built once per ``model_fn`` and set of layers; the hook tap serves models it cannot trace.
    """
    gm = model_fn.graph_tap(tuple(layers))
    if gm is not None:
        names = {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}

        def graph_fn(params, x, deltas=None):
            return functional_call(gm, {k: v for k, v in params.items() if k in names}, (x, deltas))

        return graph_fn

    def hook_fn(params, x, deltas=None):
        store = [None] * len(layers)
        with _hooked(model_fn.module, layers, deltas, store):
            logits = model_fn(params, x)
        for n, a in zip(layers, store):
            if a is None:
                raise ValueError(f"layer: {n!r} did not run in the forward pass; choose another layer")
        return logits, store

    return hook_fn
