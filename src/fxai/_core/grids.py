"""Layer outputs read as spatial grids ``[N, C, h, w]``: channels-first maps, channels-last maps, ViT tokens."""

from __future__ import annotations

import torch


def _grid_matches(h: int, w: int, size, tol: float = 1.0) -> bool:
    """Whether an ``h x w`` grid has the aspect of an input of ``size`` (within ``tol`` cells of rounding)."""
    big_h, big_w = size
    return h >= 1 and w >= 1 and abs(w - big_w * h / big_h) <= tol


# Leading tokens a ViT may put before its patches: none, a class token, class + distillation token (DeiT),
# class + 4, 8 or 16 register tokens, registers alone. An exact grid is looked for first with each of them.
_PREFIXES = (0, 1, 2, 5, 9, 17, 4, 8, 16)


def _token_grid(tokens: int, size) -> tuple[int, int, int] | None:
    """``(dropped, h, w)``: leading tokens to drop (see ``_PREFIXES``) and the grid of the rest."""
    big_h, big_w = size
    for tol, prefixes in ((0.0, _PREFIXES), (1.0, (0, 1, 2))):
        for dropped in prefixes:
            n = tokens - dropped
            if n < 1:
                continue
            h = max(1, round((n * big_h / big_w) ** 0.5))
            for cand in (h, h - 1, h + 1):
                if cand >= 1 and n % cand == 0 and _grid_matches(cand, n // cand, size, tol):
                    return dropped, cand, n // cand
    return None


def to_grid(activation: torch.Tensor, reshape=None, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A layer's activation (or gradient) as a spatial grid ``[N, C, h, w]``.

    - ``reshape`` given: ``reshape(activation)``, which must return ``[N, C, h, w]``.
    - ``[N, C, h, w]`` is returned as is; ``[N, h, w, C]`` (channels last, e.g. Swin)
      is permuted to ``[N, C, h, w]`` when only that reading has the aspect of the
      input (``size = (H, W)``, square if not given); a tie reads as channels first.
    - ``[N, T, D]`` tokens (vision transformers): the grid is inferred from ``T``
      with the input's aspect, dropping the leading tokens that are not patches
      when the rest make the grid exactly: a class token (ViT), class and
      distillation tokens (DeiT), a class token and 4, 8 or 16 registers
      (timm's ``vit_*_reg*``, DINOv2 with registers); ``[N, D, h, w]`` is returned.

    Apply the same call to activations and their gradients: the choice depends
    only on the shape. Pass ``reshape=`` when the layout is ambiguous (other
    numbers of leading tokens, sequence-first layouts).

    Example:
        >>> to_grid(torch.zeros(2, 1 + 49, 768)).shape   # ViT-B/16 at 112x112
        torch.Size([2, 768, 7, 7])
    """
    size = (1, 1) if size is None else tuple(size)
    if reshape is not None:
        out = reshape(activation)
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"reshape must return a grid [N, C, h, w], got {got}")
        return out
    if activation.ndim == 4:
        _, a, b, c = activation.shape
        for tol in (0.0, 1.0):
            nhwc, nchw = _grid_matches(a, b, size, tol), _grid_matches(b, c, size, tol)
            if nhwc != nchw:
                return activation.permute(0, 3, 1, 2) if nhwc else activation
        return activation
    if activation.ndim == 3:
        n, tokens, dim = activation.shape
        grid = _token_grid(tokens, size)
        if grid is None:
            raise ValueError(f"cannot read {tokens} tokens of a layer output {tuple(activation.shape)} as a spatial "
                             f"grid for an input of size {size}; pass reshape= (a callable returning [N, C, h, w])")
        dropped, h, w = grid
        return activation[:, dropped:, :].reshape(n, h, w, dim).permute(0, 3, 1, 2)
    raise ValueError(f"a layer output of shape {tuple(activation.shape)} is not a spatial map; expected [N, C, h, w], "
                     "[N, h, w, C] or tokens [N, T, D], or pass reshape= (a callable returning [N, C, h, w])")
