"""A synthetic dataset with ground truth: the class is a shape, and its mask is known exactly.

Each image shows one object — a filled shape whose kind is the class — at a
random position, size and colour, on a background of random colour with soft
blob distractors and uniform noise. The object is opaque and drawn last, so
the image is ``where(mask, object layer, background layer)``: the pixels in
``mask`` are the only ones that depend on the class, and they depend on
nothing else.

Randomness is counter-based: every number is a hash of ``(seed, index,
stream, slot)``, so sample ``i`` is the same whatever batch it is drawn in,
and a whole batch is rendered with tensor operations only (no loop over
samples), fast enough to generate training data on the fly.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from .._core.checks import check_positive_int

CLASS_NAMES = ("square", "disc", "triangle", "cross", "ring", "diamond")

_M32 = 0xFFFFFFFF
_OBJECT, _TEXTURE, _SCENE, _BLOBS, _NOISE = range(5)


class ShapesBatch(NamedTuple):
    """Images ``[N, 3, H, W]`` (values in [0, 1]), labels ``[N]`` (long) and masks ``[N, H, W]`` (bool)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values in ``[0, 2**32)`` (products stay below 2**63)."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def _uniform(seed: int, index: torch.Tensor, stream: int, slots: int) -> torch.Tensor:
    """Uniform [0, 1) numbers ``[N, slots]``, a pure function of ``(seed, index[n], stream, slot)``."""
    base = _mix((_mix(torch.tensor(seed & _M32)) + _mix(torch.tensor(((seed >> 32) & 0xFFFF) << 8 | stream))) & _M32)
    per_sample = _mix((base ^ _mix(index & _M32)) & _M32)[:, None]
    slot = _mix((torch.arange(slots, device=index.device) + (stream << 24)) & _M32)[None, :]
    bits = _mix(_mix((per_sample + slot) & _M32) ^ per_sample)
    return (bits >> 8).to(torch.float32) / float(1 << 24)


_BANK = 1 << 18


@functools.lru_cache(maxsize=8)
def _bank(seed: int, stream: int) -> torch.Tensor:
    """A fixed bank of uniform [-1, 1) numbers for ``(seed, stream)``, from which pixel noise is read."""
    gen = torch.Generator().manual_seed(int(_mix(torch.tensor(seed & _M32) ^ _mix(torch.tensor(stream)))) + (seed >> 32))
    return torch.rand(_BANK, generator=gen) * 2 - 1


def _pixel_noise(seed: int, index: torch.Tensor, stream: int, shape) -> torch.Tensor:
    """Uniform [-1, 1) noise ``[N, *shape]``: a window of the bank at a hashed offset per sample.

    Reading a window costs one contiguous copy, where hashing every pixel would cost a dozen
    integer operations per pixel; windows of different samples overlap only by chance.
    """
    count = math.prod(shape)
    offset = (_uniform(seed, index, stream, 1) * _BANK).long()
    bank = _bank(seed, stream)
    if count > _BANK:  # windows longer than the bank: index element by element
        return bank[(offset + torch.arange(count)) % _BANK].view(index.shape[0], *shape)
    wrapped = torch.cat([bank, bank[:count - 1]])  # so that a window running past the end is contiguous
    return wrapped.unfold(0, count, 1).index_select(0, offset[:, 0]).view(index.shape[0], *shape)


def _shape_masks(u: torch.Tensor, v: torch.Tensor, classes: int) -> torch.Tensor:
    """Indicators ``[K, N, H, W]`` of the K class shapes, in coordinates ``(u, v)`` scaled by the object radius."""
    au, av, d = u.abs(), v.abs(), torch.sqrt(u * u + v * v)
    shapes = [
        torch.maximum(au, av) <= 0.8,                                     # square
        d <= 1.0,                                                         # disc
        (v <= 0.75) & (au <= (v + 1.0) * 0.55),                            # triangle, apex up
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),        # cross
        (d >= 0.6) & (d <= 1.0),                                          # ring
        au + av <= 1.0,                                                   # diamond
    ]
    return torch.stack(shapes[:classes])


def _size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in size)):
        raise ValueError(f"size must be an int or a pair (height, width) of ints >= 8, got {size!r}")
    return int(size[0]), int(size[1])


