"""Feature masks: which pixels a perturbation method switches on and off together.

A feature mask is an integer tensor that gives every element of the input the id of its feature (Captum's
``feature_mask``): elements with the same id are kept or replaced together. It is read as follows.

- ``[B, H, W]`` (a 3-d mask for a 4-d input): one mask per image, shared by its channels;
- any other shape broadcastable to ``x [B, C, H, W]`` (``[H, W]``, ``[1, 1, H, W]``, ``[B, 1, H, W]``,
  ``[B, C, H, W]`` for features per channel): broadcast to ``x``;
- a string: ``"grid:N"`` (an ``N × N`` grid, :func:`grid_mask`; ``"grid:NxM"`` for N rows of M cells) or a
  superpixel method with its main parameter, ``"slic:64"``, ``"quickshift"``, ``"felzenszwalb:100"``
  (:func:`superpixels`, computed per image).

Ids are relabelled per image to ``0 … M_b − 1`` in increasing order; they need not be contiguous, and images
may have different numbers of features (a method then works with ``M = max M_b`` features, the missing ones
of an image being ones that change nothing: they get 0).
"""

from __future__ import annotations

import numpy as np
import torch

SUPERPIXELS = ("slic", "quickshift", "felzenszwalb")
_MAIN = {"slic": "n_segments", "quickshift": "max_dist", "felzenszwalb": "scale"}


def grid_mask(size, cells=8, *, device=None) -> torch.Tensor:
    """A regular grid of ``cells`` (an int, or ``(rows, columns)``) over an image of ``size = (H, W)``.

    Returns a LongTensor ``[H, W]`` of ids ``0 … rows·columns − 1`` in row-major order; pixel ``(i, j)`` is in
    cell ``(⌊i·rows/H⌋, ⌊j·columns/W⌋)``, so cells differ in size by at most one pixel.

    Example:
        >>> fxai.grid_mask((4, 6), (2, 3))
        tensor([[0, 0, 1, 1, 2, 2],
                [0, 0, 1, 1, 2, 2],
                [3, 3, 4, 4, 5, 5],
                [3, 3, 4, 4, 5, 5]])
    """
    h, w = (int(s) for s in size)
    rows, cols = (cells, cells) if isinstance(cells, int) and not isinstance(cells, bool) else tuple(cells)
    for n, d, name in ((rows, h, "rows"), (cols, w, "columns")):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= d:
            raise ValueError(f"grid_mask: cells must give 1 to {d} {name} for an image of size {(h, w)}, got {cells!r}")
    r = torch.arange(h, device=device) * rows // h
    c = torch.arange(w, device=device) * cols // w
    return r[:, None] * cols + c[None, :]


def boundaries(feature_mask: torch.Tensor) -> torch.Tensor:
    """Where features meet: a bool mask like ``feature_mask [..., H, W]``, true at pixels whose right or lower
    neighbour belongs to another feature; overlay it on a per-feature map to draw the superpixels.

    Example:
        >>> boundaries(fxai.grid_mask((4, 4), 2)).int()
        tensor([[0, 1, 0, 0],
                [1, 1, 1, 1],
                [0, 1, 0, 0],
                [0, 1, 0, 0]], dtype=torch.int32)
    """
    edge = torch.zeros(feature_mask.shape, dtype=torch.bool, device=feature_mask.device)
    edge[..., :, :-1] |= feature_mask[..., :, 1:] != feature_mask[..., :, :-1]
    edge[..., :-1, :] |= feature_mask[..., 1:, :] != feature_mask[..., :-1, :]
    return edge


def _skimage_segmentation():
    try:
        from skimage import segmentation
    except ImportError:
        raise ImportError("superpixels need scikit-image: pip install 'fxai[superpixels]' "
                          "(or pip install scikit-image)") from None
    return segmentation


