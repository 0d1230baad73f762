"""The one list of attribution methods and transforms, with what each needs: the CLI, the demo, the docs and
the contract tests read it.

Adding a method is one function in one file and one row here; what the signature states (a ``layer``
option, a ``key``) is read from it, not written twice.

Example:
    >>> info = registry.method("integrated_gradients")
    >>> info.layered, info.randomised
    (False, False)
    >>> sorted(registry.options(info, size=(32, 32), quick=True))
    ['steps']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._core.checks import unknown_name
from .attribution import class_activation, full_grad, gradient, gradient_cams, guided, integrated, masked_cams, masks
from .attribution import deeplift, lrp, smooth, transformers
from .attribution import owen, paths, shapley, surrogates, xrai
from .attribution import cam_variants

KINDS = ("pixel", "cam", "transform")
FAMILIES = ("gradient", "relevance", "cam", "mask", "transform", "transformer")


def _frozen(d=None) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class MethodInfo:
    """A registry row.

    ``kind``: ``"pixel"`` (a map shaped like ``x``), ``"cam"`` (``[B, H, W]``) or ``"transform"`` (a function
    ``method -> method``, e.g. SmoothGrad). ``family`` groups rows for plots and tests (``"gradient"``:
    backpropagation maps; ``"relevance"``: relevance propagated by rules; ``"cam"``: layer maps; ``"mask"``: maps from masked inputs; ``"transform"``;
    ``"transformer"``: methods that need a vision transformer's attention).
    ``needs``: inputs the caller must supply (``"references"``). ``cost``: the options that set the method's
    cost, at a full budget (scaled down by :func:`options`). ``quick``: small settings that exercise the
    method in a fraction of a second (tests, quick runs). ``sized``: options computed from the input's
    ``(H, W)``.
    """

    name: str
    fn: Callable
    kind: str = "pixel"
    family: str = "gradient"
    needs: tuple[str, ...] = ()
    cost: Mapping[str, int] = field(default_factory=_frozen)
    quick: Mapping[str, object] = field(default_factory=_frozen)
    sized: Callable[[tuple[int, int]], dict] | None = None

    def __post_init__(self):
        if self.kind not in KINDS or self.family not in FAMILIES:
            raise ValueError(f"{self.name}: kind must be one of {KINDS} and family one of {FAMILIES}")
        object.__setattr__(self, "cost", _frozen(self.cost))
        object.__setattr__(self, "quick", _frozen(self.quick))

    @property
    def parameters(self) -> Mapping[str, inspect.Parameter]:
        """The keyword options of the method (of the method a transform returns, for transforms)."""
        fn = self.fn(gradient.gradient) if self.kind == "transform" else self.fn
        return inspect.signature(fn).parameters

    @property
    def structured(self) -> bool:
        """Whether ``x`` may be a tuple or dict of tensors (with :func:`fxai.fixed` leaves riding along)."""
        fn = self.fn(gradient.gradient) if self.kind == "transform" else self.fn
        return getattr(fn, "structured", False)

    @property
    def layered(self) -> bool:
        """Whether the method takes a ``layer``."""
        return "layer" in self.parameters

    @property
    def randomised(self) -> bool:
        """Whether the method takes a ``key`` (randomised methods refuse to run without one)."""
        return "key" in self.parameters


def _xrai_segments(size) -> dict:
    """Small images segment at 4x their size (up to PAIR's 224x224): Felzenszwalb at 224x224 per image would
    cost the CLI and the demo seconds per image of 16x16."""
    return {} if min(size) >= 112 else {"segment_size": tuple(min(224, 4 * s) for s in size)}


def _occlusion_window(size) -> dict:
    window = max(2, min(size) // 8)
    return {"window": window, "stride": max(1, window // 2)}


_ALL = [
    MethodInfo("gradient", gradient.gradient),
    MethodInfo("input_x_gradient", gradient.input_x_gradient),
    MethodInfo("integrated_gradients", integrated.integrated_gradients, cost={"steps": 128}, quick={"steps": 4}),
    MethodInfo("expected_gradients", integrated.expected_gradients, needs=("references",), cost={"samples": 128},
               quick={"samples": 4}),
    MethodInfo("blur_ig", paths.blur_ig, cost={"steps": 100}, quick={"steps": 4, "max_sigma": 4.0}),
    MethodInfo("guided_ig", paths.guided_ig, cost={"steps": 200}, quick={"steps": 4}),
    MethodInfo("xrai", xrai.xrai, kind="cam", cost={"steps": 100}, sized=_xrai_segments,
               quick={"steps": 4, "min_pixel_diff": 4, "segment_size": None}),
    MethodInfo("guided_backprop", guided.guided_backprop),
    MethodInfo("deconvnet", guided.deconvnet),
    MethodInfo("deeplift", deeplift.deeplift, family="relevance"),
    MethodInfo("deeplift_shap", deeplift.deeplift_shap, family="relevance", needs=("references",),
               quick={"samples": 2}),
    MethodInfo("lrp", lrp.lrp, family="relevance"),
    MethodInfo("cam", class_activation.cam, kind="cam", family="cam"),
    MethodInfo("grad_cam", gradient_cams.grad_cam, kind="cam", family="cam"),
    MethodInfo("grad_cam_plus_plus", gradient_cams.grad_cam_plus_plus, kind="cam", family="cam"),
    MethodInfo("xgrad_cam", gradient_cams.xgrad_cam, kind="cam", family="cam"),
    MethodInfo("hires_cam", gradient_cams.hires_cam, kind="cam", family="cam"),
    MethodInfo("layer_cam", gradient_cams.layer_cam, kind="cam", family="cam"),
    MethodInfo("eigen_cam", gradient_cams.eigen_cam, kind="cam", family="cam"),
    MethodInfo("eigen_grad_cam", gradient_cams.eigen_grad_cam, kind="cam", family="cam"),
    MethodInfo("full_grad", full_grad.full_grad, kind="cam", family="cam"),
    MethodInfo("guided_grad_cam", gradient_cams.guided_grad_cam, family="cam"),
    MethodInfo("grad_cam_element_wise", cam_variants.grad_cam_element_wise, kind="cam", family="cam"),
    MethodInfo("shapley_cam", cam_variants.shapley_cam, kind="cam", family="cam"),
    MethodInfo("kpca_cam", cam_variants.kpca_cam, kind="cam", family="cam"),
    MethodInfo("seg_eigen_cam", cam_variants.seg_eigen_cam, kind="cam", family="cam"),
    MethodInfo("refine_cam", cam_variants.refine_cam, kind="cam", family="cam"),
    MethodInfo("finer_cam", cam_variants.finer_cam, kind="cam", family="cam"),
    MethodInfo("smooth_grad_cam_plus_plus", cam_variants.smooth_grad_cam_plus_plus, kind="cam", family="cam",
               cost={"samples": 4}, quick={"samples": 2}),
    MethodInfo("score_cam", masked_cams.score_cam, kind="cam", family="cam"),
    MethodInfo("ablation_cam", masked_cams.ablation_cam, kind="cam", family="cam"),
    MethodInfo("ss_cam", masked_cams.ss_cam, kind="cam", family="cam", cost={"samples": 35}, quick={"samples": 2}),
    MethodInfo("is_cam", masked_cams.is_cam, kind="cam", family="cam", cost={"samples": 10}, quick={"samples": 2}),
    MethodInfo("attention_rollout", transformers.attention_rollout, kind="cam", family="transformer"),
    MethodInfo("chefer", transformers.chefer, kind="cam", family="transformer"),
    MethodInfo("attnlrp", transformers.attnlrp, family="transformer"),
    MethodInfo("rise", masks.rise, kind="cam", family="mask", cost={"num_masks": 2000},
               quick={"num_masks": 8, "cell_size": 4}),
    MethodInfo("occlusion", masks.occlusion, family="mask", sized=_occlusion_window,
               quick={"window": (4, 4), "stride": 4}),
    MethodInfo("feature_ablation", shapley.feature_ablation, family="mask", quick={"feature_mask": "grid:4"}),
    MethodInfo("shapley_values", shapley.shapley_values, family="mask", quick={"feature_mask": "grid:2"}),
    MethodInfo("shapley_sampling", shapley.shapley_sampling, family="mask", cost={"samples": 25},
               quick={"samples": 4, "feature_mask": "grid:3"}),
    MethodInfo("kernel_shap", surrogates.kernel_shap, family="mask", cost={"samples": 1000},
               quick={"samples": 24, "feature_mask": "grid:3"}),
    MethodInfo("lime", surrogates.lime, family="mask", cost={"samples": 1000},
               quick={"samples": 24, "feature_mask": "grid:3"}),
    MethodInfo("owen_values", owen.owen_values, family="mask", cost={"max_evals": 500},
               quick={"max_evals": 40, "per_round": 20}),
    MethodInfo("smoothgrad", smooth.smoothgrad, kind="transform", family="transform", cost={"samples": 50},
               quick={"samples": 3}),
    MethodInfo("smoothgrad_sq", smooth.smoothgrad_sq, kind="transform", family="transform", cost={"samples": 50},
               quick={"samples": 3}),
    MethodInfo("vargrad", smooth.vargrad, kind="transform", family="transform", cost={"samples": 50},
               quick={"samples": 3}),
]

ENTRIES: dict[str, MethodInfo] = {m.name: m for m in _ALL}
METHODS: dict[str, MethodInfo] = {m.name: m for m in _ALL if m.kind != "transform"}
TRANSFORMS: dict[str, MethodInfo] = {m.name: m for m in _ALL if m.kind == "transform"}


def method(name: str) -> MethodInfo:
    """The row of the method or transform called ``name``; an unknown name gets an error listing the known ones."""
    if name not in ENTRIES:
        raise ValueError(unknown_name("method", name, ENTRIES, listing=f"available methods: {', '.join(METHODS)}; "
                                                                       f"transforms: {', '.join(TRANSFORMS)}"))
    return ENTRIES[name]


def options(info: MethodInfo, *, size, layer: str | None = None, key=0, references=None, scale: int | None = None,
            chunk_size: int | None = None, quick: bool = False) -> dict:
    """Keyword options to call ``info.fn`` with: ``layer``, ``key``, what it ``needs``, its sized options, its cost.

    ``size`` is the input's ``(H, W)``. ``scale`` divides the ``cost`` options (``None`` keeps the method's
    own defaults); ``quick`` applies the row's ``quick`` settings. Only options that the method accepts are
    passed; a need with nothing to give raises :class:`LookupError`.
    """
    accepted = info.parameters
    out = {}
    if info.layered:
        out["layer"] = layer
    if info.randomised:
        out["key"] = key
    provided = {"references": references}
    for need in info.needs:
        if provided.get(need) is None:
            raise LookupError(f"{info.name} needs {need!r} and none were given")
        out[need] = provided[need]
    wanted = dict(info.sized(tuple(size))) if info.sized else {}
    if scale is not None:
        wanted.update({k: max(2, v // scale) for k, v in info.cost.items()})
    if quick:
        wanted.update(info.quick)
    if chunk_size is not None:
        wanted["chunk_size"] = chunk_size
    out.update({k: v for k, v in wanted.items() if k in accepted})
    return out


def applied(transform: MethodInfo, base: MethodInfo, **settings) -> MethodInfo:
    """The row of ``transform(base)``, e.g. SmoothGrad² over the gradient: a method like any other."""
    if transform.kind != "transform" or base.kind == "transform":
        raise ValueError(f"applied(transform, base): {transform.name!r} must be a transform and {base.name!r} a method")
    fn = transform.fn(base.fn, **settings)
    return MethodInfo(f"{transform.name}({base.name})", fn, kind=base.kind, family=base.family, needs=base.needs,
                      cost=base.cost, quick=base.quick, sized=base.sized)
