"""Evaluation metrics that need no retraining.

Each metric is a pure function ``(model_fn, params, x, target, attribution, *, options)``
returning per-input scores ``[B]`` or curves ``[B, S]``; aggregation (``auc``, ``aopc``,
``road_combined``) is a separate function. Localisation and complexity metrics need
no model: ``(attribution, mask)`` and ``(attribution)``.
"""

from __future__ import annotations

from .ranking import ranking as ranking
from .ranking import top_mask as top_mask
from .ranking import bottom_mask as bottom_mask
from .ranking import relevance_map as relevance_map
from . import registry as registry
from .imputers import Imputer as Imputer
from .imputers import constant as constant
from .imputers import channel_mean as channel_mean
from .imputers import blur as blur
from .imputers import uniform_noise as uniform_noise
from .imputers import noisy_linear as noisy_linear
from .perturbation import perturbation_curve as perturbation_curve
from .perturbation import morf as morf
from .perturbation import lerf as lerf
from .perturbation import selectivity as selectivity
from .perturbation import deletion as deletion
from .perturbation import insertion as insertion
from .perturbation import auc as auc
from .perturbation import aopc as aopc
from .road import road as road
from .pic import pic as pic
from .pic import sic as sic
from .pic import aic as aic
from .road import road_combined as road_combined
from .robustness import infidelity as infidelity
from .robustness import max_sensitivity as max_sensitivity
from .stability import local_lipschitz_estimate as local_lipschitz_estimate
from .stability import avg_sensitivity as avg_sensitivity
from .stability import continuity as continuity
from .consistency import consistency as consistency
from .stability import relative_input_stability as relative_input_stability
from .stability import relative_output_stability as relative_output_stability
from .stability import relative_representation_stability as relative_representation_stability
from .randomisation import randomisation as randomisation
from .randomisation import randomised_params as randomised_params
from .randomisation import layer_order as layer_order
from .randomisation import spearman as spearman
from .randomisation import ssim as ssim
from .localisation import pointing_game as pointing_game
from .localisation import relevance_mass as relevance_mass
from .localisation import relevance_rank as relevance_rank
from .localisation import top_k_intersection as top_k_intersection
from .localisation import attribution_localisation as attribution_localisation
from .localisation import mask_auc as mask_auc
from .localisation import focus as focus
from .localisation import mosaics as mosaics
from .complexity import sparseness as sparseness
from .complexity import complexity as complexity
from .complexity import effective_complexity as effective_complexity
from .features import feature_map as feature_map
from .features import feature_order as feature_order
from .features import fill_values as fill_values
from .features import pearson as pearson
from .faithfulness import faithfulness_correlation as faithfulness_correlation
from .faithfulness import faithfulness_estimate as faithfulness_estimate
from .faithfulness import monotonicity as monotonicity
from .faithfulness import monotonicity_curve as monotonicity_curve
from .faithfulness import monotonicity_correlation as monotonicity_correlation
from .faithfulness import random_subsets as random_subsets
from .faithfulness import sensitivity_n as sensitivity_n
from .faithfulness import sufficiency as sufficiency
from .randomisation import random_logit as random_logit
from .mprt import cascade as cascade
from .mprt import efficient_mprt as efficient_mprt
from .mprt import histogram_entropy as histogram_entropy
from .mprt import smooth_mprt as smooth_mprt
from .mprt import smoothed_maps as smoothed_maps
from .regions import irof as irof
from .regions import patch_labels as patch_labels
from .regions import region_perturbation as region_perturbation
from .regions import slic_segments as slic_segments
from .axiomatic import completeness as completeness
from .axiomatic import non_sensitivity as non_sensitivity
from .axiomatic import input_invariance as input_invariance
from .axiomatic import shifted_first_layer as shifted_first_layer

__all__ = [
    # faithfulness by correlation, randomisation, axioms
    "cascade",
    "completeness",
    "efficient_mprt",
    "histogram_entropy",
    "smooth_mprt",
    "smoothed_maps",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "feature_map",
    "feature_order",
    "fill_values",
    "input_invariance",
    "irof",
    "monotonicity",
    "monotonicity_correlation",
    "monotonicity_curve",
    "non_sensitivity",
    "patch_labels",
    "pearson",
    "random_logit",
    "random_subsets",
    "region_perturbation",
    "sensitivity_n",
    "shifted_first_layer",
    "slic_segments",
    "sufficiency",
    "Imputer",
    "aic",
    "aopc",
    "attribution_localisation",
    "auc",
    "avg_sensitivity",
    "blur",
    "bottom_mask",
    "channel_mean",
    "complexity",
    "consistency",
    "constant",
    "continuity",
    "deletion",
    "effective_complexity",
    "focus",
    "infidelity",
    "insertion",
    "layer_order",
    "lerf",
    "local_lipschitz_estimate",
    "mask_auc",
    "max_sensitivity",
    "morf",
    "mosaics",
    "noisy_linear",
    "perturbation_curve",
    "pic",
    "pointing_game",
    "randomisation",
    "randomised_params",
    "ranking",
    "relevance_map",
    "registry",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "relevance_mass",
    "relevance_rank",
    "road",
    "road_combined",
    "selectivity",
    "sic",
    "sparseness",
    "spearman",
    "ssim",
    "top_k_intersection",
    "top_mask",
    "uniform_noise",
]
