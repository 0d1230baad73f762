"""Bar charts of evaluation scores: one panel per metric, one bar per method with its standard error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def scores(table: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str], *,
           reference: str | None = "random", title: str | None = None, better: Mapping[str, bool | None] | None = None,
           wrap: int = 3):
    """Bars of ``table[method][metric] = {"mean", "sem"}`` for each of ``metrics``, one panel per metric.

    ``reference`` names the row drawn as a dashed line across each panel (the random map) instead of a bar;
    ``better`` maps a metric to whether higher is better, shown in the panel's title; ``wrap`` panels per row.

    Example:
        >>> table = {"gradient": {"sparseness": {"mean": 0.6, "sem": 0.02}},
        ...          "random": {"sparseness": {"mean": 0.3, "sem": 0.01}}}
        >>> fig = fxai.viz.scores(table, ["sparseness"], better={"sparseness": True})
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(metrics)
    if not metrics:
        raise ValueError("scores: metrics must name at least one metric of the table")
    methods = [m for m in table if m != reference]
    colours = matplotlib.colormaps["tab10"].colors
    cols = max(1, min(wrap, len(metrics)))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(max(3.2, 0.3 * len(methods) + 1.4) * cols, 3.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes, metrics):
        cells = [table[m].get(metric, {}) for m in methods]
        means = [c.get("mean", math.nan) for c in cells]
        sems = [c.get("sem", 0.0) if c.get("sem") is not None and math.isfinite(c.get("sem")) else 0.0
                for c in cells]
        ax.bar(range(len(methods)), [0.0 if not math.isfinite(v) else v for v in means], yerr=sems,
               color=[colours[i % 10] for i in range(len(methods))], capsize=2)
        ref = table.get(reference, {}).get(metric) if reference else None
        if ref is not None and ref.get("mean") is not None and math.isfinite(ref["mean"]):
            ax.axhline(ref["mean"], color="black", linestyle="--", linewidth=1.4, label=reference)
            ax.legend(fontsize=7, frameon=False)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        hint = {True: " (higher is better)", False: " (lower is better)"}.get((better or {}).get(metric), "")
        ax.set_title(metric + hint, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
