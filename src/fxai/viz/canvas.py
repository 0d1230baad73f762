"""What every figure starts from: a figure on the Agg canvas, and an image as an RGB array."""

from __future__ import annotations

import numpy as np
import torch


def figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` × ``height`` inches at 100 dpi on the Agg canvas (no pyplot, no display),
    laid out by matplotlib's constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_rgb(image) -> np.ndarray:
    """``[C, H, W]`` (C = 1, 3 or 4) or ``[H, W]`` tensor/array in [0, 1] -> float array ``[H, W, 3]``."""
    img = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3, 4):
        raise ValueError(f"image must be [C, H, W] with C in (1, 3, 4) or [H, W], got shape {tuple(img.shape)}")
    img = img[:3] if img.shape[0] == 4 else img.expand(3, -1, -1)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()
