"""Imputers: what replaces the removed pixels of a perturbation metric.

An imputer is a callable ``imputer(x, masks, *, key=None) -> [S, B, C, H, W]``
taking a batch ``x [B, C, H, W]`` and a stack of masks ``masks [S, B, H, W]``
(``True`` = replace) and returning one imputed copy of ``x`` per mask. Random
imputers draw their noise once per image (shape of ``x``) from ``key`` and use
it for every mask of the stack, so the same key gives the same copies however
the masks are split into blocks, and pixels removed at one step keep their
value at the next (Samek et al.'s iterative perturbation).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F

from .._core import keys
from .multigrid import linear_fill


class Imputer(abc.ABC):
    """A named imputer ``(x, masks, *, key=None) -> [S, B, C, H, W]`` (see the module docstring)."""

    randomised = False

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, *, key=None) -> torch.Tensor:
        _check(x, masks)
        return self.impute(x, masks, key=key)

    @abc.abstractmethod
    def impute(self, x, masks, *, key=None):
        """The imputed copies ``[S, B, C, H, W]`` of checked inputs."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class _Fill(Imputer):
    """Replace masked pixels by a mask-independent fill image ``[B, C, H, W]``."""

    def fill(self, x, key):  # pragma: no cover - overridden
        raise NotImplementedError

    def impute(self, x, masks, *, key=None):
        return torch.where(masks[:, :, None], self.fill(x, key), x)


class constant(_Fill):
    """Replace removed pixels by ``value`` (a number, or a tensor ``[C]`` of per-channel values).

    Example:
        >>> imp = fxai.metrics.constant(0.0)
        >>> xs = imp(x, fxai.metrics.top_mask(fxai.metrics.ranking(amap), [10]))  # [1, B, C, H, W]
    """

    def __init__(self, value: float | torch.Tensor = 0.0):
        if not isinstance(value, (int, float, torch.Tensor)) or isinstance(value, bool):
            raise TypeError(f"constant(value): expected a number or a tensor [C], got {type(value).__name__}")
        self.value = value

    def fill(self, x, key):
        value = torch.as_tensor(self.value, dtype=x.dtype, device=x.device)
        if value.ndim == 1:
            if value.shape[0] != x.shape[1]:
                raise ValueError(f"constant(value): a per-channel value needs {x.shape[1]} entries, "
                                 f"got {value.shape[0]}")
            value = value.view(1, -1, 1, 1)
        elif value.ndim != 0:
            raise ValueError(f"constant(value): expected a number or a tensor [C], got shape {tuple(value.shape)}")
        return value.expand_as(x)


class channel_mean(_Fill):
    """Replace removed pixels by the mean of each channel over the whole image.

    Example:
        >>> imp = fxai.metrics.channel_mean()
    """

    def fill(self, x, key):
        return x.mean((2, 3), keepdim=True).expand_as(x)


class blur(_Fill):
    r"""Replace removed pixels by a Gaussian blur of the image (the insertion baseline of Petsiuk et al. 2018).

    Separable kernel :math:`\propto e^{-t^2 / 2\sigma^2}`, ``t = -r..r`` with
    ``kernel_size = 2r + 1`` (default ``2 ceil(3 sigma) + 1``), borders padded
    by replication.

    Example:
        >>> imp = fxai.metrics.blur(sigma=5.0, kernel_size=11)
    """

    def __init__(self, sigma: float = 5.0, kernel_size: int | None = None):
        if not isinstance(sigma, (int, float)) or sigma <= 0:
            raise ValueError(f"blur(sigma): expected a positive number, got {sigma!r}")
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3 * sigma) + 1
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur(kernel_size): expected a positive odd int, got {kernel_size!r}")
        self.sigma, self.kernel_size = float(sigma), kernel_size

    def fill(self, x, key):
        return gaussian_blur(x, sigma=self.sigma, kernel_size=self.kernel_size)


