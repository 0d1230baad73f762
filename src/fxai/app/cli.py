"""The ``fxai`` command: ``fxai demo`` (the built-in ground-truth demo) and ``fxai explain IMAGE ...``.

Errors in what the user passed (files, names, indices) end the command with a
one-line message on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .cli_methods import accepted, check_options, help_epilog, parse_methods, parse_options
from .loading import UsageError

EXIT_ERROR = 2
DEFAULT_METHODS = "gradient,integrated_gradients,grad_cam"


# ---------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxai", description="Functional explanations for image classifiers.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train a small CNN on synthetic shapes, explain it with every method, "
                                       "score the maps against ground truth, write a report")
    demo.add_argument("--out", default="fxai-demo", help="report folder (default: %(default)s); a trained model "
                                                         "saved there is reused, an interrupted training resumed")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, the model and randomised methods")
    demo.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a tiny run of a few seconds with an untrained model (its "
                                                           "scores mean nothing; for tests); kept as model-quick.pt")
    demo.add_argument("--arch", choices=("cnn", "vit"), default="cnn",
                      help="the model trained and explained: a small CNN (default) or a small vision transformer "
                           "(trained for 3000 steps: about 10 minutes on 2 CPU cores)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keeps `fxai --debug demo`
                      help="show the full traceback on errors")

    ex = sub.add_parser("explain", help="explain the predictions of a classifier on image files",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_epilog())
    ex.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image files (any size; RGB, grayscale, RGBA, palette; 16-bit and float grayscale are scaled "
                         "by their bit depth: divided by 2^b - 1 for the smallest of 8, 10, 12, 14, 16 bits that "
                         "holds the largest value)")
    ex.add_argument("--model", default="resnet18",
                    help="a torchvision classification model name (e.g. resnet50, vgg16, convnext_tiny), "
                         "package.module:factory (importable from the current folder), path/to/file.py:factory "
                         "returning an nn.Module, timm:NAME (a timm model, e.g. timm:vit_small_patch16_224) or a "
                         "HuggingFace image classifier's from_pretrained folder (hf:FOLDER, or a folder holding "
                         "config.json); timm and HuggingFace models bring their own preprocessing "
                         "(default: %(default)s)")
    weights = ex.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="a state dict saved with torch.save (or a checkpoint "
                                                           "holding one under 'state_dict' or 'model')")
    weights.add_argument("--pretrained", action="store_true", help="torchvision's (or timm's) default pretrained "
                                                                    "weights (downloaded once to the hub cache)")
    ex.add_argument("--method", default=DEFAULT_METHODS,
                    help="comma-separated methods, 'all', or TRANSFORM:METHOD for a smoothed method (e.g. "
                         "smoothgrad_sq:gradient) (default: %(default)s); see the lists below")
    ex.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a method option, e.g. steps=64, num_masks=4000, window=16,16, samples=25 (repeatable; "
                         "given to every chosen method that takes it; see the lists below)")
    ex.add_argument("--chunk-size", type=int, default=64, metavar="N",
                    help="at most N stacked inputs per forward/backward pass (memory bound; default: %(default)s)")
    ex.add_argument("--target", default="top1", help="a class index, top1 or topK, e.g. top3 (default: %(default)s)")
    ex.add_argument("--layer", help="layer for CAM methods (a dotted module name, e.g. layer4 or features.28); "
                                    "default: the library's rule (the last spatial map before global pooling; for a "
                                    "ViT the first norm of the last block)")
    ex.add_argument("--concepts", type=int, default=0, metavar="K",
                    help="also factorise the CAM layer's activations over all the images into K concepts (Deep "
                         "Feature Factorization), named by the model's head: factorization.png")
    ex.add_argument("--out", default="fxai-explain", help="output folder (default: %(default)s)")
    ex.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    ex.add_argument("--seed", type=int, default=0, help="key of randomised methods (default: %(default)s)")
    size = ex.add_mutually_exclusive_group()
    size.add_argument("--resize", type=int, nargs=2, metavar=("SHORT_SIDE", "CROP"), default=None,
                      help="resize the short side, then center-crop (default: 256 224, or the model's own for timm "
                           "and HuggingFace models)")
    size.add_argument("--keep-size", action="store_true", help="feed images at their own size (only normalised)")
    ex.add_argument("--mean", default=None, help="per-channel mean for normalisation (default: ImageNet's, or the "
                                                 "model's own for timm and HuggingFace models)")
    ex.add_argument("--std", default=None, help="per-channel std for normalisation (default: ImageNet's, or the "
                                                "model's own for timm and HuggingFace models)")
    ex.add_argument("--sign", default="absolute", choices=("positive", "negative", "absolute", "all"),
                    help="what the pictures show of pixel maps (default: %(default)s, |a| summed over channels); "
                         "CAMs are shown by their positive part, RISE by its variation above its minimum")
    ex.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keeps `fxai --debug explain`
                      help="show the full traceback on errors")
    from .roar import add_commands as add_roar_commands
    add_roar_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fxai`` command; returns the exit status.

    ``fxai`` alone prints the help; ``fxai demo`` runs the built-in demo.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        print("\nStart with `fxai demo` (no arguments needed).")
        return 0
    out_existed = os.path.exists(args.out)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command in ("roar", "extract"):
            from . import roar as roar_cli
            return roar_cli.run(args)
        return _explain(args)
    except KeyboardInterrupt:
        _drop_if_new_and_empty(args.out, out_existed)
        print("\nfxai: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line unless --debug
        _drop_if_new_and_empty(args.out, out_existed)
        if args.debug:
            raise
        print(f"fxai: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


def _drop_if_new_and_empty(out: str, existed: bool) -> None:
    """A failed run leaves no empty output folder behind (one it did not create is kept)."""
    if not existed and os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (UsageError, ValueError, TypeError, OSError, LookupError)):
        text = f"{type(err).__name__}: {text} (run with --debug for the traceback)"
    return text if len(text) <= 600 else text[:597] + "..."


# ---------------------------------------------------------------- demo


def _demo(args) -> int:
    from . import demo

    _check_writable(args.out)
    demo.run(args.out, seed=args.seed, device=args.device, quick=args.quick, arch=args.arch)
    return 0


# ---------------------------------------------------------------- explain


def _check_writable(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".fxai-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"output folder {out!r} is not writable: {err.strerror or err}") from None


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
    """``(module in eval mode on device, class names or None, preprocessing)``."""
    from .loading import build_model, classes_in, load_weights, pretrained, read_weights
    from .zoo import DEFAULT, is_zoo_name, load_model

    if is_zoo_name(args.model):
        module, categories, prep = load_model(args.model, weights=args.weights, pretrained=args.pretrained)
        return module.to(device).eval(), categories, prep

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
    return module.to(device).eval(), categories, DEFAULT


def _explain(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from .. import postprocess, registry, viz
    from .._core.batching import reporting
    from .._core.discovery import resolve_layers
    from .._core.functional import functional
    from .._core.targets import probabilities
    from .loading import input_channels, load_images, resolve_device

    if not args.keep_size and args.resize is not None and min(args.resize) < 1:
        raise UsageError(f"--resize takes two positive sizes (SHORT_SIDE CROP), got {args.resize[0]} {args.resize[1]}")
    if args.concepts < 0:
        raise UsageError(f"--concepts must be a number of concepts (0: none), got {args.concepts}")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be a positive number of inputs, got {args.chunk_size}")
    settings = parse_options(args.option)
    methods = parse_methods(args.method, settings)
    check_options(settings, methods)
    mode, value = _parse_target(args.target)
    device = resolve_device(args.device)
    for path in args.images:
        if os.path.isdir(path):
            raise UsageError(f"image {path} is a directory; give image files (e.g. {os.path.join(path, '*.png')})")
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
    _check_writable(args.out)

    module, categories, prep = _load_model(args, device)
    channels = input_channels(module)
    mean = torch.tensor(_floats(args.mean, prep.mean, "mean", channels)).view(-1, 1, 1)
    std = torch.tensor(_floats(args.std, prep.std, "std", channels)).view(-1, 1, 1)
    resize, interpolation = (tuple(args.resize), "bilinear") if args.resize else ((prep.resize, prep.crop),
                                                                                   prep.interpolation)
    images = load_images(args.images, channels, args.keep_size, resize, interpolation)

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

    used, rows, seconds = set(), {}, dict.fromkeys([m.name for m in methods], 0.0)
    bar = tqdm(total=len(images) * len(methods), unit="map", dynamic_ncols=True, disable=None)
    for i, (path, raw) in enumerate(images):
        stem = _safe_stem(path, used)
        x = ((raw.to(device) - mean.to(device)) / std.to(device))[None]
        with torch.no_grad():
            logits = model_fn(params, x)
        if logits.ndim != 2:
            raise UsageError(f"the model returned outputs of shape {tuple(logits.shape)}; a classifier must return "
                             "[batch, classes]")
        classes = logits.shape[1]
        if mode == "index" and value >= classes:
            raise UsageError(f"--target {value} is out of range: the model has {classes} classes (0 to {classes - 1})")
        if mode == "top" and value > classes:
            raise UsageError(f"--target top{value} asks for more classes than the model has ({classes})")
        probs = probabilities(logits)[0]
        top = probs.topk(min(5, classes))
        bar.write(f"{path}: " + ", ".join(f"{label(int(c))} ({float(p):.3f})" for p, c in zip(top.values, top.indices)))
        picked = [value] if mode == "index" else [int(c) for c in logits[0].topk(value).indices]
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
            takes = accepted(info)
            options.update({k: v for k, v in settings.items() if k in takes and not (
                "options" in info.parameters and k in ("samples", "sigma"))})
            start = time.perf_counter()
            try:
                with reporting(lambda done, total: bar.set_postfix_str(f"{done}/{total} rows", refresh=True)):
                    amap = info.fn(model_fn, params, x, target, **options).detach()
            except (ValueError, TypeError) as err:
                raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
            seconds[info.name] += time.perf_counter() - start
            sign = args.sign if info.kind == "pixel" else "positive"
            origin = viz.origin_for(info.kind, info.family)
            heat = postprocess.heatmap(amap, kind=info.kind, reduce="abs_sum" if sign == "absolute" else "sum",
                                       size=x.shape[-2:]).cpu()
            torch.save(amap[0].cpu().clone(), os.path.join(args.out, f"{stem}_{_file_name(info.name)}.pt"))
            for k, cls in enumerate(picked):
                h = heat[0, k] if len(picked) > 1 else heat[0]
                suffix = f"_c{cls}" if len(picked) > 1 else ""
                title = f"{info.name} · {label(cls)} (p = {float(probs[cls]):.3f})\n{os.path.basename(path)}"
                fig = viz.explanation(raw, h, title=title, sign=sign, origin=origin)
                viz.save(fig, os.path.join(args.out, f"{stem}_{_file_name(info.name)}{suffix}.png"))
                rows.setdefault((i, stem, cls), {})[info.name] = (h, sign, origin)
            bar.update(1)
    bar.close()
    names = [info.name for info in methods]
    first = next(iter(rows.values()))
    fig = viz.grid([images[i][1] for i, _, _ in rows], {n: [r[n][0] for r in rows.values()] for n in names},
                   row_titles=[f"{stem}\n{label(cls)}" for _, stem, cls in rows],
                   sign={n: first[n][1] for n in names}, origin={n: first[n][2] for n in names}, cell=2.4, wrap=6,
                   title=f"pixel maps: {_SIGN_TEXT[args.sign]}; CAMs: positive part; RISE: above its minimum")
    viz.save(fig, os.path.join(args.out, "grid.png"))
    if args.concepts:
        _concepts(args, model_fn, params, images, mean, std, device, layer, categories)
    width = max(len(n) for n in names)
    print("time per method (all images):")
    for name in names:
        print(f"  {name:<{width}}  {seconds[name]:8.2f} s")
    print(f"wrote {len(rows) * len(names)} pictures, {len(images) * len(names)} raw maps (.pt) and grid.png to "
          f"{args.out}")
    return 0


def _concepts(args, model_fn, params, images, mean, std, device, layer, categories) -> None:
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
    viz.save(viz.factorization(raw, result, labels=labels), os.path.join(args.out, "factorization.png"))
    for k, name in enumerate(names or []):
        print(f"concept {k}: {name}")


_SIGN_TEXT = {"positive": "positive part of the channel sum", "negative": "negative part of the channel sum",
              "absolute": "|a| summed over channels", "all": "channel sum, signed"}


if __name__ == "__main__":
    sys.exit(main())
