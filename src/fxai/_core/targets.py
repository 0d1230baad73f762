"""Targets: which score of the model an attribution explains.

A target is an ``int`` (one class for every input; a one-element tensor or a
numpy integer too), a ``LongTensor[B]`` (one class per input; a list, tuple or
numpy array of ints too), a ``LongTensor[B, K]`` (K classes per input, maps
``[B, K, ...]``), ``None`` (the top-1 class on the clean input) or a callable
``logits -> scores`` returning one score per input, ``[B]``, from the logits
of the batch, for segmentation masks, boxes or softmax scores.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from . import structured
from .checks import check_finite

TargetLike = int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass(frozen=True)
class Target:
    """A validated target for a batch of ``batch`` inputs.

    Exactly one form is set: ``index`` (``LongTensor[B, K]``), ``fn`` (a
    callable on logits), or neither for top-1. ``multi`` says whether maps carry
    a K axis.
    """

    batch: int
    index: torch.Tensor | None = None
    fn: Callable | None = None
    multi: bool = False

    @property
    def top1(self) -> bool:
        return self.index is None and self.fn is None

    def scores(self, logits: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scores ``[n]`` (or ``[n, K]``) of ``n`` stacked rows of logits.

        Row ``i`` of ``logits`` belongs to input ``(start + i) % batch``: inputs
        may be stacked as repeats (noise samples, path steps) of the batch.
        """
        if self.fn is not None:
            return _call_fn(self.fn, logits, self.group)
        if logits.ndim != 2:
            raise ValueError(f"target: a class-index target needs logits [B, classes], got logits of shape "
                             f"{tuple(logits.shape)}; pass a callable target to reduce them to scores")
        if self.index is None:
            index = logits.detach().argmax(-1, keepdim=True)
        else:
            _check_range(self.index, logits.shape[-1])
            rows = torch.arange(start, start + logits.shape[0], device=self.index.device) % self.batch
            index = self.index.index_select(0, rows).to(logits.device)
        out = logits.gather(1, index)
        return out if self.multi else out.squeeze(1)

    def fixed(self, model_fn, params, x: torch.Tensor) -> "Target":
        """This target with top-1 resolved on the clean input ``x`` (one forward, no gradient)."""
        if not self.top1:
            return self
        with torch.no_grad():
            logits = model_fn(params, structured.clone(x))  # a copy: a model may write into its input
        check_logits(logits, x)
        return Target(self.batch, index=logits.argmax(-1, keepdim=True).detach())

    def stacked(self, repeats: int) -> "TargetLike":
        """A target for ``repeats`` copies of the batch stacked repeat-major (``[R * B, ...]``).

        Class indices are repeated; a callable is marked to score one whole batch
        of ``B`` rows at a time (vmapped over the copies).
        """
        if self.fn is not None:
            return _Grouped(self.fn, self.group)
        if self.index is None:
            raise ValueError("target: resolve top-1 on the clean input (Target.fixed) before stacking copies")
        index = self.index.repeat(repeats, 1)
        return index if self.multi else index[:, 0]

    @property
    def group(self) -> int:
        """Smallest number of stacked rows that can be scored alone (a whole batch for callables)."""
        return getattr(self.fn, "rows_per_group", self.batch) if self.fn is not None else 1


class _Grouped:
    """A callable target for stacked copies of a batch, scored ``rows_per_group`` rows at a time."""

    def __init__(self, fn, rows_per_group: int):
        self.fn, self.rows_per_group = fn, rows_per_group

    def __call__(self, logits):
        return self.fn(logits)