def gaussian_blur(x: torch.Tensor, *, sigma: float, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]`` per channel, replicate padding."""
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t.square() / (2 * sigma**2))
    k = k / k.sum()
    b, c, h, w = x.shape
    y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.view(b, c, h, w)


class uniform_noise(_Fill):
    """Replace removed pixels by uniform noise in ``[low, high)`` (MoRF/LeRF of Samek et al. 2017).

    ``low``/``high`` default to each image's own minimum and maximum. Needs ``key``.

    Example:
        >>> imp = fxai.metrics.uniform_noise(0.0, 1.0)
        >>> xs = imp(x, masks[None], key=0)  # one mask per image: [1, B, C, H, W]
    """

    randomised = True

    def __init__(self, low: float | None = None, high: float | None = None):
        if (low is None) != (high is None):
            raise ValueError("uniform_noise(low, high): give both bounds or neither (then each image's range is used)")
        if low is not None and not low < high:
            raise ValueError(f"uniform_noise(low, high): expected low < high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def fill(self, x, key):
        u = keys.uniform(key, x.shape, x)
        if self.low is None:
            flat = x.flatten(1)
            lo = flat.amin(1).view(-1, 1, 1, 1)
            return lo + (flat.amax(1).view(-1, 1, 1, 1) - lo) * u
        return self.low + (self.high - self.low) * u


class noisy_linear(Imputer):
    r"""ROAD's noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", ICML 2022).

    Each removed pixel takes the weighted mean of its 8 neighbours inside the
    image (weights 1/6 axial, 1/12 diagonal), removed neighbours being unknowns
    too: per image and channel, the sparse symmetric system

    .. math:: s_i v_i - \sum_{j \in N(i) \cap M} w_{ij} v_j = \sum_{j \in N(i) \setminus M} w_{ij} x_j,
              \quad s_i = \sum_{j \in N(i)} w_{ij}

    over the removed set :math:`M`, then ``noise`` × standard normal noise is
    added to the imputed pixels. All systems of a stack (masks × images ×
    channels) are solved by conjugate gradients with the 3×3 stencil as the
    matrix product, preconditioned by an aggregation multigrid V-cycle with
    Galerkin coarse operators (four images at a time): 3–10 iterations on
    224×224 images, scattered or compact removed sets alike. ``tol`` is the
    relative residual at which a system counts as solved (the default 1e-4
    leaves errors below 1e-3, 6e-5 root-mean-square, on 224×224 images in
    float32, far below ROAD's own noise; take 1e-7 in float64 to match a
    direct sparse solve); ``max_iter`` bounds the iterations (default ``H + W``).
    An image whose every pixel is removed is filled with 0.

    Example:
        >>> imp = fxai.metrics.noisy_linear(noise=0.01)
        >>> xs = imp(x, masks[None], key=0)  # one mask per image: [1, B, C, H, W]
    """

    def __init__(self, noise: float = 0.01, *, tol: float = 1e-4, max_iter: int | None = None):
        if not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"noisy_linear(noise): expected a non-negative number, got {noise!r}")
        if not isinstance(tol, (int, float)) or tol <= 0:
            raise ValueError(f"noisy_linear(tol): expected a positive number, got {tol!r}")
        self.noise, self.tol, self.max_iter = float(noise), float(tol), max_iter

    @property
    def randomised(self):
        return self.noise > 0

    def impute(self, x, masks, *, key=None):
        s, b, c, h, w = masks.shape[0], *x.shape
        m = masks.reshape(s * b, 1, h, w)
        xs = x[None].expand(s, b, c, h, w).reshape(s * b, c, h, w)
        v = linear_fill(xs, m, tol=self.tol, max_iter=self.max_iter)
        if self.noise > 0:
            v = v + self.noise * keys.normal(key, x.shape, x).repeat(s, 1, 1, 1)
        return torch.where(m, v, xs).view(s, b, c, h, w)


def _check(x, masks) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"imputer: x must be a floating batch [B, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.ndim != 4 \
            or masks.shape[1] != x.shape[0] or masks.shape[2:] != x.shape[2:]:
        got = f"{tuple(masks.shape)} {masks.dtype}" if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"imputer: masks must be a bool tensor [S, B, H, W] = [S, {x.shape[0]}, {x.shape[2]}, "
                         f"{x.shape[3]}], got {got}")


IMPUTERS = {"constant": constant, "mean": channel_mean, "blur": blur, "uniform": uniform_noise,
            "linear": noisy_linear}


def as_imputer(imputer, *, name: str = "imputer"):
    """An imputer from a callable or a name: ``"constant"`` (0), ``"mean"``, ``"blur"``, ``"uniform"``, ``"linear"``."""
    if isinstance(imputer, str):
        if imputer not in IMPUTERS:
            raise ValueError(f"{name} must be an imputer or one of {', '.join(map(repr, IMPUTERS))}; got {imputer!r}")
        return IMPUTERS[imputer]()
    if not callable(imputer):
        raise TypeError(f"{name} must be a callable (x, masks, *, key) -> [S, B, C, H, W] or a name, "
                        f"got {type(imputer).__name__}")
    return imputer
