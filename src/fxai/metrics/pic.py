"""Performance Information Curves (Kapishnikov et al., XRAI, ICCV 2019): SIC and AIC, as PAIR's ``saliency`` 0.2."""

from __future__ import annotations

import inspect
import io

import numpy as np
import torch

from .._core import keys
from .._core.batching import auto_chunk, row_chunks
from .._core.checks import check_choice, check_input, check_map, check_positive_int
from .._core.targets import TargetLike, check_logits, one_per_input, probabilities
from .ranking import relevance_map

# PAIR's example thresholds (saliency/metrics/pic.py): fractions of the most salient pixels revealed.
THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
SCORES = ("softmax", "accuracy")


def random_pixel_mask(size, *, fraction: float = 0.01, key: keys.Key | None = None) -> torch.Tensor:
    """A boolean mask ``[H, W]`` with ``int(H * W * fraction)`` pixels set, drawn from ``key``: the pixels the
    fully blurred image keeps (PAIR's ``generate_random_mask``).

    Example:
        >>> int(random_pixel_mask((32, 32), fraction=0.05, key=0).sum())
        51
    """
    h, w = size
    gen = keys.generator(key)
    n = int(h * w * fraction)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=gen)[:n]] = True
    return mask.view(h, w)


def blurred_image(image: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    """The "bokeh" image: the pixels of ``pixel_mask`` (and the four corners) kept, every other pixel
    linearly interpolated from them over their Delaunay triangulation (``scipy.interpolate``), rounded for
    integer images. ``image`` is ``[H, W, C]`` or ``[H, W]``; the result has its shape and dtype: PAIR's
    ``create_blurred_image``, one triangulation for all channels.

    Example:
        >>> img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
        >>> blurred_image(img, np.zeros((4, 4), dtype=bool)).shape
        (4, 4, 3)
    """
    from scipy.interpolate import LinearNDInterpolator

    img = image if image.ndim == 3 else image[:, :, None]
    mask = np.array(pixel_mask, dtype=bool)
    h, w = mask.shape
    mask[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if mask.all():
        return image
    out = img * mask[:, :, None].astype(np.float32)
    known, unknown = np.argwhere(mask), np.argwhere(~mask)
    values = LinearNDInterpolator(known, img[tuple(known.T)], fill_value=np.nan)(unknown)
    values = np.where(np.isnan(values), img.mean(axis=(0, 1)), values)
    out[tuple(unknown.T)] = values
    out = out if image.ndim == 3 else out[:, :, 0]
    if np.issubdtype(image.dtype, np.integer):
        out = np.round(out)
    return out.astype(image.dtype)


def compressed_size(image: np.ndarray) -> int:
    """Bytes of ``image`` (uint8 ``[H, W, C]`` or ``[H, W]``) as lossless WebP (Pillow): PIC's estimate of the
    information an image holds (PAIR's ``estimate_image_entropy``)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="webp", lossless=True, quality=100)
    return buffer.tell()


def to_uint8(x: torch.Tensor, value_range=(0.0, 1.0)) -> np.ndarray:
    """Inputs ``[B, C, H, W]`` as uint8 images ``[B, H, W, C]``: ``value_range`` (numbers or per-channel
    tensors ``[C]``) maps to 0..255."""
    lo, hi = (torch.as_tensor(v, dtype=x.dtype).reshape(-1, 1, 1) for v in value_range)
    unit = ((x.detach().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray, value_range=(0.0, 1.0), dtype=torch.float32) -> torch.Tensor:
    """The inverse of :func:`to_uint8`: uint8 images ``[N, H, W, C]`` as model inputs ``[N, C, H, W]``."""
    lo, hi = (torch.as_tensor(v, dtype=dtype).reshape(-1, 1, 1) for v in value_range)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(dtype) / 255 * (hi - lo) + lo


def pic_curve(entropies, predictions, *, num_data_points: int = 1000, keep_monotonous: bool = True) -> np.ndarray:
    """One image's curve ``[num_data_points + 1]`` from the compressed sizes and the scores of the fully
    blurred image, the partially revealed ones (in threshold order) and the original (last), both normalised
    to ``[0, 1]`` between the first and the last, interpolated at evenly spaced information levels
    (``scipy.interpolate.interp1d``, as PAIR's ``compute_pic_metric``)."""
    from scipy.interpolate import interp1d

    e = (np.asarray(entropies[1:-1], dtype=np.float64) - entropies[0]) / (entropies[-1] - entropies[0])
    p = (np.asarray(predictions[1:-1], dtype=np.float64) - predictions[0]) / (predictions[-1] - predictions[0])
    e, p = np.clip(e, 0.0, 1.0), np.clip(p, 0.0, 1.0)
    if keep_monotonous:
        p = np.maximum.accumulate(np.maximum(p, 0.0))
    fn = interp1d(x=list(e) + [0.0, 1.0], y=list(p) + [0.0, 1.0])
    xs = np.linspace(0.0, 1.0, num=num_data_points, endpoint=False)
    return np.append(fn(xs), 1.0)


def pic(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, *,
        score: str = "softmax", thresholds=THRESHOLDS, random_mask: torch.Tensor | None = None,
        fraction: float = 0.01, key: keys.Key | None = None, value_range=(0.0, 1.0), min_pred_value: float = 0.0,
        keep_monotonous: bool = True, num_data_points: int = 1000, reduce: str = "sum",
        chunk_size: int | None = None) -> torch.Tensor:
    r"""Performance Information Curve ``[B, num_data_points + 1]``: the model's normalised score against the
    normalised information of images that reveal the most salient pixels of a "bokeh" blurred image.

    For each threshold :math:`t`, the image keeps the pixels whose relevance is at or above the
    :math:`1 - t` quantile (and those of ``random_mask``) and interpolates the rest (:func:`blurred_image`);
    its information is its lossless WebP size (:func:`compressed_size`), normalised between the fully
    blurred image (``random_mask`` alone) and the original; its score likewise. ``score="softmax"`` gives
    the Softmax Information Curve (SIC), ``"accuracy"`` (1 when the top-1 class is the target) the
    Accuracy Information Curve (AIC); the area under it is :func:`fxai.metrics.auc`, aggregated over images
    by the median in the paper. Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019;
    PAIR's ``saliency.metrics.compute_pic_metric`` 0.2.

    Images are compared as uint8 pictures (``value_range`` of ``x`` maps to 0..255, and back for the
    model). Where PAIR raises ``ComputePicMetricError`` (the original scores below ``min_pred_value``, or
    the fully blurred image holds as much information or scores as high as the original), the image's
    curve is NaN: skip it when aggregating. Without ``random_mask``, one mask ``[H, W]`` is drawn from
    ``key`` (a ``fraction`` of the pixels) for every image of the batch.

    Args:
        model_fn: pure ``model_fn(params, x) -> logits``.
        params: the parameters and buffers ``model_fn`` takes.
        x: input batch ``[B, C, H, W]``.
        target: class index, ``LongTensor[B]``, ``None`` (top-1) or a callable.
        attribution: map ``[B, H, W]`` or ``[B, C, H, W]`` (reduced over channels by ``reduce``).
        score: ``"softmax"`` (SIC) or ``"accuracy"`` (AIC).
        thresholds: increasing fractions of the most salient pixels revealed.
        random_mask: boolean ``[H, W]`` or ``[B, H, W]``: pixels every blurred image keeps.
        fraction: share of pixels in a drawn ``random_mask``.
        key: int seed or ``torch.Generator`` for the drawn mask (required without ``random_mask``).
        value_range: the values of ``x`` that map to 0 and 255 (numbers, or tensors ``[C]``).
        min_pred_value: smallest score of the original image for a valid curve (PAIR's default is 0.8).
        keep_monotonous: make the normalised score non-decreasing along the curve, as the paper.
        num_data_points: points of the curve before its final point at 1.
        reduce: channel reduction of pixel maps (:func:`fxai.postprocess.reduce_channels`).
        chunk_size: at most this many images per forward pass.

    Example:
        >>> curve = fxai.metrics.pic(model_fn, params, x, 3, g, key=0, num_data_points=100)
        >>> curve.shape
        torch.Size([2, 101])
    """
    check_input(x, exact_ndim=4)
    check_map(attribution, x)
    check_choice(score, SCORES, name="score")
    check_positive_int(num_data_points, name="num_data_points")
    ts = [float(t) for t in thresholds]
    if not ts or any(not 0 < t <= 1 for t in ts) or ts != sorted(ts):
        raise ValueError(f"thresholds must be increasing fractions in (0, 1], got {thresholds!r}")
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if random_mask is None:
        random_mask = random_pixel_mask((h, w), fraction=fraction, key=key)
    random_mask = torch.as_tensor(random_mask)
    if random_mask.dtype != torch.bool or random_mask.shape[-2:] != (h, w) or random_mask.ndim not in (2, 3):
        raise ValueError(f"random_mask must be a boolean mask [H, W] or [B, H, W] with H, W = {h}, {w}")
    masks = random_mask.expand(b, h, w).cpu().numpy()
    tgt = one_per_input(model_fn, params, x, target)
    if tgt.fn is not None and score == "accuracy":
        raise ValueError("target: the accuracy curve (AIC) needs class indices, not a callable")
    saliency = relevance_map(attribution, reduce=reduce).detach().cpu().double().numpy()
    images = to_uint8(x, value_range)
    series = []  # per image: the fully blurred, one per threshold, the original
    for i in range(b):
        own = [blurred_image(images[i], masks[i])]
        for t in ts:
            revealed = (saliency[i] >= np.quantile(saliency[i], 1 - t)) | masks[i]
            own.append(blurred_image(images[i], revealed))
        series.append(own + [images[i]])
    entropies = [[compressed_size(im) for im in own] for own in series]
    preds = _scores(model_fn, params, np.stack([im for own in series for im in own]), tgt, b, len(ts) + 2, score,
                    value_range, x, auto_chunk(chunk_size, x))
    curves = []
    for i in range(b):
        e, p = entropies[i], preds[i]
        if p[-1] < min_pred_value or e[0] >= e[-1] or p[0] >= p[-1]:
            curves.append(np.full(num_data_points + 1, np.nan))
        else:
            curves.append(pic_curve(e, p, num_data_points=num_data_points, keep_monotonous=keep_monotonous))
    return torch.from_numpy(np.stack(curves)).to(device=x.device, dtype=x.dtype)


def _scores(model_fn, params, images, tgt, batch, per_image, score, value_range, x, chunk_size):
    """The target's score for each image of ``images [B * n, H, W, C]`` (image-major), as ``[B, n]`` numpy."""
    rows = from_uint8(images, value_range, x.dtype).to(x.device)
    index = tgt.index.repeat_interleave(per_image, 0) if tgt.index is not None else None
    out = []
    with torch.no_grad():
        for a, z in row_chunks(rows.shape[0], chunk_size):
            logits = model_fn(params, rows[a:z].clone())
            check_logits(logits, rows[a:z])
            if index is None:  # a callable target scores the probabilities
                out.append(tgt.fn(probabilities(logits)))
            elif score == "softmax":
                out.append(probabilities(logits).gather(1, index[a:z]).squeeze(1))
            else:
                out.append((logits.argmax(-1, keepdim=True) == index[a:z]).squeeze(1).to(logits.dtype))
    return torch.cat(out).view(batch, per_image).double().cpu().numpy()


def sic(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, **options) -> torch.Tensor:
    """Softmax Information Curve: :func:`pic` with ``score="softmax"`` (options as there).

    Example:
        >>> fxai.metrics.sic(model_fn, params, x, 3, g, key=0, num_data_points=10).shape
        torch.Size([2, 11])
    """
    return pic(model_fn, params, x, target, attribution, score="softmax", **options)


def aic(model_fn, params, x: torch.Tensor, target: TargetLike, attribution: torch.Tensor, **options) -> torch.Tensor:
    """Accuracy Information Curve: :func:`pic` with ``score="accuracy"`` (options as there).

    Example:
        >>> fxai.metrics.aic(model_fn, params, x, 3, g, key=0, num_data_points=10).shape
        torch.Size([2, 11])
    """
    return pic(model_fn, params, x, target, attribution, score="accuracy", **options)


def _without_score(fn):
    """``fn`` advertises :func:`pic`'s options but ``score`` (what the registry and the docs read)."""
    sig = inspect.signature(pic)
    fn.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "score"])
    return fn


sic = _without_score(sic)
aic = _without_score(aic)
