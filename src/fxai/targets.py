"""A target for segmentation models: the summed logits of one category over a pixel mask."""

from __future__ import annotations

import numpy as np
import torch


class SegmentationTarget:
    r"""Callable target ``logits [N, classes, H, W] -> scores [N]``: :math:`\sum_{h,w} m_{hw}\, z_{c,h,w}`.

    Made by :func:`segmentation_target`. A shared mask ``[H, W]`` scores any
    number of rows alone (``rows_per_group = 1``, so methods may chunk freely);
    a per-input mask ``[B, H, W]`` scores a whole batch of ``B`` rows at a time,
    row ``i`` with mask ``i``, which is how methods hand callable targets their
    stacked rows (noise samples, path steps, targets).
    """

    __slots__ = ("category", "mask", "rows_per_group")

    def __init__(self, category: int, mask: torch.Tensor):
        self.category = category
        self.mask = mask
        if mask.ndim == 2:
            self.rows_per_group = 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"segmentation_target: needs per-pixel logits [N, classes, H, W], got {got}; for a "
                             "model returning a dict or a tuple, pick the logits with fxai.functional(module, "
                             "output=...)")
        n, classes, h, w = logits.shape
        if self.category >= classes:
            raise ValueError(f"segmentation_target: category {self.category} is out of range for a model with "
                             f"{classes} classes")
        if tuple(self.mask.shape[-2:]) != (h, w):
            raise ValueError(f"segmentation_target: the mask is {tuple(self.mask.shape[-2:])} but the model's "
                             f"output is {(h, w)} pixels")
        if self.mask.ndim == 3 and self.mask.shape[0] != n:
            raise ValueError(f"segmentation_target: a per-input mask [B, H, W] holds {self.mask.shape[0]} masks, "
                             f"but the batch holds {n} inputs; pass one mask per input of x, or one [H, W] mask")
        mask = self.mask.to(dtype=logits.dtype, device=logits.device)
        return (logits[:, self.category] * mask).sum((-2, -1))

    def __repr__(self) -> str:
        return f"segmentation_target({self.category}, mask {tuple(self.mask.shape)})"


def segmentation_target(category: int, mask) -> SegmentationTarget:
    r"""A target for segmentation models: the logits of ``category`` summed over the pixels in ``mask``.

    :math:`s_b = \sum_{h,w} m_{b,h,w}\, z_{b,c,h,w}` for logits ``z [B, classes, H, W]``: the
    score pytorch-grad-cam's ``SemanticSegmentationTarget`` explains (Vinogradova et al., 2020,
    "Towards interpretable semantic segmentation via gradient-weighted class activation
    mapping"). Pass it as ``target=`` to any method.

    Args:
        category: the class whose logits are summed (a non-negative int).
        mask: ``[H, W]`` shared by every input, or ``[B, H, W]`` one per input of ``x``, at the
            resolution of the model's output; boolean or floating (weights), a tensor or a
            numpy array. Typically the pixels the model assigns to ``category``:
            ``logits.argmax(1) == category``.

    Returns:
        A callable ``logits -> scores [B]``; the model's output must be the logits
        ``[B, classes, H, W]`` (``fxai.functional(module, output="out")`` for torchvision's
        segmentation models, which ``output=None`` also picks).

    Example:
        >>> seg = torch.nn.Conv2d(3, 4, 1).eval()
        >>> seg_fn, seg_params = fxai.functional(seg)
        >>> mask = seg_fn(seg_params, x).argmax(1)[0] == 2
        >>> amap = fxai.gradient(seg_fn, seg_params, x, fxai.segmentation_target(2, mask))
    """
    if isinstance(category, bool) or not isinstance(category, (int, np.integer)) or int(category) < 0:
        raise TypeError(f"segmentation_target: category must be a non-negative int class index, got "
                        f"{type(category).__name__} {category!r}")
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"segmentation_target: mask must be a tensor or numpy array [H, W] or [B, H, W], got "
                        f"{type(mask).__name__}")
    if mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"segmentation_target: mask must be [H, W] (shared) or [B, H, W] (one per input), got "
                         f"shape {tuple(mask.shape)}")
    if mask.is_complex():
        raise TypeError(f"segmentation_target: mask must be boolean or real (weights per pixel), got {mask.dtype}")
    if mask.is_floating_point() and not torch.isfinite(mask).all():
        raise ValueError("segmentation_target: mask holds NaN or infinite weights")
    return SegmentationTarget(int(category), mask.detach().clone())
