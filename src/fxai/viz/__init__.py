"""Figures: heat maps over images, grids of maps, metric curves, score bars, concept figures.

    >>> from fxai import viz
    >>> fig = viz.grid(x, {"gradient": amap.abs().sum(1)}, masks=masks)   # then viz.save(fig, "grid.png")
    >>> type(fig).__name__
    'Figure'
"""

from .maps import ORIGINS as ORIGINS
from .maps import SIGNS as SIGNS
from .maps import colorize as colorize
from .maps import curves as curves
from .maps import explanation as explanation
from .maps import grid as grid
from .maps import origin_for as origin_for
from .maps import overlay as overlay
from .maps import save as save
from .maps import save_rgb as save_rgb
from .maps import scale_map as scale_map
from .scores import scores as scores
from .roar import roar_accuracy as roar_accuracy
from .boxes import detection as detection
from .concepts import concept_colours as concept_colours
from .concepts import concept_labels as concept_labels
from .concepts import concept_overlay as concept_overlay
from .concepts import factorization as factorization

__all__ = ["ORIGINS", "SIGNS", "colorize", "concept_colours", "concept_labels", "concept_overlay", "curves",
           "detection", "explanation", "factorization", "grid", "origin_for", "overlay", "roar_accuracy", "save",
           "save_rgb", "scale_map", "scores"]
