"""The ROAR/KAR figure: test accuracy against the fraction of pixels replaced."""

from __future__ import annotations

from collections.abc import Collection

from .canvas import figure


def roar_accuracy(agg: dict, *, controls: Collection[str] = (), chance: float | None = None,
                  title: str | None = None):
    """Accuracy versus fraction: one panel per (fill, mode), one line per method with its spread as error bars,
    the ``controls`` (random, edge maps) dashed, ``chance`` as a gray dotted line, ``title`` (e.g. the run's
    kind) above the panels. ``agg`` maps ``(method, fill, mode)`` to ``{fraction: (mean, std, repeats)}``.

    Example:
        >>> fig = fxai.viz.roar_accuracy({("gradient", "mean", "roar"): {0.1: (0.9, 0.01, 2), 0.5: (0.6, 0.02, 2)}},
        ...                              chance=0.25)
        >>> len(fig.axes)
        1
    """
    import matplotlib

    fills = sorted({k[1] for k in agg})
    modes = [m for m in ("roar", "kar") if any(k[2] == m for k in agg)]
    fig = figure(5.5 * len(modes), 4 * len(fills) + (0.3 if title else 0))
    axes = fig.subplots(len(fills), len(modes), squeeze=False)
    names = sorted({k[0] for k in agg}, key=lambda m: (m in controls, m))
    palette = matplotlib.colormaps["tab10"]
    colours = {m: palette(i % 10) for i, m in enumerate(names)}
    for i, fill in enumerate(fills):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for method in names:
                points = agg.get((method, fill, mode))
                if not points:
                    continue
                fr = list(points)
                ax.errorbar(fr, [points[f][0] for f in fr], yerr=[points[f][1] for f in fr], label=method,
                            color=colours[method], linestyle="--" if method in controls else "-", marker="o",
                            markersize=3, capsize=3)
            if chance is not None:
                ax.axhline(chance, color="0.4", linestyle=":", linewidth=1.2, label=f"chance ({chance:.2f})")
            ax.set_title(f"{mode.upper()} ({'lower' if mode == 'roar' else 'higher'} is better), {fill} fill")
            ax.set_xlabel("fraction of pixels replaced")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
