"""The built-in demo: train a small CNN on the synthetic shapes, explain it with every method, score against ground truth.

``fxai demo`` runs :func:`run`: it generates the synthetic dataset
(:mod:`fxai.data.synthetic`), trains :class:`fxai.models.SmallCNN` on it
(resuming from ``model.pt`` in the output folder when a run was interrupted),
explains a held-out batch with every method of :data:`fxai.registry.METHODS`,
scores each map against the ground-truth masks and by faithfulness
(:mod:`fxai.demo_scores`: deletion and insertion over a blurred fill, ROAD),
and writes a report folder: ``grid.png``, ``curves.png``, ``report.md``,
``results.json``, each replaced whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from .. import metrics, postprocess, registry, viz
from . import loading
from ..attribution.factorization import deep_feature_factorization
from .demo_scores import BLUR, FAITHFULNESS, LOCALISATION, markdown, no_better_than_chance, print_table
from .._core.batching import reporting
from .._core.files import DiskFullError, remove_leftovers, write_atomic, write_text
from .._core.discovery import resolve_layers
from .._core.functional import functional
from .._core.progress import progress_bar
from ..data.synthetic import CLASS_NAMES, shapes
from ..roar import described
from ..roar.nets import build

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
    curve_steps: int = 12
    road_count: int = 16   # ROAD's imputation costs most: scored on the first images explained
    road_fractions: tuple = (0.2, 0.4, 0.6, 0.8)
    method_scale: int = 4  # divides the costly methods' registry ``cost`` (their samples/steps at a full budget)
    save_every: int = 50
    arch: str = "cnn"      # "cnn" (SmallCNN) or "vit" (fxai.models.small_vit)


FULL = DemoConfig()
VIT_STEPS = 2000  # fxai demo --arch vit: training steps of the small ViT (with its convolutional stem)
QUICK = DemoConfig(size=16, width=8, steps=12, batch=32, test_count=64, explain_count=8, grid_rows=3,
                   curve_steps=6, road_count=4, road_fractions=(0.25, 0.75), method_scale=16, save_every=5)

# ---------------------------------------------------------------- training


def _architecture(config: DemoConfig) -> tuple[str, int]:
    """``(name, width)`` of the demo's network in :func:`fxai.roar.nets.build`'s terms."""
    return ("small_vit", 2 * config.width) if config.arch == "vit" else ("smallcnn", config.width)


def _checkpoint_key(config: DemoConfig, seed: int) -> dict:
    return {"seed": seed, **{k: v for k, v in dataclasses.asdict(config).items()
                             if k in ("size", "classes", "width", "steps", "batch", "lr", "arch")}}


def train(config: DemoConfig, *, seed: int, device: torch.device, checkpoint: str | None = None,
          stop_after: int | None = None, progress: bool = True, log: Callable[[str], None] = print) -> nn.Module:
    """Train the demo's network (:class:`fxai.models.SmallCNN`, or the ViT of ``config.arch="vit"``) on fresh synthetic
    batches (batch ``s`` is samples ``s*batch ...`` of ``seed``).

    With ``checkpoint``, the state is saved every ``config.save_every`` steps and at
    the end, and a later call with the same configuration resumes from it (or
    returns the trained model at once): a resumed run ends with the same weights
    as an uninterrupted one. ``stop_after`` stops after that many steps (to test resuming).
    """
    torch.manual_seed(seed)
    arch, width = _architecture(config)
    model = build(arch, config.classes, width=width, size=config.size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    key, step = _checkpoint_key(config, seed), 0
    if checkpoint:
        remove_leftovers(checkpoint)                    # left by a run killed while saving
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
        elif state is not None and state.get("step", 0) >= state.get("key", {}).get("steps", float("inf")):
            other = ", ".join(f"{k} {v}" for k, v in state["key"].items() if key.get(k) != v)
            raise ValueError(f"{checkpoint} holds a model trained with other settings ({other}); it is kept: choose "
                             "another report folder with --out, or delete the file to train here again")
        elif state is not None:
            log(f"{checkpoint} was trained with other settings; training again")

    def save():
        if not checkpoint:
            return
        state = {"key": key, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(),
                 described.KEY: described.description(arch, classes=config.classes, width=width, size=config.size,
                                                      class_names=CLASS_NAMES[:config.classes])}
        try:
            write_atomic(checkpoint, lambda tmp: torch.save(state, tmp))
        except DiskFullError:
            raise OSError(f"cannot save the model to {checkpoint}: the disk is full") from None

    model.train()
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = progress_bar(total=config.steps, initial=step, desc="training", unit="step",
                       disable=not progress or step >= end)
    try:
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
    except KeyboardInterrupt:
        bar.close()
        if checkpoint and step > 0:
            save()
            log(f"\ninterrupted at step {step} of {config.steps}; progress saved to {checkpoint}, run the same "
                "command again to resume")
        raise
    finally:
        bar.close()                                     # the bar's line ends before any message
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
    results = {}
    infos = list(registry.METHODS.values()) if methods is None else [registry.method(m) for m in methods]
    bar = progress_bar(infos, desc="explaining", unit="method", disable=not progress)
    for info in bar:
        bar.set_postfix_str(info.name)
        try:
            options = registry.options(info, size=tuple(x.shape[-2:]), layer=layer, key=seed, references=references,
                                       scale=scale, chunk_size=chunk_size)
            start = time.perf_counter()
            with reporting(lambda done, total: bar.set_postfix_str(f"{info.name} {done}/{total} rows", refresh=True)):
                amap = info.fn(model_fn, params, x, target, **options)
            results[info.name] = {"map": amap.detach(), "seconds": time.perf_counter() - start, "kind": info.kind,
                                  "family": info.family}
        except LookupError as err:
            results[info.name] = {"skipped": str(err)}
        except Exception as err:  # noqa: BLE001 - one failing method must not stop the report
            results[info.name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
    return results


def _score(model_fn, params, x, target, heat, masks, config, seed) -> tuple[dict, dict]:
    scores = {name: fn(heat, masks).float().mean().item() for name, fn in LOCALISATION.items()}
    curves = {}
    for name, (fn, _) in FAITHFULNESS.items():
        value, probs, fractions = fn(model_fn, params, x, target, heat, config, seed)
        scores[name] = value.float().mean().item()
        if probs is not None:
            curves[name] = (fractions, probs.mean(0).cpu())
    return scores, curves


CURVES_SHOWN = 6   # lines in colour in curves.png: the best, then the others in gray
GRID_METHODS = 10  # methods per page of grid.png: a page fits a screen
QUICK_NOTE = "\nquick run: an untrained 12-step model, the maps mean nothing"


def _grids(model_fn, params, x, target, masks, heats, origins, config, out, quick: bool = False) -> list[str]:
    """``grid.png`` (and ``grid-2.png``, ... for more than :data:`GRID_METHODS` methods): the first images, their
    masks and the maps of the true class, one row per image labelled with its class and the model's prediction."""
    from .._core.targets import probabilities

    n = config.grid_rows
    with torch.no_grad():
        probs = probabilities(model_fn(params, x[:n])).cpu()
    labels = [f"{CLASS_NAMES[int(t)]}\npred. {CLASS_NAMES[int(p.argmax())]}\np = {float(p.max()):.2f}"
              for t, p in zip(target[:n], probs)]
    names = list(heats)
    pages = max(1, -(-len(names) // GRID_METHODS))
    per = -(-len(names) // pages)
    files = []
    for page in range(pages):
        chunk = names[page * per:(page + 1) * per]
        kinds = [("pixel maps: |a| summed over channels", any(origins[k] == "zero" and not _is_cam(k) for k in chunk)),
                 ("CAMs: positive part", any(_is_cam(k) and origins[k] == "zero" for k in chunk)),
                 ("RISE: above its minimum", any(origins[k] == "min" for k in chunk))]
        title = (f"maps of the true class" + (f", page {page + 1} of {pages}" if pages > 1 else "")
                 + "\n" + "; ".join(t for t, shown in kinds if shown) + (QUICK_NOTE if quick else ""))
        fig = viz.grid(x[:n].cpu(), {k: heats[k][:n].cpu() for k in chunk}, masks=masks[:n].cpu(), row_titles=labels,
                       sign="positive", origin={k: origins[k] for k in chunk}, cell=1.3, title=title)
        files.append("grid.png" if page == 0 else f"grid-{page + 1}.png")
        viz.save(fig, os.path.join(out, files[-1]))
    return files


def _is_cam(name: str) -> bool:
    info = registry.METHODS.get(name)
    return info is not None and info.kind == "cam"


def _concepts(model_fn, params, x, target, masks, seed: int, out: str, layer: str = "features",
              count: int = 3) -> dict:
    """Deep Feature Factorization of the explained batch at ``layer``: ``concepts.png``, and per concept its top
    classes and its relevance mass against the objects' masks (which concept is the object, which the background)."""
    result = deep_feature_factorization(model_fn, params, x, layer=layer, concepts=count, head="auto", key=seed)
    labels = list(CLASS_NAMES[:result.class_scores.shape[1]])
    names = viz.concept_labels(result.class_scores, labels=labels)
    with torch.no_grad():
        pred = model_fn(params, x[:6]).argmax(-1).tolist()
    titles = [f"{labels[int(t)]} · pred. {labels[p]}" for t, p in zip(target[:6], pred)]
    viz.save(viz.factorization(x[:6].cpu(), result._replace(maps=result.maps[:6]), labels=labels, image_titles=titles,
                               title=f"{count} concepts of the `{layer}` layer (Deep Feature Factorization) over "
                                     f"{x.shape[0]} images; the first 6 shown"), os.path.join(out, "concepts.png"))
    mass = [metrics.relevance_mass(result.maps[:, k], masks).mean().item() for k in range(count)]
    area = masks.float().mean().item()
    return {"names": names, "relevance_mass": mass, "mask_area": area, "layer": layer}


def _concepts_markdown(concepts: dict) -> str:
    lines = ["", "## Concepts (Deep Feature Factorization)", "",
             f"Three concepts factorised from the `{concepts.get('layer', 'features')}` activations of the explained images (non-negative "
             f"matrix factorisation, `fxai.deep_feature_factorization`), each named by the classes the head gives "
             f"it, with the share of its map inside the objects (a map blind to the object scores the objects' "
             f"area, {concepts['mask_area']:.3f}):", "", "| concept | top classes | relevance mass |", "|---|---|---:|"]
    lines += [f"| {k} | {n} | {m:.3f} |" for k, (n, m) in enumerate(zip(concepts["names"], concepts["relevance_mass"]))]
    return "\n".join(lines + ["", "![concepts](concepts.png)", ""])


def run(out: str = "fxai-demo", *, seed: int = 0, device: str | None = "auto", quick: bool = False,
        arch: str = "cnn", progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the demo and write its report folder ``out``; returns the results (as in ``results.json``).

    The model is saved as ``model.pt`` (``model-quick.pt`` for ``quick=True``, whose 12-step model is
    untrained), and every report file is written whole or not at all. ``arch="vit"`` trains and explains a small
    vision transformer (:func:`fxai.models.small_vit`, :data:`VIT_STEPS` steps at a learning rate of 2e-3)
    instead of :class:`fxai.models.SmallCNN`; its layer methods and concepts read the first norm of its last block.

    Example:
        >>> results = fxai.app.demo.run("demo-out", quick=True)
    """
    if arch not in ("cnn", "vit"):
        raise ValueError(f"arch must be 'cnn' or 'vit', got {arch!r}")
    config = dataclasses.replace(QUICK if quick else FULL, arch=arch)
    if arch == "vit":  # a ViT learns the shapes more slowly than the CNN (measured in docs/transformers.md)
        config = dataclasses.replace(config, lr=2e-3, steps=config.steps if quick else VIT_STEPS)
    dev = loading.resolve_device(device)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    if quick:
        log("quick run: the model trains for 12 steps and stays untrained; its scores mean nothing")

    checkpoint = os.path.join(out, "model-quick.pt" if quick else "model.pt")
    model = train(config, seed=seed, device=dev, checkpoint=checkpoint, progress=progress, log=log)
    model_fn, params = functional(model)
    opts = dict(seed=seed, size=config.size, classes=config.classes, device=dev)
    test = shapes(config.test_count, start=TEST_START, **opts)
    acc = accuracy(model_fn, params, test.images, test.labels)
    log(f"test accuracy: {acc:.4f} on {config.test_count} held-out images")

    batch = shapes(config.explain_count, start=TEST_START, **opts)
    references = shapes(32, start=config.steps * config.batch, **opts).images
    x, target, masks = batch.images, batch.labels, batch.masks
    size = tuple(x.shape[-2:])
    layer = "features" if arch == "cnn" else resolve_layers(model_fn, None, params=params, x=x)[0]
    maps = explain_all(model_fn, params, x, target, layer=layer, seed=seed, references=references,
                       scale=config.method_scale, progress=progress)

    rows, all_curves, heats, origins = {}, {}, {}, {}
    noise = torch.rand(x.shape[0], *size, generator=torch.Generator().manual_seed(seed)).to(dev)
    bar = progress_bar(list(maps) + ["random"], desc="scoring", unit="map", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        res = maps.get(name, {"map": noise, "kind": "cam", "family": "random"})
        if "map" not in res:
            rows[name] = res
            continue
        heat = postprocess.heatmap(res["map"], kind=res["kind"], reduce="abs_sum", sign="positive",
                                   size=size).detach().float()
        origins[name] = viz.origin_for(res["kind"], res["family"])
        if origins[name] == "min":                     # an offset map (RISE) is read by its variation
            heat = heat - heat.amin(dim=(-2, -1), keepdim=True)
        scores, curves = _score(model_fn, params, x, target, heat, masks, config, seed)
        for cname, curve in curves.items():
            all_curves.setdefault(cname, {})[name] = curve
        if name == "random":
            chance = scores
        else:
            rows[name] = {"seconds": res["seconds"], "scores": scores}
            heats[name] = heat

    grids = _grids(model_fn, params, x, target, masks, heats, origins, config, out, quick=quick)
    panels = []
    for cname, lines in all_curves.items():           # best first, the random map last as the reference
        hi = FAITHFULNESS[cname][1]
        ranked = sorted((k for k in lines if k != "random"), key=lambda k: rows[k]["scores"][cname], reverse=hi)
        panels.append({**{f"{k} ({rows[k]['scores'][cname]:.3f})": lines[k] for k in ranked},
                       "random map": lines["random"]})
    fig = viz.curves(panels, ax_titles=[f"{c.split()[0]}: {'lower' if not FAITHFULNESS[c][1] else 'higher'} AUC is "
                                        f"better\n(random map {chance[c]:.3f}; fill: blur σ = {BLUR['sigma']:g} px; "
                                        f"mean of {x.shape[0]} images)" for c in all_curves],
                     xlabel="fraction of pixels", ylabel="probability of the true class", reference="random map",
                     highlight=CURVES_SHOWN, title=f"the {CURVES_SHOWN} best methods of each curve in colour"
                     + (QUICK_NOTE if quick else ""))
    viz.save(fig, os.path.join(out, "curves.png"))
    concepts = _concepts(model_fn, params, x, target, masks, seed, out, layer)

    results = {
        "config": {**dataclasses.asdict(config), "seed": seed, "device": str(dev), "quick": quick},
        "test_accuracy": acc,
        "methods": rows,
        "chance": chance,
        "no_better_than_chance": {k: sorted(no_better_than_chance(r["scores"], chance))
                                  for k, r in rows.items() if "scores" in r},
        "curves": {c: {k: {"fractions": f.tolist(), "probability": p.tolist()} for k, (f, p) in v.items()}
                   for c, v in all_curves.items()},
        "concepts": concepts,
        "grids": grids,
        "seconds": time.perf_counter() - started,
    }
    write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    write_text(os.path.join(out, "report.md"), markdown(results, rows, chance) + _concepts_markdown(concepts))
    log("")
    print_table(rows, chance, log)
    log(f"\nreport written to {os.path.abspath(out)} (report.md, {', '.join(grids)}, curves.png, concepts.png, "
        f"results.json, {os.path.basename(checkpoint)}) in "
        f"{results['seconds']:.0f} s")
    log(f"explain its model on other images: fxai explain IMAGE --weights {checkpoint}")
    return results
