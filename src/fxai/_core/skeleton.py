"""A module's structure without its tensors: what ``model_fn`` runs, one copy per thread.

``torch.func.functional_call`` swaps the tensors it is given into the module's
attributes while it runs. Run on the user's module, that makes two threads
corrupt each other (and the module: plain tensors in place of parameters,
``meta`` weights after a dry run). A skeleton is a deep copy of the module whose
parameters and buffers are placeholders on the ``meta`` device: every tensor
comes through ``params`` at call time, the user's module is never run, and each
thread runs its own copy, so no swap is ever seen by another thread.

The copy keeps everything else of the module as it is at the copy: submodules,
hooks, training flags and Python attributes (tied parameters stay tied).
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict

import torch
from torch import nn

from .eager import eager


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta


def skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every parameter and buffer replaced by a ``meta`` placeholder."""
    memo = {}
    for m in module.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = _placeholder(t)
    return _structural_copy(module, memo)


def copy_skeleton(master: nn.Module) -> nn.Module:
    """Another copy of a skeleton, sharing its placeholders (calls replace them, never change them)."""
    memo = {id(t): t for m in master.modules() for t in (*m._parameters.values(), *m._buffers.values())
            if t is not None}
    return _structural_copy(master, memo)


_COPY_PROTOCOL = ("__deepcopy__", "__copy__", "__reduce_ex__", "__reduce__", "__getstate__", "__setstate__")


@functools.lru_cache(maxsize=1024)
def _plain(cls: type) -> bool:
    """Whether an instance of ``cls`` is its ``__dict__``: no slots, nothing of the copy protocol of its own."""
    own = [k for k in cls.__mro__ if k not in (nn.Module, object)]
    for k in own:
        shim = k.__module__.startswith("torch.nn.")  # torch's __setstate__ only fills attributes old pickles lack
        if any(name in k.__dict__ for name in (*_COPY_PROTOCOL, "__slots__", "__new__")
               if not (shim and name == "__setstate__")):
            return False
    return True


_EMPTY = (dict, OrderedDict, set, list)


def _structural_copy(module: nn.Module, memo: dict) -> nn.Module:
    """``copy.deepcopy(module, memo)``, made faster for plain modules (the common case) by copying their
    ``__dict__`` directly: submodules, parameters and buffers by ``memo``, empty hook dicts as new ones."""
    modules = list(module.modules())
    if not all(_plain(type(m)) for m in modules):
        return copy.deepcopy(module, memo)
    for m in modules:  # shells first: a hook bound to any of them is rebound by deepcopy through memo
        memo[id(m)] = m.__class__.__new__(m.__class__)
    for m in modules:
        state = {}
        for k, v in m.__dict__.items():
            if k in ("_parameters", "_buffers", "_modules"):
                state[k] = type(v)((n, None if t is None else memo[id(t)]) for n, t in v.items())
            elif k == "_compiled_call_impl":
                continue  # as nn.Module.__getstate__ does
            elif type(v) in _EMPTY and not v:
                state[k] = type(v)()
            else:
                state[k] = copy.deepcopy(v, memo)
        memo[id(m)].__dict__.update(state)
    return memo[id(module)]


class ThreadCopies:
    """One copy of ``master`` per thread, made on first use; ``master`` itself is never run nor changed."""

    def __init__(self, master: nn.Module, *, share: bool = False):
        self.master = master
        self.share = share  # the module could not be copied: every thread gets ``master`` itself
        self._local = threading.local()

    def get(self) -> nn.Module:
        own = getattr(self._local, "module", None)
        if own is None:
            own = self.master if self.share else _copy(self.master)
            self._local.module = own
        return own

    def has(self, key) -> bool:
        """Whether this thread has made ``key`` already (see :meth:`cached`)."""
        return key in getattr(self._local, "cache", {})

    def cached(self, key, build):
        """``build(self.get())``, made once per thread and ``key``."""
        store = getattr(self._local, "cache", None)
        if store is None:
            store = self._local.cache = {}
        if key not in store:
            store[key] = build(self.get())
        return store[key]


@eager  # a copy is plain Python; inside torch.compile it runs eagerly
def _copy(master: nn.Module) -> nn.Module:
    return copy_skeleton(master)
