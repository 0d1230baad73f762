"""fxai: functional explanations for image classifiers, on ``torch.func``.

Every method is a pure function ``(model_fn, params, x, target, *, options) -> map``.

    >>> import fxai, torchvision
    >>> model_fn, params = fxai.functional(torchvision.models.resnet18().eval())
    >>> amap = fxai.integrated_gradients(model_fn, params, x, target=3)
"""

from ._core.functional import FunctionalModel as FunctionalModel
from ._core.functional import functional as functional
from ._core.layers import split as split
from ._core.rules import relu_rule as relu_rule
from ._core.rules import with_relu_rule as with_relu_rule
from .attribution.gradient import gradient as gradient
from .attribution.gradient import input_x_gradient as input_x_gradient
from .attribution.guided import deconvnet as deconvnet
from .attribution.guided import guided_backprop as guided_backprop
from .attribution.integrated import expected_gradients as expected_gradients
from .attribution.integrated import integrated_gradients as integrated_gradients
from .attribution.integrated import path_rule as path_rule
from .attribution.smooth import smoothgrad as smoothgrad
from .attribution.smooth import smoothgrad_sq as smoothgrad_sq
from .attribution.smooth import vargrad as vargrad
from .attribution.cam import cam as cam
from .attribution.cam import eigen_cam as eigen_cam
from .attribution.cam import eigen_grad_cam as eigen_grad_cam
from .attribution.cam import full_grad as full_grad
from .attribution.cam import grad_cam as grad_cam
from .attribution.cam import grad_cam_plus_plus as grad_cam_plus_plus
from .attribution.cam import guided_grad_cam as guided_grad_cam
from .attribution.cam import hires_cam as hires_cam
from .attribution.cam import layer_cam as layer_cam
from .attribution.cam import xgrad_cam as xgrad_cam
from .attribution.perturbation import ablation_cam as ablation_cam
from .attribution.perturbation import occlusion as occlusion
from .attribution.perturbation import rise as rise
from .attribution.perturbation import score_cam as score_cam
from .compiled import compiled as compiled
from . import postprocess as postprocess
from . import registry as registry
from . import metrics as metrics
from . import roar as roar

__version__ = "0.1.0"

__all__ = [
    "FunctionalModel",
    "ablation_cam",
    "cam",
    "compiled",
    "eigen_cam",
    "eigen_grad_cam",
    "full_grad",
    "grad_cam",
    "grad_cam_plus_plus",
    "guided_grad_cam",
    "hires_cam",
    "layer_cam",
    "metrics",
    "occlusion",
    "postprocess",
    "registry",
    "roar",
    "rise",
    "score_cam",
    "xgrad_cam",
    "deconvnet",
    "expected_gradients",
    "functional",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
    "path_rule",
    "relu_rule",
    "smoothgrad",
    "split",
    "smoothgrad_sq",
    "vargrad",
    "with_relu_rule",
]
