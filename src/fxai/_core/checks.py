"""Argument checks shared by every public function: one clear message each."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

import torch


def check_input(x, *, name: str = "x", min_ndim: int = 2, exact_ndim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating batch tensor ``[B, ...]`` and return it."""
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(f"{name} is a {type(x).__name__}: this method takes one tensor batch [B, C, H, W]. "
                        "Structured inputs (tuples or dicts of tensors) work with gradient, input_x_gradient, "
                        "guided_backprop, deconvnet, integrated_gradients, expected_gradients, the SmoothGrad "
                        "transforms, occlusion and rise")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor batch [B, C, H, W], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (e.g. x.float()), got dtype {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shapes without values); move it to a real device")
    if exact_ndim is not None and x.ndim != exact_ndim:
        raise ValueError(f"{name} must have {exact_ndim} dimensions [B, C, H, W], got shape {tuple(x.shape)}"
                         + (" (add a batch dimension with x[None])" if x.ndim == exact_ndim - 1 else ""))
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must be a batch [B, ...] with at least {min_ndim} dimensions, "
                         f"got shape {tuple(x.shape)} (add a batch dimension with x[None])")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); give at least one input")
    return check_finite(x, name=name)


def check_finite(t: torch.Tensor, *, name: str) -> torch.Tensor:
    """Check that ``t`` holds no NaN or infinity (skipped where values cannot be read: under ``vmap`` or
    ``torch.compile``) and return it."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return t
    try:
        finite = bool(torch.isfinite(t).all())
    except RuntimeError:  # a batched tensor under vmap: no data-dependent check
        return t
    if not finite:
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''}; "
                         "every value must be finite")
    return t


def check_positive_int(value, *, name: str, allow_none: bool = False):
    """Check that ``value`` is a positive int (or None when allowed) and return it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_choice(value, choices, *, name: str):
    """Check that ``value`` is one of ``choices`` and return it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def as_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """``baseline`` (a number, a tensor broadcastable to ``x`` or a callable ``x -> tensor``) as a tensor like ``x``."""
    if callable(baseline) and not isinstance(baseline, torch.Tensor):
        baseline = baseline(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline!r}")
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a number, a tensor broadcastable to x or a callable x -> tensor; "
                        f"got {type(baseline).__name__}")
    try:
        return check_finite(baseline.to(x).expand_as(x), name="baseline")
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None


def check_map(attribution, x, *, name: str = "attribution") -> None:
    """Check that ``attribution`` is a map ``[B, H, W]`` or ``[B, C, H, W]`` matching the batch and size of ``x``."""
    if not isinstance(attribution, torch.Tensor) or not attribution.is_floating_point():
        got = attribution.dtype if isinstance(attribution, torch.Tensor) else type(attribution).__name__
        raise TypeError(f"{name} must be a floating-point map [B, H, W] or [B, C, H, W], got {got}")
    if attribution.ndim not in (3, 4) or attribution.shape[0] != x.shape[0] \
            or attribution.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"{name} must have shape [B, H, W] or [B, C, H, W] with B, H, W = {x.shape[0]}, "
                         f"{x.shape[-2]}, {x.shape[-1]} (those of x); got {tuple(attribution.shape)}. "
                         "Upsample low-resolution maps first (fxai.postprocess.upsample)")
    check_finite(attribution, name=name)


def closest(given: str, known: Iterable[str], *, n: int = 3) -> list[str]:
    """The names in ``known`` closest to ``given``, best first, at most ``n``: difflib's close matches, then the
    names that contain ``given`` or abbreviate to it (its letters in order, e.g. ``intgrad``)."""
    known = list(dict.fromkeys(known))
    close = difflib.get_close_matches(given, known, n=n, cutoff=0.6)
    lowered = given.lower()

    def abbreviates(name):
        rest = iter(name.lower())
        return all(c in rest for c in lowered)

    close += [k for k in known if lowered and k not in close and (lowered in k.lower() or abbreviates(k))]
    return close[:n]


def unknown_name(what: str, given: str, known: Iterable[str], *, listing: str | None = None) -> str:
    """The message for a ``what`` called ``given`` that is not among ``known``: the closest names first, then
    ``listing`` (default: every known name), e.g. ``unknown method 'intgrad'; did you mean 'integrated_gradients'?
    available methods (27): ...``."""
    known = list(dict.fromkeys(known))
    close = closest(given, known)
    text = f"unknown {what} {given!r}"
    if close:
        quoted = [repr(c) for c in close]
        text += "; did you mean " + (f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]) + "?"
    if listing is None:
        listing = f"available {what}s ({len(known)}): " + ", ".join(known)
    return f"{text} {listing}" if close else f"{text}; {listing}"