def _render(index: torch.Tensor, *, seed: int, background_seed: int, size, classes: int, distractors: int,
            noise: float, draw_object: bool) -> ShapesBatch:
    h, w = size
    n = index.shape[0]
    scale = min(h, w)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, w)

    # The object: class, radius, centre (inside the image), colour; its own texture.
    o = _uniform(seed, index, _OBJECT, 6)
    labels = (o[:, 0] * classes).long().clamp_max(classes - 1)
    radius = (0.16 + 0.10 * o[:, 1]) * scale
    cy = radius + o[:, 2] * (h - 2 * radius)
    cx = radius + o[:, 3] * (w - 2 * radius)
    u = (xs - cx.view(n, 1, 1)) / radius.view(n, 1, 1)
    v = (ys - cy.view(n, 1, 1)) / radius.view(n, 1, 1)
    masks = _shape_masks(u, v, classes).gather(0, labels.view(1, n, 1, 1).expand(1, n, h, w))[0]
    hue = _uniform(seed, index, _OBJECT + 8, 3)                                      # object colour, per channel
    colour = 0.05 + 0.9 * hue
    texture = _pixel_noise(seed, index, _TEXTURE, (3, h, w)) * noise
    obj = colour.view(n, 3, 1, 1) + texture

    # The background: a flat colour, soft blobs composited back to front, then noise.
    # Each channel of the ground colour is 0.225 to 0.675 away from the object's (circularly in [0.05, 0.95]),
    # darker or brighter at random, so the object always stands out but brightness does not give it away.
    shift = 0.25 + 0.5 * _uniform(background_seed, index, _SCENE, 3)
    ground = 0.05 + 0.9 * torch.remainder(hue + shift, 1.0)
    b = _uniform(background_seed, index, _BLOBS, 7 * distractors).view(n, distractors, 7)
    by, bx = b[..., 0] * h, b[..., 1] * w
    sigma = (0.04 + 0.06 * b[..., 2]) * scale
    alpha = 0.5 + 0.4 * b[..., 3]
    blob_colour = 0.05 + 0.9 * b[..., 4:7]                                            # [N, D, 3]
    inv = -0.5 / sigma[..., None, None] ** 2                                           # a separable Gaussian
    cover = alpha[..., None, None] * torch.exp((ys[None] - by[..., None, None]) ** 2 * inv) \
        * torch.exp((xs[None] - bx[..., None, None]) ** 2 * inv)                      # [N, D, H, W]
    # "Over" compositing of D layers: ground * prod(1 - a_d) + sum_d c_d a_d prod_{e > d} (1 - a_e).
    after = torch.cat([1 - cover[:, 1:], torch.ones_like(cover[:, :1])], 1).flip(1).cumprod(1).flip(1)
    scene = (ground.view(n, 3, 1, 1) * ((1 - cover).prod(1, keepdim=True))
             + torch.einsum("ndc,ndhw->nchw", blob_colour, cover * after))
    scene = scene + _pixel_noise(background_seed, index, _NOISE, (3, h, w)) * noise

    images = torch.where(masks[:, None], obj, scene) if draw_object else scene
    return ShapesBatch(images, labels, masks)  # within [0, 1] by construction: no clipping


def _check_options(*, seed, background_seed, classes, distractors, noise):
    for name, value in (("seed", seed), ("background_seed", background_seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be an int from 2 to {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)}), got {classes!r}")
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
        raise ValueError(f"distractors must be a non-negative int, got {distractors!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise <= 0.05:
        raise ValueError(f"noise must be a number in [0, 0.05] (half-width of the uniform pixel noise), got {noise!r}")


def shapes(count: int, *, seed: int = 0, start: int = 0, size=32, classes: int = 4, distractors: int = 4,
           noise: float = 0.05, background_seed: int | None = None, draw_object: bool = True,
           device=None) -> ShapesBatch:
    r"""Samples ``start, ..., start + count - 1`` of the synthetic shapes dataset, with their ground-truth masks.

    The class of an image is the kind of its object (``CLASS_NAMES[:classes]``:
    square, disc, triangle, cross, ring, diamond), drawn opaque with a random
    radius of 16–26 % of the image side, a random position fully inside the
    image and a random colour with texture noise. The background is a
    colour far from the object's in every channel (darker or brighter), with ``distractors`` soft Gaussian blobs of any colour
    and uniform noise of half-width ``noise``. So

    .. math:: x = \mathrm{mask} \odot x_{\mathrm{object}} + (1 - \mathrm{mask}) \odot x_{\mathrm{background}},

    with the class in the object layer only: ``mask`` is exactly the set of
    pixels that decide the class (in the spirit of the ground-truth benchmarks
    of Arras et al., "CLEVR-XAI", 2022).

    Args:
        count: number of samples.
        seed: the dataset's seed; sample ``i`` depends only on ``(seed, i)``.
        start: index of the first sample.
        size: image side, or ``(height, width)``; at least 8.
        classes: number of classes, 2 to 6.
        distractors: blobs per image.
        noise: half-width of the uniform pixel noise, at most 0.05.
        background_seed: draw the backgrounds from this seed instead of ``seed``,
            keeping the objects: the same decisive pixels in another scene.
        draw_object: ``False`` renders the same scenes without their objects
            (the background under them), e.g. as a counterfactual baseline.
        device: where the tensors are returned.

    Returns:
        :class:`ShapesBatch` ``(images [N, 3, H, W], labels [N], masks [N, H, W] bool)``.

    Example:
        >>> images, labels, masks = fxai.data.shapes(64, seed=0, size=32)
    """
    check_positive_int(count, name="count")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}")
    index = torch.arange(start, start + count, dtype=torch.long)
    return shapes_at(index, seed=seed, size=size, classes=classes, distractors=distractors, noise=noise,
                     background_seed=background_seed, draw_object=draw_object, device=device)


