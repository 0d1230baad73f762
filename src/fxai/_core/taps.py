"""Layer taps: ``fn(params, x, deltas) -> (logits, activations)`` for named layers of a module.

A tap adds a ``delta`` to a layer's output inside the forward pass and returns
the layer's output (before the ``delta``) next to the logits: the gradient
w.r.t. a zero ``delta`` is the gradient w.r.t. the activation (the ``perturb``
trick of Flax). Two ways to build one, with the same signature:

- an FX rewrite (the default): the module's structural copy (see
  :mod:`fxai._core.skeleton`) is traced once with the tapped layers kept as
  leaves, and an ``inject_delta`` node is placed after each of them. The result is
  a pure graph that ``torch.compile(fullgraph=True)`` takes whole; each thread
  binds it to its own copy of the module, so no thread sees another's tensors.
  FX traces ``forward``, not ``__call__``: hooks on the root module and on the
  modules it traces through would be dropped or frozen, so a module with such
  hooks (or with global module hooks) gets the hook tap instead, which runs
  the module as ``module(x)`` does.
- a scoped forward hook, for models FX cannot trace (data-dependent control
  flow) or whose hooks FX cannot keep: registered on this thread's copy of the
  module and removed inside each call; it compiles with graph breaks only.

Either way the activation is kept apart from what flows on: an in-place op
after the layer (ResNet's ``ReLU(inplace=True)`` after ``bn1``) changes the
copy the model goes on with, never the activation returned.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import linecache
import threading
import weakref

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call

from .outputs import pick
from .skeleton import copy_skeleton


def _reused(layer: str) -> ValueError:
    return ValueError(f"layer: {layer!r} runs more than once in one forward pass (a module reused inside the model, "
                      "like torchvision's ReLU in a BasicBlock); choose its parent block or another layer")


def _check_output(layer: str, out) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"layer: {layer!r} returns {type(out).__name__}, not a tensor; choose another layer")


def inject_delta(activation, deltas, i: int, layer: str):
    """What flows on from a tapped layer: ``activation + deltas[i]``, or a copy when there are no deltas."""
    _check_output(layer, activation)
    return activation.clone() if deltas is None else activation + deltas[i]


class _LeafTracer(fx.Tracer):
    """The default tracer, with the tapped layers kept whole as ``call_module`` nodes.

    While it traces, FX patches ``nn.Module.__call__`` and ``__getattr__`` for the
    whole process; module calls from other threads pass through untouched.
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = set(layers)
        self.thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.layers or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


_TRACING = threading.Lock()  # FX's patches of nn.Module are process-wide: one trace at a time
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def global_hooks() -> bool:
    """Whether module hooks are registered globally (``torch.nn.modules.module.register_module_forward_hook``...)."""
    from torch.nn.modules import module as m
    return any(getattr(m, f"_global{name}", None) for name in _HOOKS)


def _traced_hooks(module: nn.Module, tracer: fx.Tracer) -> list[str]:
    """Modules with hooks that an FX trace of ``module`` would run through (root included): their hooks would be
    dropped (root) or frozen into the graph."""
    found = []

    def visit(m, name):
        if name and tracer.is_leaf_module(m, name):
            return  # called as a module by the graph: its hooks run
        if any(getattr(m, attr, None) for attr in _HOOKS):
            found.append(name or "<root>")
        for child, sub in m.named_children():
            visit(sub, f"{name}.{child}" if name else child)

    visit(module, "")
    return found


def _fetch(root, target: str):
    for atom in target.split("."):
        root = getattr(root, atom)
    return root


def trace_tap(module: nn.Module, layers: list[str], *, copy: bool = True):
    """The graph of ``module`` rewritten as ``gm(x, deltas=None) -> (logits, [activation per layer])``; ``None`` where
    the hook tap must serve: FX cannot trace the module, a layer is hidden inside a module FX keeps whole, or the
    module has hooks FX would not keep. ``copy``: trace a throwaway copy (a forward that sets attributes changes
    only that)."""
    tracer = _LeafTracer(layers)
    if global_hooks() or _traced_hooks(module, tracer):
        return None
    root = copy_skeleton(module) if copy else module
    try:
        with _TRACING:
            graph = tracer.trace(root)
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
            flowing = graph.call_function(inject_delta, (node, deltas, i, layer))
        node.replace_all_uses_with(flowing, delete_user_cb=lambda user, flowing=flowing: user is not flowing)
    (output,) = [n for n in graph.nodes if n.op == "output"]
    output.args = ((output.args[0], tuple(nodes)),)
    graph.lint()
    constants = {}  # tensors FX made attributes of the traced root (literals in forward), absent from the module
    for n in graph.nodes:
        if n.op == "get_attr":
            try:
                _fetch(module, n.target)
            except AttributeError:
                constants[n.target] = _fetch(root, n.target)
                if constants[n.target].device.type == "meta":  # computed while tracing from a placeholder buffer
                    return None  # (timm's Swin indexes with a view of one): its values are unknown, the hook tap serves
    return graph, constants


def forget_source(key: str) -> None:
    """Drop the generated source FX keeps for the graph module ``key`` (its linecache entry)."""
    loader = getattr(fx.graph_module, "_loader", None)
    if loader is not None:
        getattr(loader, "eval_cache", {}).pop(key, None)
    linecache.cache.pop(key, None)


def bind_tap(module: nn.Module, tap) -> fx.GraphModule:
    """A graph made by :func:`trace_tap` as a module over ``module``'s submodules and tensors.

    FX keeps each generated ``forward``'s source for tracebacks for the life of the
    process; it is released here when the module goes, so that taps made again and
    again (a ``functional()`` per explanation) do not accumulate.
    """
    graph, constants = tap
    root = {n.target: constants[n.target] if n.target in constants else _fetch(module, n.target)
            for n in graph.nodes if n.op in ("get_attr", "call_module")}
    gm = fx.GraphModule(root, _copy.deepcopy(graph), class_name=f"Tapped{type(module).__name__}")
    weakref.finalize(gm, forget_source, type(gm).forward.__code__.co_filename)
    return gm


@contextlib.contextmanager
def _hooked(module: nn.Module, layers: list[str], deltas, store: list):
    """Within the block, each layer's output ``a`` goes on as :func:`inject_delta` makes it and ``a`` is stored."""
    modules = dict(module.named_modules())
    calls = [0] * len(layers)
    handles = []

    def make(i):
        def hook(mod, args, out):
            calls[i] += 1
            if calls[i] > 1:
                raise _reused(layers[i])
            store[i] = out
            return inject_delta(out, deltas, i, layers[i])
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
        names = ({n for n, _ in gm.named_parameters(remove_duplicate=False)}
                 | {n for n, _ in gm.named_buffers(remove_duplicate=False)})

        def graph_fn(params, x, deltas=None):
            tensors = model_fn.tensors(params, x)
            out, acts = functional_call(gm, {k: v for k, v in tensors.items() if k in names}, (x, deltas))
            return pick(out, model_fn.output), acts

        return graph_fn

    def hook_fn(params, x, deltas=None):
        store = [None] * len(layers)
        with _hooked(model_fn.skeleton, layers, deltas, store):
            logits = model_fn(params, x)
        for n, a in zip(layers, store):
            if a is None:
                raise ValueError(f"layer: {n!r} did not run in the forward pass; choose another layer")
        return logits, store

    return hook_fn
