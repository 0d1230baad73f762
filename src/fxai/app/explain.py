"""``fxai explain IMAGE ...``: a model (torchvision, timm, HuggingFace, a factory or a described model file) and
every chosen method on each image: a figure and the raw map per image and method, a grid of all of them, and
optionally the concepts of the CAM layer. Detectors and segmenters go to :mod:`.detect` and :mod:`.segment`."""

from __future__ import annotations

import os
import re

from .cli_methods import accepted, check_options, options_for, parse_methods, parse_options, spelled
from .explain_notes import (GRID_BANDS, GRID_WRAP, RANDOM_WEIGHTS, constant_cause, constant_text, cost_warning,
                            grid_title, ranked, ranked_batch)
from .loading import UsageError, check_writable

DEFAULT_METHODS = "gradient,integrated_gradients,grad_cam"


def _parse_target(text: str):
    """``("index", c)`` or ``("top", k)``."""
    match = re.fullmatch(r"top(\d+)", text.strip().lower())
    if match and int(match.group(1)) >= 1:
        return "top", int(match.group(1))
    if re.fullmatch(r"\d+", text.strip()):
        return "index", int(text)
    raise UsageError(f"--target must be a class index (e.g. 281), top1 or topK (e.g. top3); got {text!r}")


def _floats(text: str | None, default, name: str, channels: int):
    if text is None:
        if channels == len(default):
            return default
        return (sum(default) / len(default),) * channels
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise UsageError(f"--{name} has {len(values)} values for a model with {channels} input channels")
    if name == "std" and min(values) <= 0:
        raise UsageError(f"--std values must be positive, got {text!r}")
    return values


