"""Explicit randomness: a ``key`` is an int seed or a ``torch.Generator``."""

from __future__ import annotations

import inspect

import torch

Key = int | torch.Generator


def generator(key: Key | None, *, name: str = "key") -> torch.Generator:
    """A generator for ``key``; an int seeds a fresh CPU generator.

    Randomised methods take ``key`` keyword-only and refuse to run without it, so
    that every map can be reproduced.
    """
    if key is None:
        raise TypeError(f"{name} is required for a randomised method: pass an int seed or a torch.Generator, "
                        f"e.g. {name}=0")
    if isinstance(key, torch.Generator):
        return key
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"{name} must be an int seed or a torch.Generator, got {type(key).__name__}")
    return torch.Generator().manual_seed(key)


def _draw(sampler, shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    out = sampler(shape, gen)
    return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else out.dtype)


def normal(key: Key | None, shape, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``key``, placed on ``like``'s device and dtype.

    Noise is drawn on the generator's device in one call, so the same key gives
    the same numbers however the work is chunked later.
    """
    gen = generator(key)
    return _draw(lambda s, g: torch.randn(s, generator=g, device=g.device), shape, gen, like)


def uniform(key: Key | None, shape, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) samples of ``shape`` drawn from ``key`` (see :func:`normal`)."""
    gen = generator(key)
    return _draw(lambda s, g: torch.rand(s, generator=g, device=g.device), shape, gen, like)


def integers(key: Key | None, high: int, shape, like: torch.Tensor) -> torch.Tensor:
    """Integers in ``[0, high)`` of ``shape`` drawn from ``key``, on ``like``'s device."""
    gen = generator(key)
    return torch.randint(high, shape, generator=gen, device=gen.device).to(like.device)


def takes_key(method) -> bool:
    """Whether ``method`` accepts a ``key`` keyword (a randomised method)."""
    try:
        return "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def split_key(key, *, needed: bool):
    """``(tie_key, imputer_seed)`` from ``key``: a generator for tie-breaking and an int seed for the imputer."""
    if key is None:
        if needed:
            generator(None)
        return None, None
    gen = generator(key)
    seed = int(torch.randint(2**62, (), generator=gen, device=gen.device))
    return gen, seed
