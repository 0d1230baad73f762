"""Coherence: the maps of several methods side by side, for a batch of images, as one figure."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .ranking import relevance_map


def _image(x: torch.Tensor):
    img = x.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()


def coherence_figure(images: torch.Tensor, maps_by_method: Mapping[str, torch.Tensor], path, *,
                     reduce: str = "sum", cmap: str = "bwr", dpi: int = 100) -> str:
    """Save a grid with one row per image and one column per method (after a column of the images) as PNG.

    Each map is reduced over channels (``reduce``) and drawn with a colour
    scale symmetric around 0 and scaled to its own maximum absolute value,
    so maps of different methods can be compared by shape, not by scale.

    Args:
        images: ``[B, C, H, W]`` (C = 1 or 3; each image min–max scaled for display).
        maps_by_method: ``{method name: map [B, H, W] or [B, C, H, W]}``, in column order.
        path: where to write the PNG (its folder must exist).

    Returns:
        The path written.

    Example:
        >>> fxai.metrics.coherence_figure(x, {"gradient": g, "grad_cam": c}, "coherence.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError("images must be a tensor [B, C, H, W] with C = 1 or 3")
    if not isinstance(maps_by_method, Mapping) or not maps_by_method:
        raise ValueError("maps_by_method must be a non-empty mapping {method name: map [B, ...]}")
    maps = {}
    for name, m in maps_by_method.items():
        rm = relevance_map(m, reduce=reduce, name=f"maps_by_method[{name!r}]")
        if rm.shape[0] != images.shape[0]:
            raise ValueError(f"maps_by_method[{name!r}] has {rm.shape[0]} maps for {images.shape[0]} images")
        maps[name] = rm.detach().float().cpu()
    folder = os.path.dirname(os.fspath(path))
    if folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"path: folder {folder!r} does not exist")
    rows, cols = images.shape[0], len(maps) + 1
    fig = Figure(figsize=(2 * cols, 2 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        axes[i][0].imshow(_image(images[i]), cmap="gray" if images.shape[1] == 1 else None)
        for j, (name, m) in enumerate(maps.items(), start=1):
            v = float(m[i].abs().max()) or 1.0
            axes[i][j].imshow(m[i].numpy(), cmap=cmap, vmin=-v, vmax=v)
            if i == 0:
                axes[i][j].set_title(name, fontsize=9)
        if i == 0:
            axes[i][0].set_title("input", fontsize=9)
    for ax in fig.axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return os.fspath(path)
