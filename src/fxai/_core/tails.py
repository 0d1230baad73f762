"""The part of a model after a layer, as a pure function ``tail(params, a) -> logits``, when nothing bypasses it.

From the FX rewrite that taps the layer (:mod:`fxai._core.taps`), the layer's output becomes an input of the
graph and every node it no longer needs is removed. If the model's input is still used afterwards, some path
from ``x`` to the output bypasses the layer (a residual branch around a layer inside a block) and there is no
tail: callers run the whole forward with the layer's output replaced instead. A model made by
:func:`fxai.split` has its tail by construction, ``head``.
"""

from __future__ import annotations

import copy
import weakref

import torch.fx as fx
from torch.func import functional_call

from .functional import FunctionalModel, SplitModel
from .taps import _forget_source, _inject

_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a thread's tapped graph -> its tail (or None)


def _tail_graph(gm: fx.GraphModule, layer: str) -> fx.GraphModule | None:
    graph = copy.deepcopy(gm.graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    (inject,) = [n for n in graph.nodes if n.op == "call_function" and n.target is _inject and n.args[3] == layer]
    with graph.inserting_after(placeholders[-1]):
        a = graph.placeholder("activation", default_value=None)
    inject.replace_all_uses_with(a)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output.args = (output.args[0][0],)  # the logits, without the tapped activations
    graph.owning_module = gm  # DCE asks the modules whether they are pure
    graph.eliminate_dead_code()
    graph.owning_module = None
    if placeholders[0].users or any(n.op == "call_module" and n.target == layer for n in graph.nodes):
        return None  # the input reaches the output by another path, or the layer still runs
    graph.lint()
    tail = fx.GraphModule(gm, graph, class_name=f"Tail{type(gm).__name__}")
    weakref.finalize(tail, _forget_source, type(tail).forward.__code__.co_filename)
    return tail


def tail(model_fn, layer: str):
    """``tail(params, a) -> logits``: the model after ``layer``, whose output is ``a``; ``None`` when a path from
    the input bypasses the layer, or when the model has no FX graph (the hook tap serves it)."""
    if isinstance(model_fn, SplitModel):
        return model_fn.head
    if not isinstance(model_fn, FunctionalModel):
        return None
    gm = model_fn.graph_tap((layer,))
    if gm is None:
        return None
    if gm not in _TAILS:
        _TAILS[gm] = _tail_graph(gm, layer)
    graph = _TAILS[gm]
    if graph is None:
        return None
    names = ({n for n, _ in graph.named_parameters(remove_duplicate=False)}
             | {n for n, _ in graph.named_buffers(remove_duplicate=False)})

    def tail_fn(params, a):
        tensors = model_fn.tensors(params, a)
        # a copy: an in-place op right after the layer (ReLU(inplace=True)) would write into the caller's rows
        return functional_call(graph, {k: v for k, v in tensors.items() if k in names}, (None, None, a.clone()))

    return tail_fn
