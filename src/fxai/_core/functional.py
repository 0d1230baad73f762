"""Pure model functions ``model_fn(params, x) -> logits``: a module made functional, or two pure halves."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from . import structured
from .outputs import check_output_option, pick
from .skeleton import ThreadCopies, skeleton
from .taps import bind_tap, global_hooks, trace_tap

_STATEFUL_IN_TRAINING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.AlphaDropout)


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _check_like(params: Mapping[str, torch.Tensor], x, names) -> None:
    """``x`` of the floating dtype and on the device of the parameters (a clear error, not one from a kernel)."""
    if not isinstance(x, torch.Tensor) or not names:
        return
    p = params[names[0]]
    if x.is_floating_point() and p.is_floating_point() and x.dtype != p.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {p.dtype}: convert one of them "
                        f"(x.to({p.dtype}), or the module before fxai.functional)")
    if x.device.type != "meta" and p.device.type != "meta" and x.device != p.device:
        raise ValueError(f"x is on {x.device} but the model's parameters are on {p.device}: move one of them "
                         f"(x.to({str(p.device)!r}))")


class FunctionalModel:
    """A module seen as a pure function of ``(params, x)``.

    Calling it runs ``torch.func.functional_call`` on fxai's own structural copy
    of the module (a skeleton whose parameters and buffers live on the ``meta``
    device, one per thread), with every tensor taken from ``params``: the user's
    module is never run, read or written during a call, and threads do not share
    the copy. The copy keeps the module as it is when this object is made:
    submodules, hooks, training flags and Python attributes; a module changed
    afterwards (``.train()``, new hooks or attributes) needs a new
    ``functional()``. ``module`` is the user's module, kept for layer names and
    types; the FX rewrites that tap layers are traced on first use and kept here.

    Buffers are state, not weights: floating-point buffers (BatchNorm's running
    statistics) enter the model as constants (their gradient is zero), and
    integer and boolean buffers (``num_batches_tracked``, index tables) are not
    in ``params`` at all (the model supplies its own copies, on the input's
    device, unless ``params`` has them). So ``torch.func.grad`` can
    differentiate with respect to all of ``params`` on any model.
    """

    __slots__ = ("module", "output", "_copies", "_names", "_buffers", "_fixed", "_taps", "__weakref__")

    def __init__(self, module: nn.Module, output=None):
        self.module = module
        self.output = output  # which part of the module's output holds the logits (fxai._core.outputs.pick)
        try:
            master, share = skeleton(module), False
        except Exception as err:  # noqa: BLE001 - a module deepcopy cannot copy still works, without the guarantees
            warnings.warn(f"functional(module): the module cannot be copied ({type(err).__name__}: {err}); model_fn "
                          "runs on the module itself, which is then not safe to use from several threads at once",
                          RuntimeWarning, stacklevel=3)
            master, share = module, True
        self._copies = ThreadCopies(master, share=share)
        self._copies.get()  # this thread's copy now, outside any transform or torch.compile
        named = dict(_tensors(module))
        self._names = tuple(k for k, t in named.items() if _differentiable(t))
        self._buffers = tuple(k for k, t in module.named_buffers() if _differentiable(t))
        self._fixed = {k: t.detach().clone() for k, t in named.items() if not _differentiable(t)}
        self._taps = {}

    @property
    def skeleton(self) -> nn.Module:
        """This thread's structural copy of the module (tensors on ``meta``): what calls run."""
        return self._copies.get()

    def tensors(self, params: Mapping[str, torch.Tensor], x) -> Mapping[str, torch.Tensor]:
        """``params`` checked for completeness, buffers detached, the module's integer and boolean buffers added."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be the dict of tensors fxai.functional(module) returned, "
                            f"got {type(params).__name__}")
        missing = [k for k in self._names if k not in params]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5
                                                               else "")
            raise KeyError(f"params: missing {shown}; pass the dict fxai.functional(module) returned "
                           "(or one with the same keys)")
        inputs = structured.leaves(x)
        for leaf in inputs:
            _check_like(params, leaf, self._names)
        tensors = dict(params)
        for k in self._buffers:  # native batch_norm refuses running statistics that require grad
            if tensors[k].requires_grad:  # (the same tensor otherwise: rules may look params up by identity)
                tensors[k] = tensors[k].detach()
        if self._fixed:
            fixed = self._fixed if not inputs else {k: v.to(inputs[0].device) for k, v in self._fixed.items()}
            tensors = {**fixed, **tensors}
        return tensors

    def __call__(self, params: Mapping[str, torch.Tensor], x) -> torch.Tensor:
        """``module(x)``, its logits picked by ``output``; for a structured input, ``module(*x)`` (tuple or list)
        or ``module(**x)`` (dict)."""
        args, kwargs = ((), dict(x)) if isinstance(x, dict) else (tuple(x), {}) if isinstance(x, (tuple, list)) \
            else ((x,), {})
        return pick(functional_call(self.skeleton, self.tensors(params, x), args, kwargs), self.output)

    def graph_tap(self, layers: tuple[str, ...]):
        """This thread's FX rewrite of the module tapping ``layers`` (see :func:`fxai._core.taps.trace_tap`),
        or ``None`` where the hook tap serves (untraceable models, hooks FX would drop, inside torch.compile)."""
        if layers not in self._taps:
            if torch.compiler.is_compiling():
                return None  # FX cannot trace inside dynamo: the hook tap serves this call
            # two threads may trace at once: the first to finish is the one every thread binds
            self._taps.setdefault(layers, trace_tap(self._copies.master, list(layers), copy=not self._copies.share))
        tap = self._taps[layers]
        if tap is None or global_hooks():
            return None
        key = (layers, tap[0])
        if torch.compiler.is_compiling() and not self._copies.has(key):
            return None
        return self._copies.cached(key, lambda own: bind_tap(own, tap))

    def __repr__(self) -> str:
        return f"FunctionalModel({type(self.module).__name__})"


def functional(module: nn.Module, *, output=None,
               allow_training: bool = False) -> tuple[FunctionalModel, dict[str, torch.Tensor]]:
    """Split ``module`` into a pure ``model_fn`` and its ``params``.

    ``model_fn(params, x)`` equals ``module(x)``; ``params`` is a dict of the
    module's floating-point parameters **and** buffers, detached (what
    ``torch.func.functional_call`` takes). Integer and boolean buffers, such as
    BatchNorm's ``num_batches_tracked``, are left out (``model_fn`` keeps its
    own copies) and buffers are constants of ``model_fn`` (zero gradient), so
    ``torch.func.grad(loss)(params)`` works on any model. The
    module is not mutated, not even during a call: ``model_fn`` runs on its own
    structural copy of the module (one per thread, see :class:`FunctionalModel`),
    taken now, whose tensors all come from ``params``. Its training flag,
    ``requires_grad`` flags, ``.grad`` and hooks stay as they were.

    ``output`` says where the logits are in what ``module`` returns: ``None``
    takes a tensor as is, the ``logits`` of a HuggingFace ``ModelOutput`` (or
    of a dict, dataclass or named tuple) and the ``"out"`` of torchvision's
    segmentation dicts; a key (``"logits"``: a dict key or a field), an index
    (``0``: a tuple or list item) or a callable ``module_output -> logits``
    picks them otherwise (see :mod:`fxai._core.outputs`). The picking runs in
    every call, so every method sees the logits tensor.

    ``nn.DataParallel`` and ``DistributedDataParallel`` wrappers are unwrapped
    (``.module``); TorchScript modules are refused.

    A module in training mode that holds BatchNorm or Dropout layers would mix
    examples in a batch, write running statistics and draw random masks, which
    breaks every guarantee of a pure function; it is refused unless
    ``allow_training=True``, in which case ``params`` holds copies of the
    buffers and the running statistics are updated there, never in ``module``.

    Example:
        >>> import torchvision
        >>> model_fn, params = fxai.functional(torchvision.models.resnet18().eval())
        >>> logits = model_fn(params, torch.randn(2, 3, 64, 64))
        >>> grads = torch.func.grad(lambda p: model_fn(p, x).logsumexp(-1).sum())(params)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"functional(module): expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("functional(module): a TorchScript module cannot run with parameters passed in (torch.func "
                        "needs Python modules); pass the nn.Module it was scripted from")
    check_output_option(output)
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module  # the wrapped model: fxai batches and vectorises on its own
    if not allow_training:
        stateful = [name or type(module).__name__ for name, m in module.named_modules()
                    if m.training and isinstance(m, _STATEFUL_IN_TRAINING)]
        if stateful:
            shown = ", ".join(stateful[:3]) + (", ..." if len(stateful) > 3 else "")
            raise ValueError(
                f"functional(module): the module is in training mode and has BatchNorm/Dropout layers ({shown}); "
                "attributions need deterministic, per-example outputs. Call module.eval() first, "
                "or pass allow_training=True if you really mean training-mode behaviour.")
    # A training-mode forward writes running statistics into the buffers it is given: give it copies.
    own = (lambda b: b.detach().clone()) if allow_training else (lambda b: b.detach())
    params = {name: p.detach() for name, p in module.named_parameters() if _differentiable(p)}
    params.update({name: own(b) for name, b in module.named_buffers() if _differentiable(b)})
    return FunctionalModel(module, output), params


