"""fxai: functional explanations for image classifiers, on ``torch.func``.

Every method is a pure function ``(model_fn, params, x, target, *, options) -> map``.

    >>> import fxai, torchvision
    >>> model_fn, params = fxai.functional(torchvision.models.resnet18().eval())
    >>> amap = fxai.integrated_gradients(model_fn, params, x, target=3)
"""

from ._core.functional import FunctionalModel as FunctionalModel
from ._core.functional import functional as functional
from ._core.functional import split as split
from ._core.structured import fixed as fixed
from .rules.relu import relu_rule as relu_rule
from .rules.relu import with_relu_rule as with_relu_rule
from .attribution.deeplift import deeplift as deeplift
from .attribution.deeplift import deeplift_shap as deeplift_shap
from .attribution.gradient import gradient as gradient
from .attribution.gradient import input_x_gradient as input_x_gradient
from .attribution.guided import deconvnet as deconvnet
from .attribution.guided import guided_backprop as guided_backprop
from .attribution.integrated import expected_gradients as expected_gradients
from .attribution.integrated import integrated_gradients as integrated_gradients
from .attribution.integrated import path_rule as path_rule
from .attribution.lrp import lrp as lrp
from .attribution.paths import blur_ig as blur_ig
from .attribution.paths import guided_ig as guided_ig
from .attribution.xrai import xrai as xrai
from .attribution.transformers import attention_rollout as attention_rollout
from .attribution.transformers import attnlrp as attnlrp
from .attribution.transformers import chefer as chefer
from .attribution.layer_space import at_layer as at_layer
from .attribution.layer_space import layer_conductance as layer_conductance
from .attribution.neurons import LayerOutput as LayerOutput
from .attribution.neurons import layer_output as layer_output
from .attribution.neurons import neuron as neuron
from .rules.canonizers import fold_batchnorm as fold_batchnorm
from .rules import lrp as lrp_rules
from .attribution.smooth import smoothgrad as smoothgrad
from .attribution.smooth import smoothgrad_sq as smoothgrad_sq
from .attribution.smooth import vargrad as vargrad
from .attribution.class_activation import cam as cam
from .attribution.full_grad import full_grad as full_grad
from .attribution.gradient_cams import eigen_cam as eigen_cam
from .attribution.gradient_cams import eigen_grad_cam as eigen_grad_cam
from .attribution.gradient_cams import grad_cam as grad_cam
from .attribution.gradient_cams import grad_cam_plus_plus as grad_cam_plus_plus
from .attribution.gradient_cams import guided_grad_cam as guided_grad_cam
from .attribution.gradient_cams import hires_cam as hires_cam
from .attribution.gradient_cams import layer_cam as layer_cam
from .attribution.gradient_cams import xgrad_cam as xgrad_cam
from .attribution.cam_variants import finer_cam as finer_cam
from .attribution.cam_variants import grad_cam_element_wise as grad_cam_element_wise
from .attribution.cam_variants import kpca_cam as kpca_cam
from .attribution.cam_variants import refine_cam as refine_cam
from .attribution.cam_variants import seg_eigen_cam as seg_eigen_cam
from .attribution.cam_variants import shapley_cam as shapley_cam
from .attribution.cam_variants import smooth_grad_cam_plus_plus as smooth_grad_cam_plus_plus
from .attribution.masked_cams import ablation_cam as ablation_cam
from .attribution.masked_cams import score_cam as score_cam
from .attribution.masked_cams import is_cam as is_cam
from .attribution.masked_cams import ss_cam as ss_cam
from .attribution.masks import occlusion as occlusion
from .attribution.masks import rise as rise
from .attribution.features import boundaries as boundaries
from .attribution.features import grid_mask as grid_mask
from .attribution.features import superpixels as superpixels
from .attribution.shapley import feature_ablation as feature_ablation
from .attribution.shapley import shapley_values as shapley_values
from .attribution.shapley import shapley_sampling as shapley_sampling
from .attribution.surrogates import kernel_shap as kernel_shap
from .attribution.surrogates import lime as lime
from .attribution.owen import owen_values as owen_values
from ._core.grids import to_grid as to_grid
from .targets import segmentation_target as segmentation_target
from .targets import box_target as box_target
from .targets import detections as detections
from .attribution.factorization import Factorization as Factorization
from .attribution.factorization import deep_feature_factorization as deep_feature_factorization
from .compiled import compiled as compiled
from . import postprocess as postprocess
from . import registry as registry
from . import metrics as metrics
from . import viz as viz
from . import data as data
from . import roar as roar

__version__ = "0.1.0"

__all__ = [
    "boundaries",
    "Factorization",
    "FunctionalModel",
    "LayerOutput",
    "ablation_cam",
    "at_layer",
    "blur_ig",
    "attention_rollout",
    "attnlrp",
    "cam",
    "chefer",
    "compiled",
    "eigen_cam",
    "eigen_grad_cam",
    "full_grad",
    "grad_cam",
    "grad_cam_plus_plus",
    "guided_grad_cam",
    "hires_cam",
    "layer_cam",
    "layer_conductance",
    "layer_output",
    "metrics",
    "neuron",
    "occlusion",
    "postprocess",
    "registry",
    "roar",
    "rise",
    "feature_ablation",
    "grid_mask",
    "kernel_shap",
    "lime",
    "owen_values",
    "shapley_sampling",
    "shapley_values",
    "superpixels",
    "score_cam",
    "segmentation_target",
    "box_target",
    "detections",
    "xgrad_cam",
    "finer_cam",
    "grad_cam_element_wise",
    "kpca_cam",
    "refine_cam",
    "seg_eigen_cam",
    "shapley_cam",
    "smooth_grad_cam_plus_plus",
    "is_cam",
    "ss_cam",
    "xrai",
    "deconvnet",
    "deep_feature_factorization",
    "deeplift",
    "deeplift_shap",
    "expected_gradients",
    "fixed",
    "fold_batchnorm",
    "functional",
    "gradient",
    "guided_backprop",
    "guided_ig",
    "input_x_gradient",
    "integrated_gradients",
    "lrp",
    "lrp_rules",
    "path_rule",
    "relu_rule",
    "smoothgrad",
    "split",
    "to_grid",
    "smoothgrad_sq",
    "vargrad",
    "viz",
    "with_relu_rule",
]
