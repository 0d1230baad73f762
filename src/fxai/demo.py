"""The built-in demo: train a small CNN on the synthetic shapes, explain it with every method, score against ground truth.

``fxai demo`` runs :func:`run`: it generates the synthetic dataset
(:mod:`fxai.data.synthetic`), trains :class:`fxai.models.SmallCNN` on it
(resuming from ``model.pt`` in the output folder when a run was interrupted),
explains a held-out batch with every method of :data:`fxai.registry.METHODS`
scores each map
against the ground-truth masks and by deletion/insertion, and writes a report
folder: ``grid.png``, ``curves.png``, ``report.md``, ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from . import loading, metrics, postprocess, registry, viz
from ._core.functional import functional
from .data.synthetic import CLASS_NAMES, shapes
from .models import SmallCNN

TEST_START = 1 << 30  # held-out samples: indices the training stream never reaches


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What the demo does; :data:`FULL` is the default, :data:`QUICK` runs in seconds (for tests)."""

    size: int = 32
    classes: int = 4
    width: int = 24
    steps: int = 300
    batch: int = 64
    lr: float = 4e-3
    test_count: int = 1000
    explain_count: int = 64
    grid_rows: int = 6
    curve_steps: int = 16
    method_scale: int = 4  # divides the costly methods' registry ``cost`` (their samples/steps at a full budget)
    save_every: int = 50


FULL = DemoConfig()
QUICK = DemoConfig(size=16, width=8, steps=12, batch=32, test_count=64, explain_count=8, grid_rows=3,
                   curve_steps=6, method_scale=16, save_every=5)

# ---------------------------------------------------------------- scores
# The demo's metric list, one place to change. Localisation scores: (heat [B, H, W] >= 0, masks [B, H, W] bool)
# -> [B]. Faithfulness curves: (model_fn, params, x, target, heat, steps, seed) -> probabilities [B, steps + 1] at
# the fractions 0, 1/steps, ..., 1 of pixels, with whether a higher area under the curve is better.

LOCALISATION: dict[str, Callable] = {
    "relevance mass": metrics.relevance_mass,
    "relevance rank": metrics.relevance_rank,
    "pointing game": lambda heat, masks: metrics.pointing_game(heat, masks, tolerance=0),
}
CURVES: dict[str, tuple[Callable, bool]] = {
    "deletion": (lambda model_fn, params, x, target, heat, steps, seed: metrics.deletion(
        model_fn, params, x, target, heat, steps=steps, softmax=True, key=seed), False),
    "insertion": (lambda model_fn, params, x, target, heat, steps, seed: metrics.insertion(
        model_fn, params, x, target, heat, steps=steps, softmax=True, key=seed), True),
}


# ---------------------------------------------------------------- training


def _checkpoint_key(config: DemoConfig, seed: int) -> dict:
    return {"seed": seed, **{k: v for k, v in dataclasses.asdict(config).items()
                             if k in ("size", "classes", "width", "steps", "batch", "lr")}}


