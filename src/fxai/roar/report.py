"""The report of a ROAR/KAR grid: accuracy-versus-fraction plots, a table, every result as JSON, a summary."""

from __future__ import annotations

import json
import os
import statistics

from .._core.files import write_json, write_text
from . import jobs
from .pipeline import CONTROLS

_READING = """\
How to read it. Each point is the test accuracy of a network retrained from scratch on data whose
pixels were replaced in the training and the test set alike, averaged over repeats (error bars: one
standard deviation). **ROAR** replaces the pixels a map ranks *most* relevant: the faster accuracy
falls, the better the ranking, so **lower ROAR accuracy is better**. **KAR** replaces the *least*
relevant ones: **higher KAR accuracy is better**. The random control (a seeded noise map) is the bar
to clear; the Sobel edge map is a model-free control; the ground-truth mask, where the data has one,
is the ideal map. Compare methods within one fill only: the mean fill leaves the outline of the
removed region in the image, and on data whose class is a shape that outline alone can carry the
class (Rong et al., ICML 2022); noisy linear imputation hides it."""


def aggregate(results: dict[str, dict]) -> dict:
    """``{(method, fill, mode): {fraction: (mean, std, n)}}`` with the baseline as fraction 0 of every line."""
    base = [r["accuracy"] for r in results.values() if r.get("method") is None and "accuracy" in r]
    lines: dict = {}
    for r in results.values():
        if r.get("method") is None or "accuracy" not in r:
            continue
        lines.setdefault((r["method"], r["fill"], r["mode"]), {}).setdefault(r["fraction"], []).append(r["accuracy"])
    out = {}
    for key, points in lines.items():
        if base:
            points = {0.0: base, **points}
        out[key] = {f: _stats(v) for f, v in sorted(points.items())}
    return out


def _stats(values):
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def flags(agg: dict) -> dict:
    """``{(method, fill, mode): mean accuracy difference to the random control}`` over the fractions > 0,
    for methods that do no better than random (ROAR difference >= 0, KAR difference <= 0)."""
    out = {}
    for (method, fill, mode), points in agg.items():
        rnd = agg.get(("random", fill, mode))
        if method == "random" or rnd is None:
            continue
        shared = [f for f in points if f > 0 and f in rnd]
        if not shared:
            continue
        diff = statistics.fmean(points[f][0] - rnd[f][0] for f in shared)
        if (diff >= 0) if mode == "roar" else (diff <= 0):
            out[(method, fill, mode)] = diff
    return out


def run_kind(cfg: dict) -> str:
    """``"quick run (fxai roar --quick)"``, ``"default run"`` or ``"custom run"``: what the settings are."""
    from .pipeline import QUICK, RoarConfig

    if cfg == RoarConfig(**QUICK).to_json():
        return "quick run (fxai roar --quick)"
    return "default run" if cfg == RoarConfig().to_json() else "custom run"


def plot(agg: dict, path: str, *, chance: float | None = None, title: str | None = None) -> None:
    """``accuracy.png``: accuracy versus fraction (:func:`fxai.viz.roar_accuracy`), controls dashed."""
    from .. import viz

    viz.save(viz.roar_accuracy(agg, controls=CONTROLS, chance=chance, title=title), path)


def _cell(stat):
    return "–" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def table(agg: dict) -> list[str]:
    """A Markdown table: one row per (method, fill), columns ROAR and KAR at each fraction."""
    fractions = sorted({f for points in agg.values() for f in points if f > 0})
    modes = [m for m in ("roar", "kar") if any(k[2] == m for k in agg)]
    head = ["method", "fill"] + [f"{m.upper()} {f:g}" for m in modes for f in fractions]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for method, fill in sorted({k[:2] for k in agg}, key=lambda k: (k[1], k[0] in CONTROLS, k[0])):
        cells = [_cell(agg.get((method, fill, m), {}).get(f)) for m in modes for f in fractions]
        rows.append("| " + " | ".join([method, fill] + cells) + " |")
    return rows


def _what_ran(cfg: dict, summary: dict) -> list[str]:
    """The run's grid and training in a few lines (keys missing from older settings are left out)."""
    train = cfg.get("train", {})
    options = cfg.get("options") or {}
    methods = [m + (f" ({', '.join(f'{k}={v}' for k, v in options[m].items())})" if options.get(m) else "")
               for m in cfg.get("methods", []) if m not in CONTROLS]
    controls = [m for m in cfg.get("methods", []) if m in CONTROLS]
    fills = list(cfg.get("fills", []))
    extra = [f for f in cfg.get("control_fills", []) if f not in fills]
    lines = ["What ran:", ""]
    if methods or controls:
        lines.append(f"- methods: {', '.join(methods) or 'none'}; controls: {', '.join(controls) or 'none'}")
    if cfg.get("modes") and cfg.get("fractions"):
        lines.append(f"- {' and '.join(m.upper() for m in cfg['modes'])} at fractions "
                     f"{', '.join(f'{f:g}' for f in cfg['fractions'])} (and 0, the unaltered data)")
    if fills:
        lines.append(f"- fills: {', '.join(fills)} for every method" + (f"; also {', '.join(extra)} for the controls"
                                                                         if extra and controls else ""))
    if "batch_size" in train:
        lines.append(f"- each retrain: {train['epochs']} epochs, batches of {train['batch_size']}, "
                     f"{train['optimizer']} to learning rate {train['lr']:g}, augmentation {train['augment']}; "
                     f"seeds from {cfg.get('seed', 0)}")
    lines.append(f"- {summary['jobs']} retrains; {summary['seconds_train_total'] / 60:.1f} minutes of retraining "
                 "and altering summed over the workers")
    return lines


