"""Figures of detections: each box's map over the image, with the boxes drawn."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .canvas import figure, image_rgb
from .maps import overlay


def detection(image, maps, boxes, labels: Sequence[str] | None = None, *, title: str | None = None,
              alpha: float = 0.5, cell: float = 3.0):
    """A figure of a detector's explanation: the image with every box, then one panel per box with its map.

    Args:
        image: ``[C, H, W]`` in [0, 1].
        maps: ``[K, H, W]``, one map per box (e.g. a CAM of :func:`fxai.box_target` of that box), each shown by
            its positive part over the image.
        boxes: ``[K, 4]`` boxes ``x1, y1, x2, y2`` in the image's pixels.
        labels: ``K`` captions (class names and scores), or ``None``.
        title: the figure's title.
        alpha: opacity of the maps.
        cell: one panel's size in inches.

    Example:
        >>> fig = fxai.viz.detection(x[0], cam[:1], torch.tensor([[2.0, 2, 20, 12]]), ["dog 0.93"])
    """
    from matplotlib.patches import Rectangle

    boxes = torch.as_tensor(boxes, dtype=torch.float32).detach().cpu()
    maps = torch.as_tensor(maps).detach().cpu()
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"detection: boxes must be [K, 4] and maps [K, H, W] with the same K, got boxes "
                         f"{tuple(boxes.shape)} and maps {tuple(maps.shape)}")
    labels = list(labels) if labels is not None else [f"box {k}" for k in range(len(boxes))]
    panels = [(image_rgb(image), list(range(len(boxes))), "detections")]
    panels += [(overlay(image, m, alpha=alpha), [k], labels[k]) for k, m in enumerate(maps)]
    fig = figure(cell * len(panels), cell + (0.45 if title else 0.1))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (rgb, shown, name) in zip(axes, panels):
        ax.imshow(rgb, interpolation="nearest")
        for k in shown:
            x1, y1, x2, y2 = boxes[k].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5))
            if len(shown) > 1:
                ax.text(x1, y1, labels[k], color="black", fontsize=7, va="bottom",
                        bbox={"facecolor": "lime", "alpha": 0.8, "pad": 1, "linewidth": 0})
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