def train(config: DemoConfig, *, seed: int, device: torch.device, checkpoint: str | None = None,
          stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] = print) -> SmallCNN:
    """Train :class:`SmallCNN` on fresh synthetic batches (batch ``s`` is samples ``s*batch ...`` of ``seed``).

    With ``checkpoint``, the state is saved every ``config.save_every`` steps and at
    the end, and a later call with the same configuration resumes from it (or
    returns the trained model at once): a resumed run ends with the same weights
    as an uninterrupted one. ``stop_after`` stops after that many steps (to test resuming).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = SmallCNN(config.classes, width=config.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    key, step = _checkpoint_key(config, seed), 0
    if checkpoint and os.path.exists(checkpoint):
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint is retrained, not fatal
            log(f"ignoring unreadable checkpoint {checkpoint} ({type(err).__name__}); training from scratch")
            state = None
        if state is not None and state.get("key") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step = state["step"]
            log(f"reusing the trained model in {checkpoint}" if step >= config.steps
                else f"resuming training from step {step} of {config.steps} ({checkpoint})")
        elif state is not None:
            log(f"{checkpoint} was trained with other settings; training again")

    def save():
        if checkpoint:
            tmp = checkpoint + ".tmp"
            torch.save({"key": key, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict()}, tmp)
            os.replace(tmp, checkpoint)

    model.train()
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="training", unit="step", disable=not progress or step >= end,
               dynamic_ncols=True)
    while step < end:
        batch = shapes(config.batch, seed=seed, start=step * config.batch, size=config.size, classes=config.classes,
                       device=device)
        loss = nn.functional.cross_entropy(model(batch.images), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % config.save_every == 0 or step == end:
            save()
    bar.close()
    return model.eval()


def accuracy(model_fn, params, images: torch.Tensor, labels: torch.Tensor, chunk_size: int = 500) -> float:
    """Top-1 accuracy of ``model_fn`` on a batch."""
    with torch.no_grad():
        preds = torch.cat([model_fn(params, part).argmax(-1) for part in images.split(chunk_size)])
    return (preds == labels).float().mean().item()


# ---------------------------------------------------------------- explaining


def explain_all(model_fn, params, x: torch.Tensor, target: torch.Tensor, *, layer: str, seed: int,
                references: torch.Tensor, scale: int | None = None, chunk_size: int | None = 1024, methods=None,
                progress: bool = True) -> dict:
    """Every method's map of ``x``: ``{name: {"map", "seconds"} or {"skipped": reason} or {"error": message}}``."""
    from tqdm.auto import tqdm

    results = {}
    infos = list(registry.METHODS.values()) if methods is None else [registry.method(m) for m in methods]
    for info in tqdm(infos, desc="explaining", unit="method", disable=not progress, dynamic_ncols=True):
        try:
            options = registry.options(info, size=tuple(x.shape[-2:]), layer=layer, key=seed, references=references,
                                       scale=scale, chunk_size=chunk_size)
            start = time.perf_counter()
            amap = info.fn(model_fn, params, x, target, **options)
            results[info.name] = {"map": amap.detach(), "seconds": time.perf_counter() - start, "kind": info.kind}
        except LookupError as err:
            results[info.name] = {"skipped": str(err)}
        except Exception as err:  # noqa: BLE001 - one failing method must not stop the report
            results[info.name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
    return results


# ---------------------------------------------------------------- report


def _fmt(value, digits=3):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(rows: dict, chance: dict) -> list[str]:
    names = list(LOCALISATION) + [f"{n} AUC" for n in CURVES]
    head = ["method", "time (s)"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        if "scores" in row:
            cells = [name, _fmt(row["seconds"], 2)] + [_fmt(row["scores"].get(n)) for n in names]
        else:
            cells = [name, "–"] + ["–"] * (len(names) - 1) + [row.get("skipped") or row.get("error")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| *random map (chance)* | – | " + " | ".join(_fmt(chance.get(n)) for n in names) + " |")
    return lines


def _print_table(rows: dict, chance: dict, log) -> None:
    names = list(LOCALISATION) + [f"{n} AUC" for n in CURVES]
    short = {"relevance mass": "mass", "relevance rank": "rank", "pointing game": "pointing",
             "deletion AUC": "deletion", "insertion AUC": "insertion"}
    head = ["method", "time"] + [short.get(n, n) for n in names]
    width = max(len(n) for n in list(rows) + ["random (chance)"]) + 2
    log(f"{head[0]:<{width}}" + "".join(f"{h:>10}" for h in head[1:]))
    for name, row in rows.items():
        if "scores" in row:
            log(f"{name:<{width}}" + f"{row['seconds']:>9.2f}s"
                + "".join(f"{_fmt(row['scores'].get(n)):>10}" for n in names))
        else:
            log(f"{name:<{width}}  " + (f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"))
    log(f"{'random (chance)':<{width}}" + f"{'':>10}" + "".join(f"{_fmt(chance.get(n)):>10}" for n in names))


def _score(model_fn, params, x, target, heat, masks, steps, seed) -> tuple[dict, dict]:
    scores = {name: fn(heat, masks).float().mean().item() for name, fn in LOCALISATION.items()}
    curves = {}
    for name, (curve, _) in CURVES.items():
        probs = curve(model_fn, params, x, target, heat, steps, seed)
        scores[f"{name} AUC"] = metrics.auc(probs).mean().item()
        curves[name] = (torch.linspace(0, 1, probs.shape[-1]), probs.mean(0).cpu())
    return scores, curves


def run(out: str = "fxai-demo", *, seed: int = 0, device: str | None = "auto", quick: bool = False,
        progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the demo and write its report folder ``out``; returns the results (as in ``results.json``).

    Example:
        >>> results = fxai.demo.run("demo-out", quick=True)
    """
    config = QUICK if quick else FULL
    dev = loading.resolve_device(device)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()

    model = train(config, seed=seed, device=dev, checkpoint=os.path.join(out, "model.pt"), progress=progress, log=log)
    model_fn, params = functional(model)
    opts = dict(seed=seed, size=config.size, classes=config.classes, device=dev)
    test = shapes(config.test_count, start=TEST_START, **opts)
    acc = accuracy(model_fn, params, test.images, test.labels)
    log(f"test accuracy: {acc:.4f} on {config.test_count} held-out images")

    batch = shapes(config.explain_count, start=TEST_START, **opts)
    references = shapes(32, start=config.steps * config.batch, **opts).images
    x, target, masks = batch.images, batch.labels, batch.masks
    size = tuple(x.shape[-2:])
    maps = explain_all(model_fn, params, x, target, layer="features", seed=seed, references=references,
                       scale=config.method_scale, progress=progress)

    rows, all_curves, heats = {}, {name: {} for name in CURVES}, {}
    for name, res in maps.items():
        if "map" not in res:
            rows[name] = res
            continue
        heat = postprocess.heatmap(res["map"], kind=res["kind"], reduce="abs_sum", sign="positive",
                                   size=size).detach().float()
        scores, curves = _score(model_fn, params, x, target, heat, masks, config.curve_steps, seed)
        rows[name] = {"seconds": res["seconds"], "scores": scores}
        heats[name] = heat
        for cname, curve in curves.items():
            all_curves[cname][name] = curve
    noise = torch.rand(x.shape[0], *size, generator=torch.Generator().manual_seed(seed)).to(dev)
    chance, chance_curves = _score(model_fn, params, x, target, noise, masks, config.curve_steps, seed)
    for cname, curve in chance_curves.items():
        all_curves[cname]["random"] = curve

    n = config.grid_rows
    labels = [f"{CLASS_NAMES[int(t)]}" for t in target[:n]]
    fig = viz.grid(x[:n].cpu(), {k: v[:n].cpu() for k, v in heats.items()}, masks=masks[:n].cpu(), row_titles=labels,
                   sign="positive", transpose=len(heats) > 6,
                   title="maps of the true class\n(pixel maps: sum of |a| over channels; CAMs: positive part)")
    viz.save(fig, os.path.join(out, "grid.png"))
    fig = viz.curves([all_curves[c] for c in CURVES], ax_titles=[f"{c} (mean over {x.shape[0]} images)" for c in CURVES],
                     xlabel="fraction of pixels", ylabel="probability of the true class")
    viz.save(fig, os.path.join(out, "curves.png"))

    results = {
        "config": {**dataclasses.asdict(config), "seed": seed, "device": str(dev), "quick": quick},
        "test_accuracy": acc,
        "methods": rows,
        "chance": chance,
        "curves": {c: {k: {"fractions": f.tolist(), "probability": p.tolist()} for k, (f, p) in v.items()}
                   for c, v in all_curves.items()},
        "seconds": time.perf_counter() - started,
    }
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    _write_markdown(os.path.join(out, "report.md"), results, rows, chance)
    log("")
    _print_table(rows, chance, log)
    log(f"\nreport written to {os.path.abspath(out)} (report.md, grid.png, curves.png, results.json)")
    return results


def _write_markdown(path: str, results: dict, rows: dict, chance: dict) -> None:
    cfg = results["config"]
    better = ", ".join(f"{n}: {'higher' if hi else 'lower'} is better" for n, (_, hi) in CURVES.items())
    text = [
        "# fxai demo report", "",
        f"A {cfg['width']}-wide `SmallCNN` trained for {cfg['steps']} steps (batches of {cfg['batch']}) on "
        f"{cfg['size']}×{cfg['size']} synthetic shapes ({cfg['classes']} classes, seed {cfg['seed']}, "
        f"device {cfg['device']}).", "",
        f"**Test accuracy**: {results['test_accuracy']:.4f} on {cfg['test_count']} held-out images.", "",
        f"Each method explains the true class of {cfg['explain_count']} held-out images. Localisation scores compare "
        "the map with the object's mask (higher is better; a random map scores the mask's area share). "
        f"Deletion/insertion: area under the probability curve as pixels are removed/added in the map's order ({better}).",
        "", *_table(rows, chance), "",
        "## Maps", "", "![coherence grid](grid.png)", "",
        "## Deletion and insertion curves", "", "![curves](curves.png)", "",
    ]
    with open(path, "w") as fh:
        fh.write("\n".join(text))
