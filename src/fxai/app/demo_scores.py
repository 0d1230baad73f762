"""The demo's scores: which metrics it runs, which is better, and how its tables and ``report.md`` read them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import metrics

# The demo's metric list, one place to change. Localisation scores: (heat [B, H, W] >= 0, masks [B, H, W] bool)
# -> [B], higher is better. Faithfulness: (model_fn, params, x, target, heat, config, seed) -> (score [B'], curve
# [B', T] or None, the curve's fractions or None), with whether a higher score is better. Removed pixels are never
# filled with black: a black hole keeps the object's silhouette, which a shape classifier still reads (the leakage
# Rong et al. 2022 describe). Deletion fills them with a blurred copy, ROAD by noisy linear imputation.

LOCALISATION: dict[str, Callable] = {
    "relevance mass": metrics.relevance_mass,
    "relevance rank": metrics.relevance_rank,
    "pointing game": lambda heat, masks: metrics.pointing_game(heat, masks, tolerance=0),
}

BLUR = dict(sigma=5.0, kernel_size=11)


def _deletion(model_fn, params, x, target, heat, config, seed):
    probs = metrics.deletion(model_fn, params, x, target, heat, steps=config.curve_steps, softmax=True, key=seed,
                             imputer=metrics.blur(BLUR["sigma"], BLUR["kernel_size"]))
    return metrics.auc(probs), probs, torch.linspace(0, 1, probs.shape[-1])


def _insertion(model_fn, params, x, target, heat, config, seed):
    probs = metrics.insertion(model_fn, params, x, target, heat, steps=config.curve_steps, softmax=True, key=seed,
                              imputer=metrics.blur(BLUR["sigma"], BLUR["kernel_size"]))
    return metrics.auc(probs), probs, torch.linspace(0, 1, probs.shape[-1])


def _road(model_fn, params, x, target, heat, config, seed):
    n = config.road_count
    curves = [metrics.road(model_fn, params, x[:n], target[:n], heat[:n], fractions=config.road_fractions,
                           order=order, softmax=True, key=seed) for order in ("morf", "lerf")]
    return metrics.road_combined(*curves), None, None


FAITHFULNESS: dict[str, tuple[Callable, bool]] = {
    "deletion AUC": (_deletion, False),
    "insertion AUC": (_insertion, True),
    "ROAD": (_road, True),
}
HIGHER_IS_BETTER = {**dict.fromkeys(LOCALISATION, True), **{n: hi for n, (_, hi) in FAITHFULNESS.items()}}


COLUMNS = list(LOCALISATION) + list(FAITHFULNESS)
SHORT = {"relevance mass": "mass", "relevance rank": "rank", "pointing game": "pointing",
         "deletion AUC": "deletion", "insertion AUC": "insertion", "ROAD": "ROAD"}
FLAG = "†"


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def no_better_than_chance(scores: dict, chance: dict) -> set:
    """The columns where a method scores no better than the random map."""
    return {n for n in COLUMNS if n in scores and n in chance and
            (scores[n] <= chance[n] if HIGHER_IS_BETTER[n] else scores[n] >= chance[n])}


def _cell(row: dict, chance: dict, name: str) -> str:
    return _fmt(row["scores"].get(name)) + (FLAG if name in no_better_than_chance(row["scores"], chance) else "")


def table(rows: dict, chance: dict) -> list[str]:
    """The demo's table of scores as lines of text, the random map last."""
    head = ["method", "time (s)"] + COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        if "scores" in row:
            cells = [name, _fmt(row["seconds"], 2)] + [_cell(row, chance, n) for n in COLUMNS]
        else:
            cells = [name, "–"] + ["–"] * (len(COLUMNS) - 1) + [row.get("skipped") or row.get("error")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| *random map (chance)* | – | " + " | ".join(_fmt(chance.get(n)) for n in COLUMNS) + " |")
    return lines


def print_table(rows: dict, chance: dict, log) -> None:
    """Print :func:`table` through ``log``."""
    head = ["method", "time"] + [SHORT.get(n, n) for n in COLUMNS]
    width = max(len(n) for n in list(rows) + ["random (chance)"]) + 2
    log(f"{head[0]:<{width}}" + "".join(f"{h:>10}" for h in head[1:]))
    for name, row in rows.items():
        if "scores" in row:
            log(f"{name:<{width}}" + f"{row['seconds']:>9.2f}s" + "".join(f"{_cell(row, chance, n):>10}"
                                                                        for n in COLUMNS))
        else:
            why = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
            log(f"{name:<{width}}  {why}")
    log(f"{'random (chance)':<{width}}" + f"{'':>10}" + "".join(f"{_fmt(chance.get(n)):>10}" for n in COLUMNS))
    log(f"{FLAG} no better than the random map")


def markdown(results: dict, rows: dict, chance: dict) -> str:
    """The text of ``report.md``: the settings, how to read each column, the table, the figures."""
    cfg = results["config"]
    untrained = (f"**Quick run: the model trained for {cfg['steps']} steps only and is untrained; these scores mean "
                 "nothing** (run `fxai demo` without `--quick` for the real report).\n\n" if cfg["quick"] else "")
    text = [
        "# fxai demo report", "",
        untrained + f"A {cfg['width']}-wide `SmallCNN` trained for {cfg['steps']} steps (batches of {cfg['batch']}) "
        f"on {cfg['size']}×{cfg['size']} synthetic shapes ({cfg['classes']} classes, seed {cfg['seed']}, "
        f"device {cfg['device']}).", "",
        f"**Test accuracy**: {results['test_accuracy']:.4f} on {cfg['test_count']} held-out images "
        f"(whole run: {results['seconds']:.0f} s).", "",
        f"Each method explains the true class of {cfg['explain_count']} held-out images; {FLAG} marks a score no "
        "better than the random map's (last row).", "",
        "## How to read the columns", "",
        "- **relevance mass**: share of the map's positive mass inside the object's mask (higher is better; a "
        "random map scores about the mask's area share).",
        "- **relevance rank**: share of the mask's pixels among the map's top pixels, as many as the mask has "
        "(higher is better).",
        "- **pointing game**: how often the map's maximum falls on the object (higher is better).",
        f"- **deletion AUC**: area under the probability of the true class as the map's most relevant pixels are "
        f"removed, 1/{cfg['curve_steps']} of the image at a time (lower is better). Removed pixels are filled with "
        f"a blurred copy of the image (Gaussian σ = {BLUR['sigma']:g} px), not black: a black hole keeps the "
        "object's silhouette, which a shape classifier still reads, so a black fill rewards maps of the outline.",
        "- **insertion AUC**: the probability as the most relevant pixels are restored into the blurred image "
        "(same blur; higher is better).",
        f"- **ROAD**: Rong et al. 2022, removing the most (MoRF) and least (LeRF) relevant "
        f"{', '.join(f'{f:.0%}' for f in cfg['road_fractions'])} of the pixels, filled by noisy linear imputation "
        "(each removed pixel the mean of its neighbours, plus noise 0.01, which leaks far less of the removed "
        f"shape); the score is ½(mean LeRF − mean MoRF) on the first {cfg['road_count']} images (higher is better).",
        "- Pixel maps are scored as |a| summed over channels, CAMs by their positive part.",
        "- RISE's map carries the model's mean score over random masks as an offset; it is scored and shown by its "
        "variation above its minimum.", "",
        *table(rows, chance), "",
        "## Maps", "", *[f"![coherence grid, page {k + 1}]({g})" for k, g in enumerate(results.get("grids", ["grid.png"]))],
        "",
        "## Deletion and insertion curves", "", "![curves](curves.png)", "",
    ]
    return "\n".join(text)
