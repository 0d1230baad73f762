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
import threading

import torch
from torch import nn


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta


def skeleton(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every parameter and buffer replaced by a ``meta`` placeholder."""
    memo = {}
    for m in module.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and id(t) not in memo:
                memo[id(t)] = _placeholder(t)
    return copy.deepcopy(module, memo)


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


@torch.compiler.disable  # a copy is plain Python; inside torch.compile it runs eagerly
def _copy(master: nn.Module) -> nn.Module:
    return copy.deepcopy(master)
