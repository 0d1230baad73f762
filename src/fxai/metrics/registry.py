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

from .complexity import complexity, sparseness
from .localisation import pointing_game, relevance_mass, relevance_rank
from .perturbation import deletion, insertion, lerf, morf, selectivity
from .pic import aic, sic
from .randomisation import randomisation
from .road import road
from .robustness import infidelity, max_sensitivity

KINDS = ("model", "localisation", "complexity")
OUTPUTS = ("score", "curve", "stages")


@dataclass(frozen=True)
class MetricInfo:
    """A metric row: ``higher_is_better`` says how to read the score (for curves: their area), ``None`` where
    neither is better; ``needs`` are inputs the caller supplies (``"method"``: the attribution method that
    made the map); ``quick`` small settings for tests and quick runs."""

    name: str
    fn: Callable
    kind: str
    output: str = "score"
    higher_is_better: bool | None = None
    needs: tuple[str, ...] = ()
    quick: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS or self.output not in OUTPUTS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS} and output one of {OUTPUTS}")
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))

    @property
    def randomised(self) -> bool:
        """Whether the metric takes a ``key``."""
        return "key" in inspect.signature(self.fn).parameters


_ALL = [
    MetricInfo("morf", morf, "model", "curve", False, quick={"steps": 4}),
    MetricInfo("lerf", lerf, "model", "curve", True, quick={"steps": 4}),
    MetricInfo("selectivity", selectivity, "model", "curve", False, quick={"patch": 4}),
    MetricInfo("deletion", deletion, "model", "curve", False, quick={"steps": 4}),
    MetricInfo("insertion", insertion, "model", "curve", True, quick={"steps": 4}),
    MetricInfo("road", road, "model", "curve", False, quick={"fractions": (0.25, 0.5)}),
    MetricInfo("sic", sic, "model", "curve", True, quick={"num_data_points": 8, "thresholds": (0.1, 0.3, 0.6),
                                                          "value_range": (-3.0, 3.0)}),
    MetricInfo("aic", aic, "model", "curve", True, quick={"num_data_points": 8, "thresholds": (0.1, 0.3, 0.6),
                                                          "value_range": (-3.0, 3.0)}),
    MetricInfo("infidelity", infidelity, "model", "score", False, quick={"samples": 4}),
    MetricInfo("max_sensitivity", max_sensitivity, "model", "score", False, needs=("method",),
               quick={"samples": 3}),
    MetricInfo("randomisation", randomisation, "model", "stages", False, needs=("method",)),
    MetricInfo("pointing_game", pointing_game, "localisation", higher_is_better=True),
    MetricInfo("relevance_mass", relevance_mass, "localisation", higher_is_better=True),
    MetricInfo("relevance_rank", relevance_rank, "localisation", higher_is_better=True),
    MetricInfo("sparseness", sparseness, "complexity", higher_is_better=True),
    MetricInfo("complexity", complexity, "complexity", higher_is_better=False),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}


def metric(name: str) -> MetricInfo:
    """The row of the metric called ``name``; an unknown name gets an error listing the known ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; available metrics: {', '.join(METRICS)}")
    return METRICS[name]
