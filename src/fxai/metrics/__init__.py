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
from .randomisation import randomisation as randomisation
from .randomisation import randomised_params as randomised_params
from .randomisation import layer_order as layer_order
from .randomisation import spearman as spearman
from .randomisation import ssim as ssim
from .localisation import pointing_game as pointing_game
from .localisation import relevance_mass as relevance_mass
from .localisation import relevance_rank as relevance_rank
from .complexity import sparseness as sparseness
from .complexity import complexity as complexity

__all__ = [
    "Imputer",
    "aic",
    "aopc",
    "auc",
    "blur",
    "bottom_mask",
    "channel_mean",
    "complexity",
    "constant",
    "deletion",
    "infidelity",
    "insertion",
    "layer_order",
    "lerf",
    "max_sensitivity",
    "morf",
    "noisy_linear",
    "perturbation_curve",
    "pic",
    "pointing_game",
    "randomisation",
    "randomised_params",
    "ranking",
    "relevance_map",
    "registry",
    "relevance_mass",
    "relevance_rank",
    "road",
    "road_combined",
    "selectivity",
    "sic",
    "sparseness",
    "spearman",
    "ssim",
    "top_mask",
    "uniform_noise",
]
