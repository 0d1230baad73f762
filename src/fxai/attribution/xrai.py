"""XRAI: attribution by regions, ranked greedily by attribution density over multi-scale segments."""

from __future__ import annotations

import math
import numpy as np
import torch

from .._core.checks import as_baseline, check_choice, check_input, check_positive_int
from .._core.docs import documented
from .._core.targets import TargetLike, as_target
from .integrated import RULES, integrated_gradients

# PAIR saliency's segmentation settings (saliency/core/xrai.py).
FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_MIN_SIZE = 150
SEGMENTATION_SIZE = (224, 224)
ALGORITHMS = ("full", "fast")


def xrai_segments(image: torch.Tensor, *, dilation_radius: int = 5,
                  segment_size: tuple[int, int] | None = SEGMENTATION_SIZE) -> torch.Tensor:
    """XRAI's candidate regions for one image ``[C, H, W]``: boolean masks ``[M, H, W]``.

    Felzenszwalb & Huttenlocher's graph segmentation (``skimage.segmentation.felzenszwalb``) at scales
    50, 100, 150, 250, 500 and 1200, sigma 0.8, minimum segment 150 pixels, on the image rescaled to
    ``[-1, 1]`` and resized to ``segment_size`` (default 224×224; bicubic, anti-aliased; segments resized
    back by nearest neighbour; ``None`` segments the image at its own size), each segment one mask, each
    mask dilated by a disk of ``dilation_radius`` pixels: PAIR's ``saliency`` 0.2 settings, mask for mask.
    Needs scikit-image.

    Example:
        >>> masks = xrai_segments(torch.rand(3, 32, 32))
        >>> masks.dtype, masks.shape[1:]
        (torch.bool, torch.Size([32, 32]))
    """
    try:
        from skimage import segmentation
        from skimage.morphology import disk
        from skimage.transform import resize as resized
    except ImportError:  # pragma: no cover - an optional dependency
        raise ImportError("XRAI's segments need scikit-image: pip install scikit-image (or fxai[superpixels])") from None

    check_input(image, name="image", exact_ndim=3)
    im = image.detach().cpu().permute(1, 2, 0)
    try:
        im = im.numpy()
    except RuntimeError:  # under a torch.func transform the values are read one by one
        im = np.array(im.tolist(), dtype=str(im.dtype).removeprefix("torch."))
    span = im.max() - im.min()
    im = (im - im.min()) / (span if span > 0 else 1) * 2.0 - 1.0
    shape = im.shape[:2]
    if segment_size is not None:
        im = resized(im, tuple(segment_size), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in FELZENSZWALB_SCALES:
        seg = segmentation.felzenszwalb(im, scale=scale, sigma=FELZENSZWALB_SIGMA, min_size=FELZENSZWALB_MIN_SIZE)
        if segment_size is not None:
            seg = resized(seg, shape, order=0, preserve_range=True, mode="constant", anti_aliasing=False).astype(int)
        seg = torch.from_numpy(seg)
        masks.append(seg[None] == torch.arange(int(seg.min()), int(seg.max()) + 1)[:, None, None])
    masks = torch.cat(masks)
    if dilation_radius:
        masks = _dilated(masks, disk(dilation_radius))
    return masks.to(image.device)


def _dilated(masks: torch.Tensor, footprint: np.ndarray) -> torch.Tensor:
    """Binary dilation of ``masks [M, H, W]`` by a symmetric footprint whose rows are centred runs (a disk):
    the union over its rows of a horizontal run (counted by a cumulative sum) shifted by the row's offset."""
    r, h, w = footprint.shape[0] // 2, masks.shape[1], masks.shape[2]
    cums = masks.to(torch.int32).cumsum(-1, dtype=torch.int32)
    cums = torch.cat([cums.new_zeros(*cums.shape[:2], r + 1), cums, cums[..., -1:].expand(-1, -1, r)], -1)
    pooled, out = {}, torch.zeros_like(masks)
    for dy in range(-r, r + 1):
        half = int(footprint[dy + r].sum()) // 2
        if half not in pooled:  # any pixel of the mask in [j - half, j + half]
            start = r + 1 + half
            pooled[half] = cums[..., start:start + w] > cums[..., start - 2 * half - 1:start - 2 * half - 1 + w]
        row = pooled[half]
        if dy >= 0:
            out[:, :h - dy] |= row[:, dy:]
        else:
            out[:, -dy:] |= row[:, :h + dy]
    return out


def _region_means(values: torch.Tensor, labels: torch.Tensor, regions: int) -> torch.Tensor:
    """Mean of ``values [P]`` over each label of ``labels [P]`` (differentiable in ``values``)."""
    sums = values.new_zeros(regions).index_add(0, labels, values)
    counts = torch.zeros(regions, dtype=values.dtype, device=values.device).index_add(
        0, labels, torch.ones_like(values))
    return sums / counts


def xrai_regions(attribution: torch.Tensor, segments: torch.Tensor, *, algorithm: str = "full",
                 area_threshold: float = 1.0, min_pixel_diff: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    r"""XRAI's region ranking of one map ``[H, W]`` over candidate masks ``[M, H, W]``: ``(per_pixel, ranks)``.

    ``"full"``: starting from nothing, repeatedly add the mask whose not-yet-covered pixels have the
    highest mean attribution (gain density), dropping masks that would add fewer than ``min_pixel_diff``
    pixels, until ``area_threshold`` of the image is covered or no mask is left. ``"fast"``: rank the
    masks once by their own density, then add them in that order. Each added region (a mask's new
    pixels) gets its density; pixels no mask covered form a last region with theirs.
    ``per_pixel [H, W]`` holds each pixel's region density (differentiable in ``attribution``; it sums
    to the map's sum), ``ranks [H, W]`` the region's rank by density, 1 the most important: PAIR's
    ``attribution_mask`` and ``segments``.

    Example:
        >>> amap, ranks = xrai_regions(torch.rand(32, 32), xrai_segments(torch.rand(3, 32, 32)), min_pixel_diff=8)
    """
    check_choice(algorithm, ALGORITHMS, name="algorithm")
    check_positive_int(min_pixel_diff, name="min_pixel_diff")
    if attribution.ndim != 2 or segments.ndim != 3 or segments.shape[1:] != attribution.shape \
            or segments.dtype != torch.bool:
        raise ValueError(f"xrai_regions takes a map [H, W] and boolean masks [M, H, W] of the same size; got "
                         f"{tuple(attribution.shape)} and {tuple(segments.shape)} {segments.dtype}")
    masks = segments.flatten(1)
    a = attribution.detach().flatten().double()
    covered = torch.zeros_like(masks[0])
    added: list[tuple[torch.Tensor, float]] = []
    if algorithm == "full":
        # Each mask's count and sum over the pixels not yet covered, updated by the pixels each step covers
        # (pixel-major masks: a step reads only its new pixels' rows).
        by_pixel = masks.t().contiguous()
        counts = masks.sum(1)
        sums = torch.cat([masks[i:i + 64].double() @ a for i in range(0, masks.shape[0], 64)])
        alive = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
        area, pixels = 0, masks.shape[1]
        while area / pixels <= area_threshold:
            alive &= counts >= min_pixel_diff
            if not bool(alive.any()):
                break
            gains = torch.where(alive, sums / counts.clamp_min(1), -math.inf)
            best = int(gains.argmax())
            new = masks[best] & ~covered
            added.append((new, float(gains[best])))
            covered = covered | masks[best]
            alive[best] = False
            rows = new.nonzero()[:, 0]
            area += len(rows)
            hit = by_pixel[rows]
            counts = counts - hit.sum(0)
            sums = sums - a[rows] @ hit.double()
    else:
        counts = masks.sum(1)
        gains = torch.where(counts > 0, (masks.double() @ a) / counts.clamp_min(1), -math.inf)
        for m in torch.sort(gains, descending=True, stable=True).indices.tolist():
            new = masks[m] & ~covered
            count = int(new.sum())
            if count < min_pixel_diff:
                continue
            added.append((new, float(a[new].mean())))
            covered = covered | masks[m]
    order = sorted(range(len(added)), key=lambda i: -added[i][1])
    regions = [added[i][0] for i in order]
    if not bool(covered.all()):
        regions.append(~covered)
    labels = torch.zeros(masks.shape[1], dtype=torch.long, device=masks.device)
    for i, region in enumerate(regions):
        labels[region] = i
    per_pixel = _region_means(attribution.flatten(), labels, len(regions))[labels]
    return per_pixel.view_as(attribution), (labels + 1).view(attribution.shape)


def _image_extremes(x: torch.Tensor) -> list:
    """PAIR's default baselines: each image's smallest and largest value (its "black" and "white")."""
    lo = x.flatten(1).min(1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = x.flatten(1).max(1).values.view(-1, *([1] * (x.ndim - 1)))
    return [lo.expand_as(x), hi.expand_as(x)]


@documented(steps="Integrated Gradients' path points per baseline.",
            method="IG's rule (:func:`fxai.path_rule`).",
            baselines="IG baselines, averaged (numbers, tensors or callables); ``None``: each image's minimum and "
                      "maximum value (PAIR's black and white).",
            algorithm="``\"full\"`` (re-rank the remaining masks after each addition) or ``\"fast\"`` (one ranking).",
            area_threshold="stop adding masks once this fraction of the image is covered (``\"full\"`` only).",
            min_pixel_diff="drop masks that would add fewer new pixels than this.",
            dilation_radius="disk radius (pixels) each segment is dilated by.",
            segment_size="``(h, w)`` the image is resized to for segmentation (PAIR's 224×224), or ``None`` "
                         "(its own size).",
            return_ranks="also return the ranked region map ``[B, H, W]`` (``LongTensor``, 1 = most important).")
def xrai(model_fn, params, x: torch.Tensor, target: TargetLike = None, *, steps: int = 100,
         method: str = "gausslegendre", baselines=None, algorithm: str = "full", area_threshold: float = 1.0,
         min_pixel_diff: int = 50, dilation_radius: int = 5,
         segment_size: tuple[int, int] | None = SEGMENTATION_SIZE, chunk_size: int | None = None,
         return_ranks: bool = False):
    r"""XRAI: Integrated Gradients summed into regions, regions ranked by attribution density.

    .. math:: A = \max_{\mathrm{channels}} \tfrac{1}{2}\big(\mathrm{IG}_{\mathrm{black}}(x) +
              \mathrm{IG}_{\mathrm{white}}(x)\big), \qquad
              R_{k+1} = \arg\max_{S} \frac{\sum_{p \in S \setminus \cup_{j \le k} R_j} A_p}
                                            {|S \setminus \cup_{j \le k} R_j|}

    Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019. Candidate regions are
    :func:`xrai_segments` (Felzenszwalb at six scales, dilated); the ranking is :func:`xrai_regions`. The
    map gives each pixel its region's density; with ``return_ranks`` also the ranked region map, as PAIR's
    ``saliency`` 0.2 returns them. IG runs on the batch (all baselines and steps stacked); the segmentation
    and the ranking run per image on the CPU.

    {args}

    Returns:
        A map ``[B, H, W]`` (``[B, K, H, W]`` for K targets), and the ranks if asked.

    Example:
        >>> regions = fxai.xrai(model_fn, params, x, 3, steps=8, min_pixel_diff=8)
    """
    check_input(x)
    check_input(x, exact_ndim=4)
    check_choice(method, RULES, name="method")
    target = as_target(target, x).fixed(model_fn, params, x)
    bases = _image_extremes(x) if baselines is None else [as_baseline(b, x) for b in baselines]
    if not bases:
        raise ValueError("baselines must hold at least one baseline (or be None for the image's min and max)")
    fixed = target.fn if target.fn is not None else target.index if target.multi else target.index[:, 0]
    ig = sum(integrated_gradients(model_fn, params, x, fixed, baseline=b, steps=steps, method=method,
                                  chunk_size=chunk_size) for b in bases)
    ig = ig / len(bases)
    amap = ig.amax(-3)  # channels: [B, (K,) H, W]
    maps, ranks = [], []
    for i in range(x.shape[0]):
        masks = xrai_segments(x[i], dilation_radius=dilation_radius, segment_size=segment_size)
        rows = [amap[i]] if amap.ndim == 3 else list(amap[i])
        out = [xrai_regions(m, masks, algorithm=algorithm, area_threshold=area_threshold,
                            min_pixel_diff=min_pixel_diff) for m in rows]
        maps.append(torch.stack([o[0] for o in out]))
        ranks.append(torch.stack([o[1] for o in out]))
    squeeze = amap.ndim == 3
    per_pixel = torch.stack(maps)
    rank_map = torch.stack(ranks)
    if squeeze:
        per_pixel, rank_map = per_pixel[:, 0], rank_map[:, 0]
    return (per_pixel, rank_map) if return_ranks else per_pixel
