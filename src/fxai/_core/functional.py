"""Pure model functions ``model_fn(params, x) -> logits``: a module made functional, or two pure halves."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from .taps import graph_tap

_STATEFUL_IN_TRAINING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.AlphaDropout)


class FunctionalModel:
    """A module seen as a pure function of ``(params, x)``.

    Calling it runs ``torch.func.functional_call(module, params, (x,))``: the
    module's own parameters and buffers are never read or written, so the same
    object can be differentiated, vmapped and compiled with respect to
    ``params``. ``module`` is kept for layer access (CAM methods); the FX
    rewrites that tap its layers are built on first use and kept here, so a
    module whose structure changes afterwards needs a new ``functional()``.
    """

    __slots__ = ("module", "_taps")

    def __init__(self, module: nn.Module):
        self.module = module
        self._taps = {}

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (x,))

    def graph_tap(self, layers: tuple[str, ...]):
        """The module rewritten by FX to tap ``layers`` (see :func:`fxai._core.taps.graph_tap`), built once."""
        if layers not in self._taps:
            if torch.compiler.is_compiling():
                return None  # FX cannot trace inside dynamo: the hook tap serves this call
            self._taps[layers] = graph_tap(self.module, list(layers))
        return self._taps[layers]

    def __repr__(self) -> str:
        return f"FunctionalModel({type(self.module).__name__})"


def functional(module: nn.Module, *, allow_training: bool = False) -> tuple[FunctionalModel, dict[str, torch.Tensor]]:
    """Split ``module`` into a pure ``model_fn`` and its ``params``.

    ``model_fn(params, x)`` equals ``module(x)``; ``params`` is a dict of the
    module's parameters **and** buffers, detached (``torch.func.functional_call``
    takes both). The module is not mutated: its training flag, ``requires_grad``
    flags, ``.grad`` and hooks stay as they were.

    A module in training mode that holds BatchNorm or Dropout layers would mix
    examples in a batch, write running statistics and draw random masks, which
    breaks every guarantee of a pure function; it is refused unless
    ``allow_training=True``, in which case ``params`` holds copies of the
    buffers and the running statistics are updated there, never in ``module``.

    Example:
        >>> import torchvision
        >>> model_fn, params = fxai.functional(torchvision.models.resnet18().eval())
        >>> logits = model_fn(params, torch.randn(2, 3, 64, 64))
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"functional(module): expected a torch.nn.Module, got {type(module).__name__}")
    if not allow_training:
        stateful = [name or type(module).__name__ for name, m in module.named_modules()
                    if m.training and isinstance(m, _STATEFUL_IN_TRAINING)]
        if stateful:
            shown = ", ".join(stateful[:3]) + (", ..." if len(stateful) > 3 else "")
            raise ValueError(
                f"functional(module): the module is in training mode and has BatchNorm/Dropout layers ({shown}); "
                "attributions need deterministic, per-example outputs. Call module.eval() first, "
                "or pass allow_training=True if you really mean training-mode behaviour.")
    params = {name: p.detach() for name, p in module.named_parameters()}
    # A training-mode forward writes running statistics into the buffers it is given: give it copies.
    own = (lambda b: b.detach().clone()) if allow_training else (lambda b: b.detach())
    params.update({name: own(b) for name, b in module.named_buffers()})
    return FunctionalModel(module), params


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
