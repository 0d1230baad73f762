"""A model cut at a layer: the part after it, ``tail(params, a) -> logits`` (when nothing bypasses the layer), and
the part up to it, ``upto(params, x) -> a``.

From the FX rewrite that taps the layer (:mod:`fxai._core.taps`), the layer's output becomes an input of the
graph and every node it no longer needs is removed. If the model's input is still used afterwards, some path
from ``x`` to the output bypasses the layer (a residual branch around a layer inside a block) and there is no
tail: callers run the whole forward with the layer's output replaced instead. A model made by
:func:`fxai.split` has both by construction, ``head`` and ``features``. The part up to the layer keeps only
the nodes the layer's output needs. Models without an FX graph (the hook tap serves them) have neither.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.fx as fx
from torch.func import functional_call

from .functional import FunctionalModel, SplitModel
from .outputs import pick
from .taps import forget_source, inject_delta

_CUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a thread's tapped graph -> {side: graph or None}


def _bound(gm: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    """``graph`` (nodes of ``gm``'s) made a module over ``gm``'s submodules, its source released with it."""
    graph.lint()
    cut = fx.GraphModule(gm, graph, class_name=f"{name}{type(gm).__name__}")
    weakref.finalize(cut, forget_source, type(cut).forward.__code__.co_filename)
    return cut


def _pruned(graph: fx.Graph, gm: fx.GraphModule) -> None:
    graph.owning_module = gm  # DCE asks the modules whether they are pure
    graph.eliminate_dead_code()
    graph.owning_module = None


def _inject_node(graph: fx.Graph, layer: str) -> fx.Node:
    (inject,) = [n for n in graph.nodes if n.op == "call_function" and n.target is inject_delta and n.args[3] == layer]
    return inject


def _tail_graph(gm: fx.GraphModule, layer: str) -> fx.GraphModule | None:
    graph = copy.deepcopy(gm.graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    inject = _inject_node(graph, layer)
    with graph.inserting_after(placeholders[-1]):
        a = graph.placeholder("activation", default_value=None)
    inject.replace_all_uses_with(a)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output.args = (output.args[0][0],)  # the logits, without the tapped activations
    _pruned(graph, gm)
    if placeholders[0].users or any(n.op == "call_module" and n.target == layer for n in graph.nodes):
        return None  # the input reaches the output by another path, or the layer still runs
    return _bound(gm, graph, "Tail")


def _upto_graph(gm: fx.GraphModule, layer: str) -> fx.GraphModule:
    graph = copy.deepcopy(gm.graph)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output.args = (_inject_node(graph, layer).args[0],)  # the layer's own output
    _pruned(graph, gm)
    return _bound(gm, graph, "Upto")


def _cut(model_fn: FunctionalModel, layer: str, side: str):
    """This thread's graph of ``model_fn`` cut at ``layer`` (``side``: ``"tail"`` or ``"upto"``), or ``None``."""
    gm = model_fn.graph_tap((layer,))
    if gm is None:
        return None
    cuts = _CUTS.setdefault(gm, {})
    if side not in cuts:
        if torch.compiler.is_compiling():
            return None  # no FX work inside dynamo: the whole tapped forward serves this call
        cuts[side] = (_tail_graph if side == "tail" else _upto_graph)(gm, layer)
    return cuts[side]


def _call(model_fn: FunctionalModel, graph: fx.GraphModule, args_for, logits: bool):
    names = ({n for n, _ in graph.named_parameters(remove_duplicate=False)}
             | {n for n, _ in graph.named_buffers(remove_duplicate=False)})

    def fn(params, inputs):
        tensors = model_fn.tensors(params, inputs)
        out = functional_call(graph, {k: v for k, v in tensors.items() if k in names}, args_for(inputs))
        return pick(out, model_fn.output) if logits else out  # the logits of a tuple, dict or ModelOutput

    return fn


def tail(model_fn, layer: str):
    """``tail(params, a) -> logits``: the model after ``layer``, whose output is ``a``; ``None`` when a path from
    the input bypasses the layer, or when the model has no FX graph (the hook tap serves it)."""
    if isinstance(model_fn, SplitModel):
        return model_fn.head
    graph = _cut(model_fn, layer, "tail") if isinstance(model_fn, FunctionalModel) else None
    # a copy of a: an in-place op right after the layer (ReLU(inplace=True)) would write into the caller's rows
    return None if graph is None else _call(model_fn, graph, lambda a: (None, None, a.clone()), True)


def upto(model_fn, layer: str):
    """``upto(params, x) -> a``: the model up to ``layer``'s output, nothing after it; ``None`` when the model has
    no FX graph."""
    if isinstance(model_fn, SplitModel):
        return model_fn.features
    graph = _cut(model_fn, layer, "upto") if isinstance(model_fn, FunctionalModel) else None
    return None if graph is None else _call(model_fn, graph, lambda x: (x, None), False)