def used_counts(out: str, cfg: dict) -> dict:
    """``{"train": n, "test": n, "size": "H×W"}`` of the data the run used (read from ``out/data``: the settings
    leave the counts out (``None``) for datasets used whole)."""
    counts = {"train": cfg.get("train_count"), "test": cfg.get("test_count"), "size": f"{cfg['size']}×{cfg['size']}"}
    try:
        from safetensors import safe_open

        for split in ("train", "test"):
            with safe_open(os.path.join(out, "data", f"{split}.safetensors"), framework="pt") as fh:
                shape = fh.get_slice("images").get_shape()
            counts[split] = shape[0]
            counts["size"] = f"{shape[-2]}×{shape[-1]}"
    except (OSError, KeyError, ValueError, ImportError):
        pass
    return {k: ("?" if v is None else v) for k, v in counts.items()}


def write(out: str) -> dict:
    """Write ``out/report/``: ``accuracy.png``, ``table.md``, ``results.json``, ``summary.md``; returns the summary data.

    Example:
        >>> fxai.roar.write_report("roar-out")  # after fxai.roar.run("roar-out")
    """
    grid = jobs.read_grid(os.path.join(out, "grid"))
    results = jobs.read_results(os.path.join(out, "grid"))
    agg = aggregate(results)
    folder = os.path.join(out, "report")
    os.makedirs(folder, exist_ok=True)
    cfg = grid["settings"]["config"]
    if agg:
        plot(agg, os.path.join(folder, "accuracy.png"), chance=1 / grid["settings"]["classes"],
             title=f"{run_kind(cfg)}: {cfg['dataset']}, {cfg['train']['arch']} width {cfg['train']['width']}, "
                   f"{cfg['train']['epochs']} epochs, {cfg['repeats']} repeats per point")
    rows = table(agg)
    write_text(os.path.join(folder, "table.md"), "\n".join(rows) + "\n")
    flagged = flags(agg)
    errors = {k: r["error"] for k, r in results.items() if "error" in r}
    base = [r["accuracy"] for r in results.values() if r.get("method") is None and "accuracy" in r]
    summary = {"settings": grid["settings"], "jobs": len(grid["jobs"]), "finished": len(results),
               "errors": errors, "results": list(results.values()),
               "aggregate": [{"method": k[0], "fill": k[1], "mode": k[2], "fraction": f, "mean": s[0], "std": s[1],
                              "repeats": s[2]} for k, points in agg.items() for f, s in points.items()],
               "no_better_than_random": [{"method": k[0], "fill": k[1], "mode": k[2], "difference": d}
                                         for k, d in flagged.items()],
               "seconds_train_total": sum(r.get("seconds_train", 0) + r.get("seconds_alter", 0)
                                          for r in results.values())}
    write_json(os.path.join(folder, "results.json"), summary, sort_keys=False)
    cfg = grid["settings"]["config"]
    counts = used_counts(out, cfg)
    chance = 1 / grid["settings"]["classes"]
    text = ["# ROAR / KAR report", "", f"A {run_kind(cfg)}.", "",
            f"{cfg['train']['arch']} (width {cfg['train']['width']}, {cfg['train']['epochs']} epochs) retrained on "
            f"`{cfg['dataset']}` ({counts['train']} training and {counts['test']} test images of "
            f"{counts['size']}), {cfg['repeats']} repeats per point, maps reduced over channels by "
            f"`{cfg['reduce']}`. Chance accuracy: {chance:.3f}. The explained model's test accuracy: "
            f"{grid['settings']['base_accuracy']:.3f}; retrained on unaltered data: "
            + (f"{statistics.fmean(base):.3f}" if base else "–") + ".",
            f"Jobs finished: {len(results)} of {len(grid['jobs'])}" + (f", {len(errors)} failed" if errors else "")
            + ".", "", *_what_ran(cfg, summary), "", _READING, "", "![accuracy versus fraction](accuracy.png)", "",
            *rows, ""]
    if flagged:
        text += ["**No better than random** (mean accuracy difference to the random control over the fractions, "
                 "same fill):", ""]
        text += [f"- {m} ({fill} fill, {mode.upper()}): {d:+.3f}" for (m, fill, mode), d in flagged.items()]
    else:
        text += ["Every method ranks better than the random control (where it was run)."]
    if errors:
        text += ["", "Failed jobs:", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    write_text(os.path.join(folder, "summary.md"), "\n".join(text) + "\n")
    return summary
