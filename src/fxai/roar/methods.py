"""What ROAR ranks pixels by: a public method by its spec (``"gradient"``, ``"smoothgrad_sq(gradient)"``), or a control.

A spec is a method name from :data:`fxai.registry.METHODS`, or a transform of one
(``smoothgrad``, ``smoothgrad_sq``, ``vargrad``) written as a call:
``"vargrad(integrated_gradients)"``. The controls are maps that no model made:

- ``"random"``: uniform noise drawn from a key (Hooker et al.'s random ranking);
- ``"sobel"``: the magnitude of the Sobel gradient of the image's channel mean (an edge detector);
- ``"ground_truth"``: the object's mask, where the dataset provides one (the ideal map on the synthetic shapes).

Every map maker here has the signature ``(model_fn, params, x, target, *, masks, key, **options) -> [B, H, W]``
(after the channel reduction of :func:`reduce`), so extraction treats methods and controls alike.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from .. import registry
from .._core import keys
from ..postprocess import REDUCTIONS, reduce_channels, upsample

CONTROLS = ("random", "sobel", "ground_truth")
TRANSFORMS = {name: info.fn for name, info in registry.TRANSFORMS.items()}
_TRANSFORM_OPTIONS = ("samples", "sigma")
_SPEC = re.compile(r"^\s*(\w+)\s*(?:\(\s*(\w+)\s*\))?\s*$")


def parse(spec: str) -> tuple[str | None, str]:
    """``"vargrad:gradient"`` (or ``"vargrad(gradient)"``) ``-> ("vargrad", "gradient")``, ``"gradient" -> (None,
    "gradient")``; checked."""
    if not isinstance(spec, str):
        raise TypeError(f"method must be a string such as 'gradient' or 'smoothgrad_sq(gradient)', "
                        f"got {type(spec).__name__}")
    outer, colon, inner = spec.partition(":")
    match = _SPEC.match(f"{outer}({inner})" if colon else spec)     # transform:name, as on the command line
    if match is None:
        raise ValueError(f"method {spec!r}: expected a name or transform:name, e.g. 'smoothgrad_sq:gradient'")
    outer, inner = match.groups()
    if inner is None:
        if outer in CONTROLS:
            return None, outer
        registry.method(outer)
        return None, outer
    if outer not in TRANSFORMS:
        raise ValueError(f"method {spec!r}: unknown transform {outer!r}; available: {', '.join(TRANSFORMS)}")
    registry.method(inner)
    return outer, inner


def canonical(spec: str) -> str:
    """The spec without spaces: ``"smoothgrad_sq( gradient )" -> "smoothgrad_sq(gradient)"``."""
    outer, inner = parse(spec)
    return inner if outer is None else f"{outer}({inner})"


def randomised(spec: str) -> bool:
    """Whether maps of ``spec`` depend on a key (noise ensembles, random controls, randomised methods)."""
    outer, inner = parse(spec)
    return outer is not None or inner == "random" or (inner not in CONTROLS and registry.method(inner).randomised)


def needs_masks(spec: str) -> bool:
    """Whether ``spec`` needs the dataset's ground-truth masks (the ideal-map control)."""
    return parse(spec)[1] == "ground_truth"


def random_map(x: torch.Tensor, *, key) -> torch.Tensor:
    """Uniform [0, 1) noise ``[B, H, W]`` from ``key``: a ranking that knows nothing of the image."""
    return keys.uniform(key, (x.shape[0], *x.shape[-2:]), x)


def sobel_map(x: torch.Tensor) -> torch.Tensor:
    r"""Edge strength ``[B, H, W]``: :math:`\sqrt{(K_x * g)^2 + (K_y * g)^2}` with the 3×3 Sobel kernels
    :math:`K_x, K_y` on the channel mean :math:`g` of the image (borders replicated)."""
    g = F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.T])[:, None]
    grads = F.conv2d(g, k)
    return grads.square().sum(1).sqrt()


def make(spec: str, options: dict | None = None, *, reduce: str = "abs_sum"):
    """The map maker of ``spec``: ``fn(model_fn, params, x, target, *, masks=None, key=None) -> [B, H, W]``.

    ``options`` go to the method (``samples``/``sigma`` to the transform); pixel maps ``[B, C, H, W]`` are
    reduced over channels by ``reduce`` (see :func:`fxai.postprocess.reduce_channels`), CAM maps are
    upsampled to the input size when they are smaller.
    """
    outer, inner = parse(spec)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduce!r}")
    options = dict(options or {})
    if inner in CONTROLS:
        if options:
            raise ValueError(f"the {inner!r} control takes no options, got {sorted(options)}")

        def control(model_fn, params, x, target, *, masks=None, key=None):
            if inner == "random":
                return random_map(x, key=key)
            if inner == "sobel":
                return sobel_map(x)
            if masks is None:
                raise ValueError("the 'ground_truth' control needs a dataset whose items are (image, label, mask)")
            return masks.to(x.dtype)

        return control
    info = registry.method(inner)
    fn = info.fn
    takes_key = info.randomised
    if outer is not None:
        fn = TRANSFORMS[outer](fn, **{k: options.pop(k) for k in _TRANSFORM_OPTIONS if k in options})
        takes_key = True

    def method(model_fn, params, x, target, *, masks=None, key=None):
        amap = fn(model_fn, params, x, target, **({"key": key} if takes_key else {}), **options)
        if amap.ndim == 4:
            amap = reduce_channels(amap, reduce, dim=1)
        if tuple(amap.shape[-2:]) != tuple(x.shape[-2:]):
            amap = upsample(amap, tuple(x.shape[-2:]))
        return amap.detach()

    return method