def as_target(target: TargetLike, x: torch.Tensor, *, name: str = "target") -> Target:
    """Validate ``target`` for the batch ``x`` (a tensor or a structured input) and return a :class:`Target`."""
    batch, device = structured.batch_size(x), structured.device_of(x)
    if target is None:
        return Target(batch)
    if callable(target) and not isinstance(target, torch.Tensor):
        return Target(batch, fn=target)
    if isinstance(target, bool):
        raise TypeError(f"{name} must be an int, a LongTensor [B] or [B, K], None or a callable; got a bool")
    if isinstance(target, numbers.Integral) and not isinstance(target, int):  # numpy integers
        target = int(target)
    if isinstance(target, (list, tuple, np.ndarray)):
        target = _from_sequence(target, name)
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"{name} must be a non-negative class index, got {target}")
        return Target(batch, index=torch.full((batch, 1), target, dtype=torch.long, device=device))
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got dtype {target.dtype}")
        if target.ndim == 0 or (target.shape == (1,) and batch != 1):  # one class for the whole batch
            return as_target(int(target.reshape(())), x, name=name)
        if target.ndim > 2 or target.shape[0] != batch or (target.ndim == 2 and target.shape[1] == 0):
            raise ValueError(f"{name} must have shape [B] or [B, K] with B = {batch} (the batch of x), "
                             f"got shape {tuple(target.shape)}")
        if target.numel() and not torch.compiler.is_compiling() and int(target.min()) < 0:
            raise ValueError(f"{name} holds negative class indices (min {int(target.min())})")
        index = target.long().to(device)
        return Target(batch, index=index if target.ndim == 2 else index[:, None], multi=target.ndim == 2)
    raise TypeError(f"{name} must be an int, a LongTensor [B] or [B, K], None or a callable logits -> scores; "
                    f"got {type(target).__name__}")


def _from_sequence(target, name: str) -> torch.Tensor:
    """A list, tuple or numpy array of class indices as a LongTensor (``[B]`` or, nested, ``[B, K]``)."""
    try:
        array = np.asarray(target)
    except ValueError:
        raise ValueError(f"{name}: a nested list of class indices must be rectangular, [B] or [B, K]") from None
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        if array.size == 0:
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class indices; got a {type(target).__name__} of "
                            f"{array.dtype} (e.g. {target[0]!r})")
    return torch.from_numpy(array.astype(np.int64))


def check_logits(logits, x: torch.Tensor) -> None:
    """Check that ``model_fn`` returned a batch of outputs for the batch ``x``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model_fn must return a tensor of logits, got {type(logits).__name__}")
    batch = structured.batch_size(x)
    if logits.ndim == 0 or logits.shape[0] != batch:
        raise ValueError(f"model_fn returned shape {tuple(logits.shape)} for an input batch of {batch}; "
                         "x must be a batch [B, C, H, W] and model_fn must return [B, classes]")
    check_finite(logits, name="model_fn's output (for finite x)")


def _check_range(index: torch.Tensor, classes: int) -> None:
    if torch.compiler.is_compiling():
        return
    if index.numel() and int(index.max()) >= classes:
        raise ValueError(f"target: class index {int(index.max())} is out of range for a model with {classes} outputs")


def _call_fn(fn, logits, group):
    n = logits.shape[0]
    if n == group:
        return _checked_scores(fn, logits)
    return vmap(lambda rows: _checked_scores(fn, rows))(logits.reshape(n // group, group, *logits.shape[1:])).flatten(0, 1)


def _checked_scores(fn, logits):
    """``fn(logits)``, checked to be one floating score per row: ``[N]`` for logits ``[N, ...]``."""
    out = fn(logits)
    if not isinstance(out, torch.Tensor) or out.shape != logits.shape[:1] or not out.is_floating_point():
        got = f"shape {tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"target: a callable target must return one floating score per input, a tensor [B] = "
                         f"[{logits.shape[0]}] for logits {tuple(logits.shape)}; got {got}. For K scores per "
                         "input, pass class indices as a LongTensor [B, K] or call once per score")
    return out


def scored_model(model_fn, softmax: bool):
    """``model_fn``, or ``softmax(model_fn(params, x))`` when ``softmax`` is True."""
    if not isinstance(softmax, bool):
        raise TypeError(f"softmax must be True (score probabilities) or False (score logits), got {softmax!r}")
    if not softmax:
        return model_fn
    return lambda params, x: probabilities(model_fn(params, x))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of logits ``[N, classes]``: the softmax, or the sigmoid of a single logit (a binary
    classifier's one output, whose softmax would be 1 whatever the input)."""
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else logits.softmax(-1)


def one_per_input(model_fn, params, x, target):
    """The target with top-1 fixed on the clean ``x``; one score per input (no ``[B, K]`` targets)."""
    tgt = as_target(target, x)
    if tgt.multi:
        raise ValueError("target: metrics score one class per input; pass an int, a LongTensor [B], None or a "
                         "callable, not a LongTensor [B, K]")
    return tgt.fixed(model_fn, params, x)
