"""Picking the logits out of what a module returns: a tensor, a tuple, a dict, a dataclass, a ``ModelOutput``.

``fxai.functional(module, output=...)`` names the logits once; every call of
``model_fn`` then picks them with :func:`pick`, a pure selection that runs
inside every method (under ``vmap``, ``grad`` and ``torch.compile``):

- ``output=None``: a tensor is returned as is; an object with ``logits`` (a
  HuggingFace ``ModelOutput``, a dict with a ``"logits"`` key, a dataclass or
  named tuple with a ``logits`` field) gives its logits; a dict with an
  ``"out"`` key (torchvision's segmentation models, whose ``"aux"`` head only
  serves training) gives ``"out"``. Anything else is an error that says what
  came back and what to pass.
- ``output="key"``: the key of a mapping, else the attribute (dataclass
  field, named-tuple field, ``ModelOutput`` field).
- ``output=0`` (an int): the item of a tuple or list (negative counts from the
  end; a ``ModelOutput`` is read as its tuple of set fields).
- ``output=callable``: ``output(module_output) -> tensor``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch

OutputLike = str | int | Callable | None
_DEFAULT_KEYS = ("logits", "out")


def check_output_option(output) -> None:
    """``output`` is ``None``, a key (``str``), an index (``int``) or a callable (checked at ``functional()`` time)."""
    if output is None or isinstance(output, str) or callable(output):
        return
    if isinstance(output, int) and not isinstance(output, bool):
        return
    raise TypeError(f"functional(module, output=...): expected None, a key such as 'logits', an index such as 0 or a "
                    f"callable module_output -> logits; got {type(output).__name__} {output!r}")


def _keys(out) -> list[str] | None:
    """The keys or field names of ``out``, or ``None`` for an object that has neither."""
    if isinstance(out, Mapping):
        return [str(k) for k in out.keys()]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [f.name for f in dataclasses.fields(out)]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return list(out._fields)
    return None


def describe(out) -> str:
    """What a module returned, for error messages: its type with its keys, fields or length."""
    name = type(out).__name__
    keys = _keys(out)
    if keys is not None:
        return f"{name} with keys {keys}" if isinstance(out, Mapping) else f"{name} with fields {keys}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(type(v).__name__ if not isinstance(v, torch.Tensor) else f"tensor {tuple(v.shape)}"
                          for v in out[:4])
        return f"{name} of length {len(out)} ({inner}{', ...' if len(out) > 4 else ''})"
    if isinstance(out, torch.Tensor):
        return f"tensor {tuple(out.shape)}"
    return name


def _default(out):
    if isinstance(out, torch.Tensor):
        return out
    for key in _DEFAULT_KEYS:
        if isinstance(out, Mapping) and key in out:
            return out[key]
        if key == "logits" and not isinstance(out, Mapping) and isinstance(getattr(out, key, None), torch.Tensor):
            return getattr(out, key)
    hint = _hint(out)
    raise TypeError(f"model_fn: the module returned {describe(out)}, not a tensor of logits, and fxai cannot tell "
                    f"which part holds them; pass {hint} to fxai.functional(module, output=...)")


def _hint(out) -> str:
    keys = _keys(out)
    if keys:
        return f"output={keys[0]!r} (a key or field), output=0 (an index) or output=callable (output -> logits)"
    if isinstance(out, (tuple, list)):
        return "output=0 (the index of the logits) or output=callable (output -> logits)"
    return "output=callable (module output -> logits tensor)"


def _by_key(out, key: str):
    if isinstance(out, Mapping):
        if key in out:
            return out[key]
    elif hasattr(out, key):
        return getattr(out, key)
    keys = _keys(out)
    present = f"the keys present are {keys}" if isinstance(out, Mapping) else (
        f"its fields are {keys}" if keys is not None else "it has no such attribute")
    raise KeyError(f"functional(module, output={key!r}): the module returned {describe(out)}, which has no "
                   f"{key!r}; {present}")


def _by_index(out, index: int):
    if isinstance(out, Mapping) and hasattr(out, "to_tuple"):  # a HuggingFace ModelOutput: its set fields in order
        out = out.to_tuple()
    if not isinstance(out, (tuple, list)):
        raise TypeError(f"functional(module, output={index}): an index needs a tuple or list output; the module "
                        f"returned {describe(out)}; {_hint(out).replace('output=0 (an index) or ', '')}")
    if not -len(out) <= index < len(out):
        raise IndexError(f"functional(module, output={index}): the module returned {describe(out)}; the index is "
                         f"out of range")
    return out[index]


def pick(out, output: OutputLike):
    """The logits in a module's output ``out``, as ``output`` says (see the module docstring)."""
    if output is None:
        picked = _default(out)
    elif isinstance(output, str):
        picked = _by_key(out, output)
    elif isinstance(output, int):
        picked = _by_index(out, output)
    else:
        picked = output(out)
    if not isinstance(picked, torch.Tensor):
        how = "output=None" if output is None else f"output={output!r}"
        raise TypeError(f"functional(module, {how}): picked {describe(picked)} from the module's {describe(out)}; "
                        "the logits must be a tensor")
    return picked
