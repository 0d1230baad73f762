"""Every attribution method × chosen metrics on a set of images: :func:`evaluate` (Python) and ``fxai evaluate``.

Maps are made batch by batch, each metric scores them, and the table gives each method's mean ± standard error
over the images, beside a random map's (the reference row; † marks a method no better than it). With ``out``,
the per-image scores go to ``results.json`` after each (method, metric) pair, written whole, and a later call with
the same settings resumes where it stopped; ``table.md`` and one plot per metric family (``scores_<family>.png``)
are written at the end.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os

import torch

from .. import metrics as M
from .. import registry, viz
from .._core import keys
from .._core.batching import reporting
from .._core.checks import unknown_name
from .._core.discovery import resolve_layers
from .._core.files import write_json, write_text
from .._core.progress import progress_bar
from .cli_methods import accepted, check_options, options_for, parse_methods, parse_options, spelled

RANDOM = "random"
FLAG = "†"
# Cheap, informative defaults; localisation metrics join when masks are given.
DEFAULT_METRICS = ("deletion", "insertion", "avg_sensitivity", "sparseness", "complexity")


def random_map(model_fn, params, x: torch.Tensor, target, *, key) -> torch.Tensor:
    """The reference: a map of uniform noise ``[B, H, W]`` drawn from ``key`` (it ignores the model)."""
    return keys.uniform(key, (x.shape[0], *x.shape[-2:]), x)


def _methods(methods):
    if methods is None or methods == "all":
        rows = list(registry.METHODS.values())
    else:
        rows = [parse_methods(m, {})[0] if isinstance(m, str) else m for m in methods]
    return [r for r in rows if r.kind != "transform" and r.name != RANDOM] + [
        registry.MethodInfo(RANDOM, random_map, family="mask")]


def _metrics(names, masks):
    if names is None:
        names = list(DEFAULT_METRICS) + ([n for n, i in M.registry.METRICS.items() if i.kind == "localisation"
                                          and n != "focus"] if masks is not None else [])  # focus: on mosaics
    elif names == "all":
        names = [n for n, i in M.registry.METRICS.items() if masks is not None or i.kind != "localisation"]
    rows = [M.registry.metric(n) for n in names]
    if masks is None and any(r.kind == "localisation" for r in rows):
        bad = ", ".join(r.name for r in rows if r.kind == "localisation")
        raise ValueError(f"metrics {bad} score maps against ground-truth masks: pass masks (the synthetic dataset "
                         "has them) or leave these metrics out")
    return rows


def _score(info, model_fn, params, x, target, amap, mask, *, method, method_options, key, quick, chunk_size):
    options = dict(info.quick) if quick else {}
    params_of = inspect.signature(info.fn).parameters
    if info.randomised:
        options["key"] = key
    if "chunk_size" in params_of and chunk_size is not None:
        options["chunk_size"] = chunk_size
    if "method" in info.needs:
        options.update(method=method, method_options=method_options)
    if info.kind == "localisation":
        out = info.fn(amap, mask, **options)
    elif info.kind == "complexity":
        out = info.fn(amap.abs().sum(1) if amap.ndim == 4 else amap, **options)  # pixel maps as [B, H, W], as CAMs
    else:
        out = info.fn(model_fn, params, x, target, amap, **options)
    if info.output == "curve":
        out = M.auc(out)
    elif info.output == "stages":
        out = out.mean(-1)
    return out.detach().double().cpu()


def summary(values) -> dict:
    """``{"mean", "sem", "n"}`` over the finite values (the standard error with ``n - 1`` degrees of freedom)."""
    v = torch.as_tensor([float(s) for s in values], dtype=torch.float64)
    v = v[v.isfinite()]
    n = int(v.numel())
    mean = float(v.mean()) if n else math.nan
    sem = float(v.std() / math.sqrt(n)) if n > 1 else (0.0 if n == 1 else math.nan)
    return {"mean": mean, "sem": sem, "n": n}


def _no_better(cell, ref, higher):
    if higher is None or ref is None or not math.isfinite(cell["mean"]) or not math.isfinite(ref["mean"]):
        return False
    return cell["mean"] <= ref["mean"] if higher else cell["mean"] >= ref["mean"]


def _fingerprint(model_fn, params, x, target, masks, settings) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in (x, target if isinstance(target, torch.Tensor) else torch.tensor([]), masks if masks is not None
              else torch.tensor([])):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().cpu().contiguous().view(-1)[:4096].numpy().tobytes())
    return h.hexdigest()[:20]


def _load(path, fingerprint):
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return {}
    if old.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} holds results of another evaluation (other model, images or settings); it is kept: "
                         "choose another output folder, or delete the file to start again")
    return old.get("scores", {})


def evaluate(model_fn, params, x: torch.Tensor, target=None, *, masks=None, methods=None, metrics=None,
             options: dict | None = None, seed: int = 0, quick: bool = False, batch_size: int = 8,
             chunk_size: int | None = None, layer=None, out: str | None = None, progress: bool = False,
             description: str = "") -> dict:
    """Score every method's maps of ``x`` by each metric: the table as data.

    Args:
        model_fn, params: the model (:func:`fxai.functional`).
        x: images ``[N, C, H, W]`` (on the model's device), explained ``batch_size`` at a time.
        target: ``None`` (each image's top-1 class), an int or a LongTensor ``[N]``.
        masks: ground truth ``[N, H, W]`` for the localisation metrics.
        methods: registered method names, ``TRANSFORM:METHOD`` or registry rows (``None``/``"all"``: every
            method); the random map is always added.
        options: method options as ``fxai explain --option`` gives them: ``{NAME: value}`` for every method that
            takes ``NAME`` and ``{METHOD: {NAME: value}}`` for one (:func:`fxai.app.cli_methods.parse_options`).
        metrics: registered metric names (``None``: deletion, insertion, average sensitivity, sparseness,
            complexity, and every localisation metric but focus when ``masks`` are given; ``"all"``: every
            metric; focus against an object's mask is its relevance mass, build mosaics for the real thing).
        seed: key of the randomised methods and metrics (batch ``b`` uses ``seed + b``).
        quick: the registry's quick settings for methods and metrics (a smoke run).
        layer: the CAM methods' layer (``None``: the default layer).
        out: folder for ``results.json`` (resumable), ``table.md`` and ``scores_<family>.png``.
        progress: show a progress bar.
        description: what the model and images are, recorded in ``results.json``.

    Returns:
        ``{"methods": [...], "metrics": {name: {"family", "higher_is_better"}}, "table": {method: {metric: {"mean",
        "sem", "n", "no_better_than_random"}}}, "errors": {"method/metric": message}}``.

    Example:
        >>> from fxai.app.evaluate import evaluate
        >>> result = evaluate(model_fn, params, x, 3, methods=["gradient"], metrics=["sparseness"], quick=True)
        >>> sorted(result["table"]), sorted(result["table"]["gradient"]["sparseness"])
        (['gradient', 'random'], ['mean', 'n', 'no_better_than_random', 'sem'])
    """
    method_rows, metric_rows = _methods(methods), _metrics(metrics, masks)
    n = x.shape[0]
    if target is None:
        with torch.no_grad():
            tgt = torch.cat([model_fn(params, x[a:a + batch_size]).argmax(-1) for a in range(0, n, batch_size)])
    elif not isinstance(target, torch.Tensor) or target.ndim == 0:
        tgt = torch.as_tensor(target, device=x.device).expand(n)
    else:
        tgt = target.to(x.device)
    if tgt.shape != (n,):
        raise ValueError(f"target must be None, an int or a LongTensor [N] = [{n}], got shape {tuple(tgt.shape)}")
    if masks is not None and (not isinstance(masks, torch.Tensor) or masks.shape != (n, *x.shape[-2:])):
        raise ValueError(f"masks must be a bool tensor [N, H, W] = {(n, *x.shape[-2:])}")
    if any(r.layered for r in method_rows) and layer is None:
        (layer,) = resolve_layers(model_fn, None, params=params, x=x[:1])
    options = dict(options or {})
    settings = {"methods": [r.name for r in method_rows], "options": options, "seed": seed, "quick": quick, "batch_size": batch_size,
                "layer": layer, "description": description}
    fp = _fingerprint(model_fn, params, x, target if target is not None else tgt, masks, settings)
    path = os.path.join(out, "results.json") if out else None
    done = _load(path, fp) if path else {}
    errors = {}
    batches = [(b, slice(a, min(a + batch_size, n))) for b, a in enumerate(range(0, n, batch_size))]
    references = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(seed)).to(x)
    todo = [(m, k) for m in method_rows for k in metric_rows if k.name not in done.get(m.name, {})]
    bar = progress_bar(total=len(todo) * len(batches), unit="batch", disable=not progress)
    for info in method_rows:
        pending = [k for k in metric_rows if k.name not in done.get(info.name, {})]
        if not pending:
            continue
        maps, opts = [], registry.options(info, size=tuple(x.shape[-2:]), layer=layer, key=seed,
                                          references=references, quick=quick)
        opts.update(options_for(spelled(info.name), options, accepted(info)))
        try:
            for b, s in batches:
                bar.set_description(f"{info.name}: explaining")
                options = dict(opts, **({"key": seed + b} if "key" in opts or info.name == RANDOM else {}))
                with reporting(lambda d, t: bar.set_postfix_str(f"{d}/{t} rows", refresh=True)):
                    maps.append(info.fn(model_fn, params, x[s], tgt[s], **options).detach())
        except (ValueError, TypeError, RuntimeError, LookupError) as err:  # a method this model does not support
            for metric in pending:
                errors[f"{info.name}/{metric.name}"] = "the method failed: " + " ".join(str(err).split())[:300]
            bar.update(len(pending) * len(batches))
            continue
        method_options = {k: v for k, v in opts.items() if k != "key"}
        for metric in pending:
            bar.set_description(f"{info.name}: {metric.name}")
            values, left = [], len(batches)
            try:
                for (b, s), amap in zip(batches, maps):
                    values += _score(metric, model_fn, params, x[s], tgt[s], amap,
                                     None if masks is None else masks[s], method=info.fn, method_options=method_options,
                                     key=seed + b, quick=quick, chunk_size=chunk_size).tolist()
                    bar.update(1)
                    left -= 1
            except (ValueError, TypeError, RuntimeError) as err:
                errors[f"{info.name}/{metric.name}"] = " ".join(str(err).split())[:300]
                bar.update(left)
                continue
            done.setdefault(info.name, {})[metric.name] = values
            if path:
                write_json(path, {"fingerprint": fp, "settings": settings, "scores": done})
    bar.close()
    result = table(done, [r.name for r in method_rows], [r.name for r in metric_rows])
    result["errors"] = errors
    if out:
        write_json(path, {"fingerprint": fp, "settings": settings, "scores": done, "table": result["table"],
                          "errors": errors})
        write_text(os.path.join(out, "table.md"), "\n".join(markdown(result)) + "\n")
        for fam in dict.fromkeys(result["metrics"][m]["family"] for m in result["metrics"]):
            names = [m for m in result["metrics"] if result["metrics"][m]["family"] == fam]
            fig = viz.scores(result["table"], names, reference=RANDOM, title=f"{fam} (mean ± standard error)",
                             better={m: result["metrics"][m]["higher_is_better"] for m in names})
            viz.save(fig, os.path.join(out, f"scores_{fam}.png"))
    return result


def table(scores: dict, methods: list[str], metrics: list[str]) -> dict:
    """The table of per-image ``scores[method][metric]``: mean ± standard error, flagged against the random map."""
    rows = {m: {k: summary(scores[m][k]) for k in metrics if k in scores.get(m, {})} for m in methods}
    info = {k: {"family": M.registry.metric(k).family, "higher_is_better": M.registry.metric(k).higher_is_better} for k in metrics}
    for m in methods:
        for k, cell in rows[m].items():
            cell["no_better_than_random"] = m != RANDOM and _no_better(cell, rows.get(RANDOM, {}).get(k),
                                                                       info[k]["higher_is_better"])
    return {"methods": methods, "metrics": info, "table": rows}


def _cell(cell) -> str:
    if cell is None or not math.isfinite(cell["mean"]):
        return "–"
    digits = 3 if abs(cell["mean"]) < 1000 else 0
    return f"{cell['mean']:.{digits}f} ± {cell['sem']:.{digits}f}" + (FLAG if cell["no_better_than_random"] else "")


def markdown(result: dict) -> list[str]:
    """The table as Markdown lines: methods by row, the random map last, metrics grouped by family."""
    metrics = sorted(result["metrics"], key=lambda k: list(dict.fromkeys(
        v["family"] for v in result["metrics"].values())).index(result["metrics"][k]["family"]))
    arrow = {True: " ↑", False: " ↓", None: ""}
    head = ["method"] + [k + arrow[result["metrics"][k]["higher_is_better"]] for k in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result["methods"]:
        lines.append("| " + " | ".join([m] + [_cell(result["table"][m].get(k)) for k in metrics]) + " |")
    lines.append("")
    lines.append(f"mean ± standard error over the images; ↑ higher / ↓ lower is better; {FLAG}: no better than the "
                 "random map")
    for key, msg in result.get("errors", {}).items():
        lines.append(f"- {key}: not scored ({msg})")
    return lines


# ---------------------------------------------------------------- fxai evaluate


def add_command(sub) -> None:
    """Add ``evaluate`` to the subparsers ``sub`` of the ``fxai`` parser."""
    import argparse

    ev = sub.add_parser("evaluate", help="score every attribution method by evaluation metrics on your images (or "
                                         "the synthetic shapes, with their ground-truth masks)")
    ev.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders of images")
    ev.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="evaluate on N held-out synthetic shapes (32×32) instead, where the localisation metrics use "
                         "the objects' masks; the model defaults to the demo's (pass its model.pt with --weights)")
    ev.add_argument("--model", default=None, help="as for fxai explain (default: resnet18; the demo's small CNN "
                                                  "with --synthetic)")
    ev.add_argument("--weights", metavar="FILE", help="a state dict saved with torch.save (or a checkpoint holding one)")
    ev.add_argument("--method", "--methods", dest="methods", default="all",
                    help="comma-separated methods, TRANSFORM:METHOD for a transformed one (default: all); the random "
                         "map is always added as the reference")
    ev.add_argument("--option", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                    help="a method option, as for fxai explain (repeatable)")
    ev.add_argument("--metrics", default=None, help=f"comma-separated registered metrics or all (default: "
                                                    f"{','.join(DEFAULT_METRICS)}, and the localisation metrics with "
                                                    f"--synthetic)")
    ev.add_argument("--size", type=int, default=None, metavar="PIXELS",
                    help="resize images (short side) and center-crop them to this size (default: the model's "
                         "preprocessing, 224 for torchvision models)")
    ev.add_argument("--layer", help="layer of the CAM methods (default: the last spatial layer)")
    ev.add_argument("--batch-size", type=int, default=8, help="images per batch (default: %(default)s)")
    ev.add_argument("--chunk-size", type=int, default=None, help="rows per model call inside a metric")
    ev.add_argument("--quick", action="store_true", help="the registry's small settings (a smoke run)")
    ev.add_argument("--seed", type=int, default=0, help="key of randomised methods and metrics (default: %(default)s)")
    ev.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    ev.add_argument("--out", default="fxai-evaluate", help="output folder; an interrupted run resumes "
                                                           "(default: %(default)s)")
    ev.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def _image_files(items) -> list[str]:
    from .loading import UsageError

    files = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(_IMAGE_SUFFIXES))
            if not found:
                raise UsageError(f"no image files in folder {item}")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UsageError(f"image file or folder not found: {item}")
    return files


def _model(args, device, synthetic: bool):
    """``(module in eval mode on device, preprocessing or None)``."""
    from ..models import SmallCNN
    from .loading import build_model, load_weights, read_weights
    from .zoo import DEFAULT, is_zoo_name, load_model

    if synthetic and args.model is None:
        module, prep = SmallCNN(4, width=24), None          # the demo's model
    elif is_zoo_name(args.model or ""):
        module, _, prep = load_model(args.model, weights=args.weights)
        return module.to(device).eval(), prep
    else:
        module, prep = build_model(args.model or "resnet18")[0], DEFAULT
    if args.weights:
        load_weights(module, read_weights(args.weights), args.weights)
    return module.to(device).eval(), prep


def run(args) -> int:
    """``fxai evaluate``: load the model and images, run :func:`evaluate`, print the table."""
    from .._core.functional import functional
    from ..data.synthetic import shapes
    from .loading import UsageError, input_channels, load_images, resolve_device

    if bool(args.images) == bool(args.synthetic):
        raise UsageError("give image files or folders, or --synthetic N (not both)")
    if args.synthetic < 0 or args.batch_size < 1:
        raise UsageError("--synthetic and --batch-size must be positive numbers")
    device = resolve_device(args.device)
    split = lambda text: None if text is None else "all" if text == "all" else [  # noqa: E731
        t.strip() for t in text.split(",") if t.strip()]
    metrics = split(args.metrics)
    options = parse_options(args.option)
    methods = "all" if args.methods.strip() == "all" else parse_methods(args.methods, options)
    check_options(options, list(registry.METHODS.values()) if methods == "all" else methods)
    for name in [] if metrics in (None, "all") else metrics:
        if name not in M.registry.METRICS:
            raise UsageError("--metrics: " + unknown_name("metric", name, M.registry.METRICS))
    module, prep = _model(args, device, bool(args.synthetic))
    masks = target = None
    if args.synthetic:
        from .demo import TEST_START
        batch = shapes(args.synthetic, seed=args.seed, start=TEST_START, size=32, classes=4, device=device)
        x, target, masks = batch.images, batch.labels, batch.masks
        what = f"{args.synthetic} synthetic shapes"
    else:
        files = _image_files(args.images)
        size = (args.size, args.size) if args.size else (prep.resize, prep.crop)
        images = load_images(files, input_channels(module), False, size, prep.interpolation)
        shapes_seen = {tuple(t.shape) for _, t in images}
        if len(shapes_seen) > 1:
            raise UsageError(f"the images have different sizes after preprocessing {sorted(shapes_seen)}; pass --size")
        mean = torch.tensor(prep.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(prep.std, device=device).view(-1, 1, 1)
        x = (torch.stack([t for _, t in images]).to(device) - mean) / std
        what = f"{len(files)} images: " + ", ".join(os.path.basename(f) for f in files[:20])
    model_fn, params = functional(module)
    os.makedirs(args.out, exist_ok=True)
    result = evaluate(model_fn, params, x, target, masks=masks, methods=methods, metrics=metrics, options=options,
                      seed=args.seed,
                      quick=args.quick, batch_size=args.batch_size, chunk_size=args.chunk_size, layer=args.layer,
                      out=args.out, progress=True,
                      description=f"model {args.model or ('small_cnn' if args.synthetic else 'resnet18')} "
                                  f"weights {args.weights}; {what}")
    print("\n".join(markdown(result)))
    print(f"wrote results.json, table.md and scores_<family>.png to {args.out}")
    return 0