def shapes_at(index, *, seed: int = 0, size=32, classes: int = 4, distractors: int = 4, noise: float = 0.05,
              background_seed: int | None = None, draw_object: bool = True, device=None) -> ShapesBatch:
    """The samples at the given indices (a sequence or ``LongTensor[N]`` of non-negative ints); see :func:`shapes`.

    Example:
        >>> batch = fxai.data.shapes_at([3, 1, 4], seed=0)
    """
    _check_options(seed=seed, background_seed=background_seed, classes=classes, distractors=distractors, noise=noise)
    index = torch.as_tensor(index).reshape(-1)
    if index.dtype in (torch.bool,) or index.is_floating_point() or index.is_complex():
        raise TypeError(f"index must hold integers, got dtype {index.dtype}")
    if index.numel() and int(index.min()) < 0:
        raise ValueError(f"index must be non-negative, got {int(index.min())}")
    out = _render(index.long().cpu(), seed=seed, background_seed=seed if background_seed is None else background_seed,
                  size=_size(size), classes=classes, distractors=distractors, noise=float(noise),
                  draw_object=draw_object)
    return ShapesBatch(*(t.to(device) for t in out)) if device is not None else out


class Shapes(Dataset):
    """The synthetic shapes dataset as a ``torch.utils.data.Dataset`` of ``length`` samples.

    ``dataset[i]`` is ``(image [3, H, W], label, mask [H, W])``, equal to row ``i``
    of :func:`shapes`; ``dataset.batch(indices)`` renders many at once (and a
    ``DataLoader`` uses it through ``__getitems__``). Options as :func:`shapes`.

    Example:
        >>> train = fxai.data.Shapes(10_000, seed=0)
        >>> image, label, mask = train[0]
    """

    def __init__(self, length: int, *, seed: int = 0, start: int = 0, size=32, classes: int = 4,
                 distractors: int = 4, noise: float = 0.05):
        check_positive_int(length, name="length")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative int, got {start!r}")
        _check_options(seed=seed, background_seed=None, classes=classes, distractors=distractors, noise=noise)
        self.length, self.start = length, start
        self.options = dict(seed=seed, size=_size(size), classes=classes, distractors=distractors, noise=noise)
        self.classes = CLASS_NAMES[:classes]

    def __len__(self) -> int:
        return self.length

    def _index(self, indices) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        index = torch.where(index < 0, index + self.length, index)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.length):
            raise IndexError(f"index out of range for a dataset of {self.length} samples")
        return index + self.start

    def batch(self, indices) -> ShapesBatch:
        """The samples at ``indices``, rendered as one batch."""
        return shapes_at(self._index(indices), **self.options)

    def __getitem__(self, i: int):
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"dataset index must be an int, got {type(i).__name__}")
        images, labels, masks = self.batch([i])
        return images[0], int(labels[0]), masks[0]

    def __getitems__(self, indices):
        images, labels, masks = self.batch(list(indices))
        return [(images[k], int(labels[k]), masks[k]) for k in range(len(labels))]

    def __repr__(self) -> str:
        h, w = self.options["size"]
        return f"Shapes(length={self.length}, seed={self.options['seed']}, size=({h}, {w}), classes={len(self.classes)})"

