"""Op interception: replace torch operations by rules within a block, with no hooks.

An :class:`Op` is one operation with every spelling torch offers for it
(``nn.ReLU`` and ``nn.ReLU(inplace=True)`` end in ``F.relu``; ``torch.relu``,
``Tensor.relu``, ``F.relu_``, ``Tensor.relu_``, ``torch.ops.aten.relu``...). An
:class:`Intercept` mode sends each call of an op to a rule
``rule(op, operands, options) -> output`` with the arguments bound to one form
(tensor operands, keyword options); in-place spellings are run out of place
and written back into their first operand, which the rule receives as a copy
when it asks to keep its inputs. Calls of any other function run unchanged,
and the mode is active only inside its ``with`` block, so nothing is left
behind after an exception.

:class:`Recorder` and :class:`Replayer` are rules for two passes through the
same model: the first stores every intercepted call's operands in call order,
the second hands call k its k-th record. Calls are matched by order, not by
module, so a module called twice is two calls, and in-place ops and
functional calls are caught like modules. A second pass whose ops differ from
the first raises :class:`RouteError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch.overrides import TorchFunctionMode


@dataclass(frozen=True, eq=False)
class Op:
    """An operation and its spellings.

    ``bind(*args, **kwargs)`` maps a call to ``(operands, options, inplace)``,
    or ``None`` for a call the op does not cover (e.g. a product with a
    Python number); ``compute(*operands, **options)`` is its plain forward.
    Spellings in ``in_place`` write into their first operand.
    """

    name: str
    bind: Callable
    compute: Callable
    out_of_place: tuple = ()
    in_place: tuple = ()


class Intercept(TorchFunctionMode):
    """Within the block, each call of an op in ``rules`` returns ``rules[op](op, operands, options)``.

    ``copy_inplace``: an in-place call passes a copy of its first operand to the
    rule (for rules that keep their inputs for the backward, since the operand
    is overwritten by the result); a callable ``copy_inplace(op, operand)`` returns
    the tensor to pass instead. ``observe(func, args, kwargs, out)``, if given, sees
    every other call after it ran, with its result.
    """

    def __init__(self, rules: Mapping[Op, Callable], *, copy_inplace: bool | Callable = False,
                 observe: Callable | None = None):
        super().__init__()
        self.table = {}
        for op, rule in rules.items():
            self.table.update({f: (op, rule, False) for f in op.out_of_place})
            self.table.update({f: (op, rule, True) for f in op.in_place})
        self.copy_inplace, self.observe = copy_inplace, observe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = self.table.get(func)
        bound = None if entry is None else entry[0].bind(*args, **kwargs)
        if bound is None:
            out = func(*args, **kwargs)
            if self.observe is not None:
                self.observe(func, args, kwargs, out)
            return out
        op, rule, inplace = entry
        operands, options, flag = bound
        if not (inplace or flag):
            return rule(op, operands, options)
        dest = operands[0]
        if callable(self.copy_inplace):
            operands = (self.copy_inplace(op, dest),) + tuple(operands[1:])
        elif self.copy_inplace:
            operands = (dest.clone(),) + tuple(operands[1:])
        return dest.copy_(rule(op, operands, options))


@contextlib.contextmanager
def intercept(rules: Mapping[Op, Callable], **options):
    """Context manager form of :class:`Intercept`."""
    with Intercept(rules, **options):
        yield


class RouteError(ValueError):
    """The second pass through a model called other ops than the first."""


class Recorder:
    """Rule for a first pass: computes each op plainly and keeps ``(op, operands)`` in call order."""

    def __init__(self):
        self.calls: list[tuple[Op, tuple]] = []

    def __call__(self, op, operands, options):
        self.calls.append((op, tuple(operands)))
        return op.compute(*operands, **options)


@dataclass
class Replayer:
    """Rule for a second pass: call k goes to ``rules[op.name](op, operands, recorded, options, truth[k])``
    with the operands of the first pass's k-th call (``truth``: optional per-call data of a third pass over the
    same route, ``None`` without).

    ``match(recorded, live)`` adapts a recorded operand to the live one (e.g. repeats
    reference rows) or returns ``None`` when they cannot belong together. Call
    :meth:`finish` after the pass: it checks that every recorded call was replayed.
    """

    calls: list
    rules: Mapping[str, Callable]
    match: Callable
    what: str = "the two passes"
    truth: list | None = None
    position: int = field(default=0)

    def __call__(self, op, operands, options):
        k = self.position
        if k >= len(self.calls):
            raise RouteError(f"{self.what} took different routes through the model: call {k + 1} ({op.name}) "
                             f"has no counterpart (the first pass made {len(self.calls)} calls)")
        first, recorded = self.calls[k]
        if first.name != op.name or len(recorded) != len(operands):
            raise RouteError(f"{self.what} took different routes through the model: call {k + 1} is {op.name} "
                             f"here and {first.name} in the first pass")
        matched = []
        for r, o in zip(recorded, operands):
            m = self.match(r, o)
            if m is None:
                raise RouteError(f"{self.what} took different routes through the model: call {k + 1} ({op.name}) "
                                 f"has an operand of shape {tuple(o.shape)} here and {tuple(r.shape)} in the "
                                 "first pass")
            matched.append(m)
        self.position = k + 1
        truth = None if self.truth is None else self.truth[k]
        return self.rules[op.name](op, tuple(operands), tuple(matched), options, truth)

    def finish(self):
        if self.position != len(self.calls):
            raise RouteError(f"{self.what} took different routes through the model: {self.position} intercepted "
                             f"calls here, {len(self.calls)} in the first pass")
