"""Every public attribution method, with what it needs: the list the CLI, the demo and the contract tests read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .attribution import cam as _cam
from .attribution import deeplift as _deeplift
from .attribution import gradient as _gradient
from .attribution import guided as _guided
from .attribution import integrated as _integrated
from .attribution import perturbation as _perturbation


@dataclass(frozen=True)
class MethodInfo:
    """A public method: ``kind`` is ``"pixel"`` (map shaped like ``x``) or ``"cam"`` (map ``[B, H, W]``);
    ``randomised`` methods take a ``key``; ``layered`` ones take a ``layer``."""

    name: str
    fn: Callable
    kind: str = "pixel"
    randomised: bool = False
    layered: bool = False
    needs: tuple[str, ...] = ()


_ALL = [
    MethodInfo("gradient", _gradient.gradient),
    MethodInfo("input_x_gradient", _gradient.input_x_gradient),
    MethodInfo("integrated_gradients", _integrated.integrated_gradients),
    MethodInfo("expected_gradients", _integrated.expected_gradients, randomised=True, needs=("references",)),
    MethodInfo("deeplift", _deeplift.deeplift),
    MethodInfo("deeplift_shap", _deeplift.deeplift_shap, needs=("references",)),
    MethodInfo("guided_backprop", _guided.guided_backprop),
    MethodInfo("deconvnet", _guided.deconvnet),
    MethodInfo("cam", _cam.cam, kind="cam", layered=True),
    MethodInfo("grad_cam", _cam.grad_cam, kind="cam", layered=True),
    MethodInfo("grad_cam_plus_plus", _cam.grad_cam_plus_plus, kind="cam", layered=True),
    MethodInfo("xgrad_cam", _cam.xgrad_cam, kind="cam", layered=True),
    MethodInfo("hires_cam", _cam.hires_cam, kind="cam", layered=True),
    MethodInfo("layer_cam", _cam.layer_cam, kind="cam", layered=True),
    MethodInfo("eigen_cam", _cam.eigen_cam, kind="cam", layered=True),
    MethodInfo("eigen_grad_cam", _cam.eigen_grad_cam, kind="cam", layered=True),
    MethodInfo("full_grad", _cam.full_grad, kind="cam"),
    MethodInfo("guided_grad_cam", _cam.guided_grad_cam, layered=True),
    MethodInfo("score_cam", _perturbation.score_cam, kind="cam", layered=True),
    MethodInfo("ablation_cam", _perturbation.ablation_cam, kind="cam", layered=True),
    MethodInfo("rise", _perturbation.rise, kind="cam", randomised=True),
    MethodInfo("occlusion", _perturbation.occlusion),
]

METHODS: dict[str, MethodInfo] = {m.name: m for m in _ALL}


def method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` called ``name``; an unknown name gets an error listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(METHODS)}")
    return METHODS[name]
