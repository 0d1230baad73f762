"""The altered datasets of ROAR and KAR: the top (ROAR) or bottom (KAR) fraction of each image's pixels by
its map, replaced by the per-channel dataset mean or by ROAD's noisy linear imputation.

Ties in a map are broken by one fixed pseudo-random order of the pixel positions (the same for every
image and every run): deterministic, and not biased towards any corner of the image as a row-major
order would be (a map that is constant over a region, such as a thresholded CAM or a binary mask,
removes a spread-out part of that region, not its top rows).
"""

from __future__ import annotations

import torch

from .._core.checks import check_choice, check_positive_int
from ..metrics.imputers import noisy_linear

MODES = ("roar", "kar")
FILLS = ("mean", "noisy_linear")
_TIE_SEED = 0x5EED


def tie_order(pixels: int, device=None) -> torch.Tensor:
    """The fixed order in which tied pixels are taken: a permutation of ``range(pixels)``."""
    return torch.randperm(pixels, generator=torch.Generator().manual_seed(_TIE_SEED)).to(device)


def removal_mask(maps: torch.Tensor, fraction: float, mode: str) -> torch.Tensor:
    r"""The pixels to replace, ``bool [B, H, W]``: the :math:`k = \mathrm{round}(t \cdot HW)` pixels of
    largest (``"roar"``) or smallest (``"kar"``) map value, ties broken by :func:`tie_order`.

    Example:
        >>> fxai.roar.removal_mask(torch.tensor([[[0.1, 0.9], [0.5, 0.2]]]), 0.5, "roar").tolist()
        [[[False, True], [True, False]]]
    """
    check_choice(mode, MODES, name="mode")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a tensor [B, H, W], got {getattr(maps, 'shape', type(maps).__name__)}")
    b, h, w = maps.shape
    flat = maps.reshape(b, h * w).float()
    if not torch.isfinite(flat).all():
        raise ValueError("maps hold NaN or infinite values")
    k = int(round(fraction * h * w))
    perm = tie_order(h * w, maps.device)
    order = flat[:, perm].argsort(dim=1, descending=(mode == "roar"), stable=True)
    chosen = perm[order[:, :k]]
    return torch.zeros(b, h * w, dtype=torch.bool, device=maps.device).scatter_(1, chosen, True).view(b, h, w)


def fill_with(x: torch.Tensor, mask: torch.Tensor, fill: str, *, mean: torch.Tensor | None = None,
              noise: float = 0.01, key=None) -> torch.Tensor:
    """``x [B, C, H, W]`` with the pixels of ``mask [B, H, W]`` replaced: by ``mean`` (``[C]``, the
    per-channel dataset mean; ``fill="mean"``) or by :class:`fxai.metrics.noisy_linear` imputation with
    noise std ``noise`` drawn from ``key`` (``fill="noisy_linear"``)."""
    check_choice(fill, FILLS, name="fill")
    if fill == "mean":
        if mean is None or not isinstance(mean, torch.Tensor) or mean.shape != (x.shape[1],):
            raise ValueError(f"fill='mean' needs mean, a tensor [C] with C = {x.shape[1]}, "
                             f"got {getattr(mean, 'shape', mean)!r}")
        return torch.where(mask[:, None], mean.to(x).view(1, -1, 1, 1), x)
    return noisy_linear(noise)(x, mask[None], key=key)[0]


def alter(images: torch.Tensor, maps: torch.Tensor, *, fraction: float, mode: str, fill: str,
          mean: torch.Tensor | None = None, noise: float = 0.01, key: int = 0, batch_size: int = 256,
          device=None) -> torch.Tensor:
    r"""The altered dataset: every image with the fraction ``fraction`` of its pixels replaced.

    ROAR (``mode="roar"``) replaces the most relevant pixels, KAR (``"kar"``) the least relevant ones
    (Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019);
    the fill is the per-channel dataset ``mean`` (Hooker et al.'s choice) or ROAD's noisy linear
    imputation (Rong et al., ICML 2022), which leaks far less of the removed region's shape. Computed
    in batches of ``batch_size`` on ``device``; batch ``j`` draws its noise from seed ``key + j``, so
    the result does not depend on the device count.

    Args:
        images: ``[N, C, H, W]``.
        maps: ``[N, H, W]``, the maps of ``images`` (any float dtype).
        fraction, mode, fill, mean, noise: see :func:`removal_mask` and :func:`fill_with`.

    Returns:
        ``[N, C, H, W]`` on ``device`` (default: the device of ``images``).

    Example:
        >>> maps = fxai.roar.sobel_map(x)
        >>> altered = fxai.roar.alter(x, maps, fraction=0.5, mode="roar", fill="mean", mean=x.mean((0, 2, 3)))
    """
    check_positive_int(batch_size, name="batch_size")
    if images.ndim != 4 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must have shape [N, H, W] = {(images.shape[0], *images.shape[-2:])} to match "
                         f"images {tuple(images.shape)}, got {tuple(maps.shape)}")
    device = images.device if device is None else torch.device(device)
    out = torch.empty(images.shape, dtype=images.dtype, device=device)
    for j, a in enumerate(range(0, images.shape[0], batch_size)):
        x = images[a:a + batch_size].to(device)
        mask = removal_mask(maps[a:a + batch_size].to(device), fraction, mode)
        gen = torch.Generator().manual_seed(key + j) if fill == "noisy_linear" and noise > 0 else None
        out[a:a + batch_size] = fill_with(x, mask, fill, mean=mean, noise=noise, key=gen)
    return out
