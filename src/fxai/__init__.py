"""fxai: functional explanations for image classifiers, on ``torch.func``.

Every method is a pure function ``(model_fn, params, x, target, *, options) -> map``.

    >>> import fxai, torchvision
    >>> model_fn, params = fxai.functional(torchvision.models.resnet18().eval())
    >>> amap = fxai.integrated_gradients(model_fn, params, x, target=3)
"""

from ._core.functional import FunctionalModel as FunctionalModel
from ._core.functional import functional as functional
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

__version__ = "0.1.0"

__all__ = [
    "FunctionalModel",
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
    "smoothgrad_sq",
    "vargrad",
    "with_relu_rule",
]