def superpixels(x: torch.Tensor, method: str = "slic", *, rescale: bool = True, **options) -> torch.Tensor:
    """Superpixels of each image of ``x [B, C, H, W]`` by scikit-image: a LongTensor ``[B, H, W]`` of ids.

    ``method`` is ``"slic"`` (Achanta et al. 2012; ``n_segments=64, compactness=10, sigma=0, start_label=0``
    unless given), ``"quickshift"`` (Vedaldi & Soatto 2008, lime's image segmenter; lime's
    ``kernel_size=4, max_dist=200, ratio=0.2``) or ``"felzenszwalb"`` (Felzenszwalb & Huttenlocher 2004;
    ``scale=1, sigma=0.8, min_size=20``); ``options`` go to ``skimage.segmentation.<method>``. Each image
    is segmented on the CPU, channels last, in float64, after min–max scaling to ``[0, 1]`` when ``rescale``
    (the parameters above assume that range; ``rescale=False`` passes the values as they are). A
    one-channel image is repeated to three channels for quickshift. The ids start at 0. Not
    differentiable (ids), and computed from ``x.detach()``. SLIC's connectivity step merges the fragments
    it finds in pure noise into one segment: give it images, or use Felzenszwalb.

    Example:
        >>> fxai.superpixels(x, "felzenszwalb", scale=100).shape
        torch.Size([2, 32, 32])
    """
    if method not in SUPERPIXELS:
        raise ValueError(f"superpixels: method must be one of {', '.join(map(repr, SUPERPIXELS))}; got {method!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"superpixels: x must be a floating batch [B, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    segmentation = _skimage_segmentation()
    images = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    out = []
    for img in images:
        if rescale:
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        if method == "slic":
            opts = {"n_segments": 64, "compactness": 10.0, "sigma": 0, "start_label": 0, **options}
            seg = segmentation.slic(img, channel_axis=-1, **opts)
        elif method == "quickshift":
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            seg = segmentation.quickshift(img, **{"kernel_size": 4, "max_dist": 200, "ratio": 0.2, **options})
        else:
            seg = segmentation.felzenszwalb(img, channel_axis=-1,
                                            **{"scale": 1, "sigma": 0.8, "min_size": 20, **options})
        out.append(torch.from_numpy(np.asarray(seg, dtype=np.int64)))
    segs = torch.stack(out).to(x.device)
    return segs - segs.flatten(1).amin(1)[:, None, None]


def parse_spec(spec: str, x: torch.Tensor) -> torch.Tensor:
    """The mask named by a string (see the module docstring): ``"grid:8"``, ``"grid:4x6"``, ``"slic:64"``,
    ``"quickshift"``, ``"quickshift:10"``, ``"felzenszwalb:100"``."""
    name, _, arg = spec.partition(":")
    name, arg = name.strip().lower(), arg.strip()
    try:
        if name == "grid":
            rows, _, cols = (arg or "8").lower().partition("x")
            return grid_mask(x.shape[-2:], (int(rows), int(cols or rows)), device=x.device)
        if name in SUPERPIXELS:
            opts = {}
            if arg:
                value = float(arg)
                opts[_MAIN[name]] = int(value) if name == "slic" else value
            return superpixels(x, name, **opts)
    except ValueError as e:
        if "superpixels" in str(e) or "grid_mask" in str(e):
            raise
        raise ValueError(f"feature_mask {spec!r}: the number after ':' must be a number ({e})") from None
    raise ValueError(f"feature_mask {spec!r}: expected 'grid:N', 'grid:NxM', or a superpixel method "
                     f"{', '.join(SUPERPIXELS)} with an optional number, e.g. 'slic:64'")


def feature_groups(feature_mask, x: torch.Tensor, *, default="grid:8") -> tuple[torch.Tensor, torch.Tensor]:
    """``(groups, present)``: ``feature_mask`` read for ``x [B, C, H, W]`` (see the module docstring).

    ``groups`` is a LongTensor ``[B, c, H, W]`` (``c`` = 1, or ``C`` for features per channel) of ids
    ``0 … M − 1`` relabelled per image; ``present [B, M]`` says which ids image ``b`` has. ``None`` reads
    ``default``.

    Example:
        >>> groups, present = feature_groups("grid:2", x)
        >>> groups.shape, present.shape
        (torch.Size([2, 1, 32, 32]), torch.Size([2, 4]))
    """
    mask = default if feature_mask is None else feature_mask
    if isinstance(mask, str):
        mask = parse_spec(mask, x)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or mask.is_complex() \
            or mask.dtype == torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"feature_mask must be an integer tensor of feature ids (or a spec such as 'slic:64'), "
                        f"got {got}")
    batch = x.shape[0]
    if mask.ndim == 3 and x.ndim == 4:
        if mask.shape[0] not in (1, batch):
            raise ValueError(f"feature_mask: a 3-d mask is read as [B, H, W] with B = {batch}, got shape "
                             f"{tuple(mask.shape)}")
        mask = mask[:, None]
    while mask.ndim < x.ndim:
        mask = mask[None]
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"feature_mask of shape {tuple(mask.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None
    if mask.shape[1] not in (1, x.shape[1]) or mask.ndim != x.ndim:
        raise ValueError(f"feature_mask of shape {tuple(mask.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}")
    mask = mask.to(x.device).long().expand(batch, mask.shape[1], *x.shape[2:])
    flat = mask.reshape(batch, -1)
    ids, present = [], []
    for row in flat:
        values, inverse = torch.unique(row, sorted=True, return_inverse=True)
        ids.append(inverse)
        present.append(len(values))
    m = max(present)
    groups = torch.stack(ids).reshape(mask.shape)
    has = torch.arange(m, device=x.device)[None, :] < torch.tensor(present, device=x.device)[:, None]
    return groups, has