class SplitModel:
    """A pure model given as two halves: ``head(params, features(params, x))``.

    Its one layer, named ``"features"``, is the output of ``features``: the
    way to use layer methods (the CAM family) on a hand-written ``model_fn``
    that has no module to tap. Made by :func:`split`.
    """

    __slots__ = ("features", "head")
    layer = "features"

    def __init__(self, features, head):
        self.features = features
        self.head = head

    def __call__(self, params, x: torch.Tensor) -> torch.Tensor:
        return self.head(params, self.features(params, x))

    def __repr__(self) -> str:
        return f"SplitModel({getattr(self.features, '__name__', 'features')}, {getattr(self.head, '__name__', 'head')})"


def split(features, head) -> SplitModel:
    """A ``model_fn`` from two pure halves, whose layer ``"features"`` is the output of ``features``.

    ``model_fn(params, x) = head(params, features(params, x))``: both halves
    take the same ``params``. Layer methods called on it with ``layer=None`` (or
    ``"features"``) explain the ``features`` output.

    Example:
        >>> features = lambda p, x: torch.relu(torch.nn.functional.conv2d(x, p["w"]))
        >>> head = lambda p, a: a.mean((2, 3)) @ p["fc"].T
        >>> model_fn = fxai.split(features, head)
        >>> params = {"w": torch.randn(8, 3, 3, 3), "fc": torch.randn(5, 8)}
        >>> m = fxai.grad_cam(model_fn, params, x, target=0)
    """
    if not callable(features) or not callable(head):
        raise TypeError(f"split(features, head): both must be callables (params, input) -> tensor; "
                        f"got {type(features).__name__} and {type(head).__name__}")
    return SplitModel(features, head)
