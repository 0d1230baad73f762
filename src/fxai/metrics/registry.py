"""The one list of evaluation metrics that score a map, with what each needs: the demo and the metric contract
tests read it.

``kind`` says what a metric takes: ``"model"`` metrics ``(model_fn, params, x, target, attribution, **options)``,
``"localisation"`` ones ``(attribution, mask)`` and ``"complexity"`` ones ``(attribution)``. ``output`` is
``"score"`` (``[B]``), ``"curve"`` (``[B, S]``) or ``"stages"`` (``[B, L]``, one column per randomised layer).
What the signature states (a ``key``) is read from it.

Example:
    >>> info = metrics.registry.metric("deletion")
    >>> info.kind, info.output, info.higher_is_better, info.randomised
    ('model', 'curve', False, True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .._core.checks import unknown_name
from .axiomatic import completeness, input_invariance, non_sensitivity
from .complexity import complexity, sparseness
from .faithfulness import (faithfulness_correlation, faithfulness_estimate, monotonicity, monotonicity_correlation,
                           sensitivity_n, sufficiency)
from .localisation import pointing_game, relevance_mass, relevance_rank
from .perturbation import deletion, insertion, lerf, morf, selectivity
from .mprt import efficient_mprt, smooth_mprt
from .pic import aic, sic
from .randomisation import random_logit, randomisation
from .regions import irof, region_perturbation
from .road import road
from .robustness import infidelity, max_sensitivity
from .complexity import effective_complexity
from .localisation import attribution_localisation, focus, mask_auc, top_k_intersection
from .consistency import consistency
from .stability import (avg_sensitivity, continuity, local_lipschitz_estimate,
                        relative_input_stability, relative_output_stability, relative_representation_stability)

KINDS = ("model", "localisation", "complexity")
FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic")
OUTPUTS = ("score", "curve", "stages")


@dataclass(frozen=True)
class MetricInfo:
    """A metric row: ``higher_is_better`` says how to read the score (for curves: their area), ``None`` where
    neither is better; ``needs`` are inputs the caller supplies (``"method"``: the attribution method that
    made the map); ``quick`` small settings for tests and quick runs. ``family`` groups rows as the literature
    does (:data:`FAMILIES`; localisation and complexity metrics are their kind)."""

    name: str
    fn: Callable
    kind: str
    output: str = "score"
    higher_is_better: bool | None = None
    needs: tuple[str, ...] = ()
    quick: Mapping[str, object] = field(default_factory=dict)
    family: str = ""

    def __post_init__(self):
        if self.kind not in KINDS or self.output not in OUTPUTS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS} and output one of {OUTPUTS}")
        if not self.family and self.kind != "model":
            object.__setattr__(self, "family", self.kind)
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))

    @property
    def randomised(self) -> bool:
        """Whether the metric takes a ``key``."""
        return "key" in inspect.signature(self.fn).parameters


_ALL = [
    MetricInfo("morf", morf, "model", "curve", False, quick={"steps": 4}, family="faithfulness"),
    MetricInfo("lerf", lerf, "model", "curve", True, quick={"steps": 4}, family="faithfulness"),
    MetricInfo("selectivity", selectivity, "model", "curve", False, quick={"patch": 4}, family="faithfulness"),
    MetricInfo("deletion", deletion, "model", "curve", False, quick={"steps": 4}, family="faithfulness"),
    MetricInfo("insertion", insertion, "model", "curve", True, quick={"steps": 4}, family="faithfulness"),
    MetricInfo("road", road, "model", "curve", False, quick={"fractions": (0.25, 0.5)}, family="faithfulness"),
    MetricInfo("sic", sic, "model", "curve", True, quick={"num_data_points": 8, "thresholds": (0.1, 0.3, 0.6),
                                                          "value_range": (-3.0, 3.0)}, family="faithfulness"),
    MetricInfo("aic", aic, "model", "curve", True, quick={"num_data_points": 8, "thresholds": (0.1, 0.3, 0.6),
                                                          "value_range": (-3.0, 3.0)}, family="faithfulness"),
    MetricInfo("infidelity", infidelity, "model", "score", False, quick={"samples": 4}, family="robustness"),
    MetricInfo("max_sensitivity", max_sensitivity, "model", "score", False, needs=("method",),
               quick={"samples": 3}, family="robustness"),
    MetricInfo("randomisation", randomisation, "model", "stages", False, needs=("method",), family="randomisation"),
    # Faithfulness by correlation, randomisation and axioms (fxai.metrics.faithfulness, .randomisation, .axiomatic)
    MetricInfo("faithfulness_correlation", faithfulness_correlation, "model", "score", True,
               quick={"runs": 8, "subset_size": 32}, family="faithfulness"),
    MetricInfo("faithfulness_estimate", faithfulness_estimate, "model", "score", True,
               quick={"features_in_step": 64}, family="faithfulness"),
    MetricInfo("monotonicity", monotonicity, "model", "score", True,
               quick={"features_in_step": 64}, family="faithfulness"),
    MetricInfo("monotonicity_correlation", monotonicity_correlation, "model", "score", True,
               quick={"samples": 3, "features_in_step": 128}, family="faithfulness"),
    MetricInfo("sensitivity_n", sensitivity_n, "model", "curve", True,
               quick={"ns": (16, 64), "samples": 8}, family="faithfulness"),
    MetricInfo("sufficiency", sufficiency, "model", "score", True, family="faithfulness"),
    MetricInfo("region_perturbation", region_perturbation, "model", "curve", True,
               quick={"patch": 4, "regions": 6}, family="faithfulness"),
    MetricInfo("irof", irof, "model", "score", True, family="faithfulness"),
    MetricInfo("random_logit", random_logit, "model", "score", False, needs=("method",), family="randomisation"),
    MetricInfo("smooth_mprt", smooth_mprt, "model", "stages", False, needs=("method",),
               quick={"samples": 3}, family="randomisation"),
    MetricInfo("efficient_mprt", efficient_mprt, "model", "score", True, needs=("method",), family="randomisation"),
    MetricInfo("completeness", completeness, "model", "score", False, family="axiomatic"),
    MetricInfo("non_sensitivity", non_sensitivity, "model", "score", False,
               quick={"features_in_step": 64}, family="axiomatic"),
    MetricInfo("input_invariance", input_invariance, "model", "score", True, needs=("method",), family="axiomatic"),
    MetricInfo("pointing_game", pointing_game, "localisation", higher_is_better=True),
    MetricInfo("relevance_mass", relevance_mass, "localisation", higher_is_better=True),
    MetricInfo("relevance_rank", relevance_rank, "localisation", higher_is_better=True),
    MetricInfo("sparseness", sparseness, "complexity", higher_is_better=True),
    MetricInfo("complexity", complexity, "complexity", higher_is_better=False),
    # robustness: re-explain perturbed inputs (but consistency)
    MetricInfo("local_lipschitz_estimate", local_lipschitz_estimate, "model", "score", False, needs=("method",),
               quick={"samples": 3}, family="robustness"),
    MetricInfo("avg_sensitivity", avg_sensitivity, "model", "score", False, needs=("method",),
               quick={"samples": 3}, family="robustness"),
    MetricInfo("continuity", continuity, "model", "score", False, needs=("method",),
               quick={"steps": 3}, family="robustness"),
    MetricInfo("relative_input_stability", relative_input_stability, "model", "score", False, needs=("method",),
               quick={"samples": 3, "radius": 0.001}, family="robustness"),
    MetricInfo("relative_output_stability", relative_output_stability, "model", "score", False,
               needs=("method",), quick={"samples": 3, "radius": 0.001}, family="robustness"),
    MetricInfo("relative_representation_stability", relative_representation_stability, "model", "score", False,
               needs=("method",), quick={"samples": 3, "radius": 0.001}, family="robustness"),
    MetricInfo("consistency", consistency, "model", "score", True, family="robustness"),
    # localisation and complexity
    MetricInfo("top_k_intersection", top_k_intersection, "localisation", higher_is_better=True, quick={"k": 20}),
    MetricInfo("attribution_localisation", attribution_localisation, "localisation", higher_is_better=True),
    MetricInfo("mask_auc", mask_auc, "localisation", higher_is_better=True),
    MetricInfo("focus", focus, "localisation", higher_is_better=True),
    MetricInfo("effective_complexity", effective_complexity, "complexity", higher_is_better=False),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}


def metric(name: str) -> MetricInfo:
    """The row of the metric called ``name``; an unknown name gets an error listing the known ones."""
    if name not in METRICS:
        raise ValueError(unknown_name("metric", name, METRICS))
    return METRICS[name]