def _safe_stem(path: str, used: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _file_name(method: str) -> str:
    return method.replace("(", "-").replace(")", "")


def _load_model(args, device):
    """``(module in eval mode on device, class names or None, preprocessing, untrained)``.

    Without ``--weights`` or ``--pretrained`` the weights are drawn from ``--seed`` (two runs agree) and
    ``untrained`` is true; a model file that describes its network (the demo's ``model.pt``, ``fxai roar``'s
    ``model.safetensors``) is rebuilt from its own description, given as ``--weights`` or ``--model``."""
    import torch

    from ..roar import described
    from .loading import build_model, classes_in, load_weights, pretrained, read_weights
    from .zoo import DEFAULT, Preprocessing, is_zoo_name, load_model

    for path in (args.weights, args.model):
        found = described.read(path) if path else None
        if found is not None:
            if path == args.model and args.weights:
                raise UsageError(f"--model {path} holds its own weights; leave out --weights")
            desc, state = found
            try:
                module = described.rebuild(desc, state)
            except (RuntimeError, ValueError, KeyError) as err:
                raise UsageError(f"{path} describes a model that cannot be rebuilt: {' '.join(str(err).split())[:300]}")\
                    from None
            size = desc.get("size")
            prep = Preprocessing(resize=size, crop=size, mean=tuple(desc["mean"]), std=tuple(desc["std"]))
            return module.to(device), desc.get("class_names"), prep, False

    torch.manual_seed(args.seed)                                # random weights are the seed's
    if is_zoo_name(args.model):
        module, categories, prep = load_model(args.model, weights=args.weights, pretrained=args.pretrained)
        untrained = args.model.startswith("timm:") and not (args.weights or args.pretrained)
        return module.to(device).eval(), categories, prep, untrained

    module, weights = build_model(args.model)
    categories = list(weights.meta.get("categories", ())) if weights is not None else None
    if args.pretrained:
        if weights is None:
            raise UsageError("--pretrained works with torchvision model names; for your own model pass --weights FILE")
        module = pretrained(args.model, weights, device)
    elif args.weights:
        state = read_weights(args.weights)
        classes = classes_in(module, state)
        if categories is not None and classes is not None and classes != len(categories):
            module, weights = build_model(args.model, classes)   # a torchvision model fine-tuned to other classes
            categories = None
        load_weights(module, state, args.weights)
    else:
        categories = None                                       # random weights: class names would mislead
    return module.to(device).eval(), categories, DEFAULT, not (args.weights or args.pretrained)


def run(args) -> int:
    """``fxai explain``: each image explained by each method, its figures, raw maps and grid written to ``--out``."""
    import time

    import torch
    from .. import postprocess, registry, viz
    from .._core.progress import progress_bar
    from .._core.batching import reporting
    from .._core.discovery import resolve_layers
    from .._core.functional import functional
    from .._core.targets import probabilities
    from ..attribution.features import boundaries
    from .loading import input_channels, load_images, resolve_device

    if not args.keep_size and args.resize is not None and min(args.resize) < 1:
        raise UsageError(f"--resize takes two positive sizes (SHORT_SIDE CROP), got {args.resize[0]} {args.resize[1]}")
    if args.concepts < 0:
        raise UsageError(f"--concepts must be a number of concepts (0: none), got {args.concepts}")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be a positive number of inputs, got {args.chunk_size}")
    settings = parse_options(args.option)
    methods = parse_methods(args.method, settings)
    from .detect import explain_detector, is_detector
    if is_detector(args.model):  # each detected box explained: fxai.app.detect
        return explain_detector(args, methods, settings, args.method == DEFAULT_METHODS)
    check_options(settings, methods)
    mode, value = _parse_target(args.target)
    from .segment import explain_segmenter, is_segmenter
    if is_segmenter(args.model):  # a category's predicted mask explained: fxai.app.segment
        return explain_segmenter(args, methods, settings, mode, value)
    device = resolve_device(args.device)
    for path in args.images:
        if os.path.isdir(path):
            raise UsageError(f"image {path} is a directory; give image files (e.g. {os.path.join(path, '*.png')})")
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
    check_writable(args.out)

    module, categories, prep, untrained = _load_model(args, device)
    note = f"\n{RANDOM_WEIGHTS}" if untrained else ""
    channels = input_channels(module)
    mean = torch.tensor(_floats(args.mean, prep.mean, "mean", channels)).view(-1, 1, 1)
    std = torch.tensor(_floats(args.std, prep.std, "std", channels)).view(-1, 1, 1)
    resize, interpolation = (tuple(args.resize), "bilinear") if args.resize else ((prep.resize, prep.crop),
                                                                                   prep.interpolation)
    images = load_images(args.images, channels, args.keep_size, resize, interpolation)
    if untrained:
        print(f"{RANDOM_WEIGHTS} (drawn from --seed {args.seed}; pass --weights FILE or --pretrained to explain a "
              "trained one)")

    model_fn, params = functional(module)
    layer = args.layer
    if layer is not None:
        try:
            resolve_layers(model_fn, layer, name="--layer")
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from None
    needs_layer = any(info.layered for info in methods)

    def label(c: int) -> str:
        return f"{c} {categories[c]}" if categories else f"class {c}"

    used, rows, shown, seconds = set(), {}, {}, dict.fromkeys([m.name for m in methods], 0.0)
    bar = progress_bar(total=len(images) * len(methods), desc="explaining", unit="map")
    for i, (path, raw) in enumerate(images):
        stem = _safe_stem(path, used)
        x = ((raw.to(device) - mean.to(device)) / std.to(device))[None]
        with torch.no_grad():
            logits = model_fn(params, x)
            started = time.perf_counter()
            model_fn(params, x)                         # timed once warm: what a costly method's passes cost
            forward = time.perf_counter() - started
        if logits.ndim != 2:
            raise UsageError(f"the model returned outputs of shape {tuple(logits.shape)}; a classifier must return "
                             "[batch, classes]")
        classes = logits.shape[1]
        if mode == "index" and value >= classes:
            raise UsageError(f"--target {value} is out of range: the model has {classes} classes (0 to {classes - 1})")
        if mode == "top" and value > classes:
            raise UsageError(f"--target top{value} asks for more classes than the model has ({classes})")
        probs = probabilities(logits)[0]
        order = ranked(logits[0])
        bar.write(f"{path}: " + ", ".join(f"{label(c)} ({float(probs[c]):.3f})" for c in order[:5]))
        picked = [value] if mode == "index" else order[:value]
        tied = [c for c in order if c not in picked and bool(logits[0, c] == logits[0, picked[-1]])]
        if tied:
            bar.write(f"  ties: {label(picked[-1])} has the same score as {len(tied)} other classes (e.g. "
                      f"{', '.join(label(c) for c in tied[:3])}); the lowest index is explained")
        target = torch.tensor([picked], device=device) if len(picked) > 1 else torch.tensor(picked, device=device)
        if needs_layer and layer is None:
            (layer,) = resolve_layers(model_fn, None, params=params, x=x)
            kind = type(dict(module.named_modules())[layer]).__name__
            bar.write(f"CAM layer: {layer!r} ({kind}; choose another with --layer)")
        references = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(args.seed)).to(x)
        for info in methods:
            bar.set_description(f"{stem}: {info.name}")
            options = registry.options(info, size=x.shape[-2:], layer=layer, key=args.seed, references=references,
                                       chunk_size=args.chunk_size)
            given = options_for(spelled(info.name), settings, accepted(info))
            options.update({k: v for k, v in given.items() if not ("options" in info.parameters
                                                                     and k in ("samples", "sigma"))})
            if i == 0:
                warning = cost_warning(info, options, forward, tuple(x.shape[-2:]), device)
                if warning:
                    bar.write(warning)
            start = time.perf_counter()
            try:
                with reporting(lambda done, total: bar.set_postfix_str(f"{done}/{total} rows", refresh=True)):
                    amap = info.fn(model_fn, params, x, target, **options).detach()
            except (ValueError, TypeError) as err:
                raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
            seconds[info.name] += time.perf_counter() - start
            sign = args.sign if info.kind == "pixel" else "positive"
            per_feature = "feature_mask" in info.parameters
            origin = viz.origin_for(info.kind, info.family)
            heat = postprocess.heatmap(amap, kind=info.kind, reduce="abs_sum" if sign == "absolute" else "sum",
                                       size=x.shape[-2:]).cpu()
            torch.save(amap[0].cpu().clone(), os.path.join(args.out, f"{stem}_{_file_name(info.name)}.pt"))
            flat = heat.flatten(-2) if len(picked) > 1 else heat.flatten(-2)[:, None]
            constant = [cls for k, cls in enumerate(picked) if bool((flat[0, k] == flat[0, k, :1]).all())]
            if constant:
                bar.write(f"{stem}: {info.name}: the map is {constant_text(flat[0, 0])} for "
                          f"{', '.join(label(c) for c in constant)}; {constant_cause(untrained, logits[0])}")
            for k, cls in enumerate(picked):
                h = heat[0, k] if len(picked) > 1 else heat[0]
                suffix = f"_c{cls}" if len(picked) > 1 else ""
                title = f"{info.name} · {label(cls)} (p = {float(probs[cls]):.3f})\n{os.path.basename(path)}{note}"
                if cls in constant:
                    title += f"\nthe map is {constant_text(h.flatten())}"
                edges = boundaries(h) if per_feature else None            # where the map changes: its features
                fig = viz.explanation(raw, h, title=title, sign=sign, origin=origin, outline=edges)
                viz.save(fig, os.path.join(args.out, f"{stem}_{_file_name(info.name)}{suffix}.png"))
                rows.setdefault((i, stem, cls), {})[info.name] = (h, sign, origin)
                shown[(i, cls)] = float(probs[cls])
            bar.update(1)
    bar.close()
    names = [info.name for info in methods]
    first = next(iter(rows.values()))
    keys = list(rows)
    bands = -(-(len(names) + 1) // GRID_WRAP)                   # rows of panels per image
    per_page = max(1, GRID_BANDS // bands)
    pages = [keys[a:a + per_page] for a in range(0, len(keys), per_page)]
    grids = []
    for p, page in enumerate(pages):
        head = grid_title(args.sign, methods) + note + (f"\npage {p + 1} of {len(pages)}" if len(pages) > 1 else "")
        fig = viz.grid([images[i][1] for i, _, _ in page], {n: [rows[k][n][0] for k in page] for n in names},
                       row_titles=[f"{stem}\n{label(cls)}\np = {shown[(i, cls)]:.3f}" for i, stem, cls in page],
                       sign={n: first[n][1] for n in names}, origin={n: first[n][2] for n in names}, cell=2.0,
                       wrap=GRID_WRAP, title=head)
        grids.append("grid.png" if p == 0 else f"grid-{p + 1}.png")
        viz.save(fig, os.path.join(args.out, grids[-1]))
    if args.concepts:
        _concepts(args, model_fn, params, images, mean, std, device, layer, categories, note)
    width = max(len(n) for n in names)
    print("time per method (all images):")
    for name in names:
        print(f"  {name:<{width}}  {seconds[name]:8.2f} s")
    print(f"wrote {len(rows) * len(names)} pictures, {len(images) * len(names)} raw maps (.pt) and "
          f"{', '.join(grids)} to {args.out}" + (f" ({RANDOM_WEIGHTS})" if untrained else ""))
    return 0


def _concepts(args, model_fn, params, images, mean, std, device, layer, categories, note: str = "") -> None:
    """Deep Feature Factorization of all the images at the CAM layer: ``factorization.png`` and the concepts' names."""
    import torch

    from .. import viz
    from ..attribution.factorization import deep_feature_factorization

    if len({tuple(img.shape) for _, img in images}) > 1:
        raise UsageError("--concepts factorises all the images together: they need one size (drop --keep-size)")
    raw = torch.stack([img for _, img in images])
    x = (raw.to(device) - mean.to(device)) / std.to(device)
    try:
        result = deep_feature_factorization(model_fn, params, x, layer=layer, concepts=args.concepts, head="auto",
                                            key=args.seed, chunk_size=args.chunk_size)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--concepts: {' '.join(str(err).split())}") from None
    labels = list(categories) if categories else None
    names = viz.concept_labels(result.class_scores, labels=labels) if result.class_scores is not None else None
    with torch.no_grad():
        top = ranked_batch(model_fn(params, x))
    titles = [f"{os.path.basename(path)}\n" + (labels[c] if labels else f"class {c}") for (path, _), c in zip(images, top)]
    title = f"{args.concepts} concepts at {layer!r} (Deep Feature Factorization) over {len(images)} images{note}"
    viz.save(viz.factorization(raw, result, labels=labels, image_titles=titles, title=title),
             os.path.join(args.out, "factorization.png"))
    for k, name in enumerate(names or []):
        print(f"concept {k}: {name}")
