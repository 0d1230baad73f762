"""The ``fxai`` command: ``fxai demo`` (the built-in ground-truth demo) and ``fxai explain IMAGE ...``.

Errors in what the user passed (files, names, indices) end the command with a
one-line message on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

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
    demo.add_argument("--quick", action="store_true", help="a tiny run of a few seconds (for tests)")
    demo.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ex = sub.add_parser("explain", help="explain the predictions of a classifier on image files")
    ex.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; RGB, grayscale, RGBA, palette)")
    ex.add_argument("--model", default="resnet18",
                    help="a torchvision classification model name (e.g. resnet50, vgg16, convnext_tiny) or "
                         "package.module:factory returning an nn.Module (default: %(default)s)")
    weights = ex.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="a state dict saved with torch.save (or a checkpoint "
                                                           "holding one under 'state_dict' or 'model')")
    weights.add_argument("--pretrained", action="store_true", help="torchvision's default pretrained weights "
                                                                    "(downloaded once to the torch hub cache)")
    ex.add_argument("--method", default=DEFAULT_METHODS,
                    help="comma-separated methods, or 'all' (default: %(default)s); available: "
                         + ", ".join(_method_names()))
    ex.add_argument("--target", default="top1", help="a class index, top1 or topK, e.g. top3 (default: %(default)s)")
    ex.add_argument("--layer", help="layer for CAM methods (a dotted module name, e.g. layer4 or features.28); "
                                    "default: the model's last convolutional block")
    ex.add_argument("--out", default="fxai-explain", help="output folder (default: %(default)s)")
    ex.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    ex.add_argument("--seed", type=int, default=0, help="key of randomised methods (default: %(default)s)")
    size = ex.add_mutually_exclusive_group()
    size.add_argument("--resize", type=int, nargs=2, metavar=("SHORT_SIDE", "CROP"), default=(256, 224),
                      help="resize the short side, then center-crop (default: 256 224)")
    size.add_argument("--keep-size", action="store_true", help="feed images at their own size (only normalised)")
    ex.add_argument("--mean", default=None, help="per-channel mean for normalisation (default: ImageNet's)")
    ex.add_argument("--std", default=None, help="per-channel std for normalisation (default: ImageNet's)")
    ex.add_argument("--sign", default="positive", choices=("positive", "negative", "absolute", "all"),
                    help="what the overlays show of pixel maps (default: %(default)s)")
    ex.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _method_names() -> list[str]:
    from .registry import METHODS

    return list(METHODS)


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
    try:
        if args.command == "demo":
            return _demo(args)
        return _explain(args)
    except KeyboardInterrupt:
        print("fxai: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line unless --debug
        if args.debug:
            raise
        print(f"fxai: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (UsageError, ValueError, TypeError, FileNotFoundError, LookupError)):
        text = f"{type(err).__name__}: {text} (run with --debug for the traceback)"
    return text if len(text) <= 600 else text[:597] + "..."


# ---------------------------------------------------------------- demo


def _demo(args) -> int:
    from . import demo

    _check_writable(args.out)
    demo.run(args.out, seed=args.seed, device=args.device, quick=args.quick)
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


def _parse_methods(text: str) -> list:
    from .registry import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return list(METHODS.values())
    if not names:
        raise UsageError("--method is empty; give comma-separated names, e.g. gradient,grad_cam")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r} in --method; available: {', '.join(METHODS)}")
    return [METHODS[n] for n in dict.fromkeys(names)]


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


def _explain(args) -> int:
    import torch

    from . import postprocess, registry, viz
    from ._core.discovery import resolve_layers
    from ._core.functional import functional
    from .loading import (IMAGENET_MEAN, IMAGENET_STD, build_model, classes_in, input_channels, load_images,
                          load_weights, pretrained, read_weights, resolve_device)

    methods = _parse_methods(args.method)
    mode, value = _parse_target(args.target)
    device = resolve_device(args.device)
    for path in args.images:
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
    _check_writable(args.out)

    module, weights = build_model(args.model)
    if args.pretrained:
        if weights is None:
            raise UsageError("--pretrained works with torchvision model names; for your own model pass --weights FILE")
        module = pretrained(args.model, weights, device)
    elif args.weights:
        state = read_weights(args.weights)
        classes = classes_in(module, state)
        if weights is not None and classes is not None and classes != len(weights.meta.get("categories", ())):
            module, weights = build_model(args.model, classes)   # a torchvision model fine-tuned to other classes
        load_weights(module, state, args.weights)
    module = module.to(device).eval()
    categories = weights.meta.get("categories") if weights is not None and not args.weights else None

    channels = input_channels(module)
    mean = torch.tensor(_floats(args.mean, IMAGENET_MEAN, "mean", channels)).view(-1, 1, 1)
    std = torch.tensor(_floats(args.std, IMAGENET_STD, "std", channels)).view(-1, 1, 1)
    images = load_images(args.images, channels, args.keep_size, args.resize)

    model_fn, params = functional(module)
    layer = args.layer
    if layer is not None:
        try:
            resolve_layers(model_fn, layer, name="--layer")
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from None
    needs_layer = any(info.layered for info in methods)

    # Images of one size form one batch (all of them, unless --keep-size with mixed sizes).
    groups: dict[tuple, list[int]] = {}
    for i, (_, img) in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    used, rows = set(), {}
    stems = [_safe_stem(p, used) for p, _ in images]
    for shape, members in groups.items():
        raw = torch.stack([images[i][1] for i in members]).to(device)
        x = (raw - mean.to(device)) / std.to(device)
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
        probs = logits.softmax(-1)
        top = probs.topk(min(5, classes), dim=-1)
        for row, i in enumerate(members):
            shown = ", ".join(f"{int(c)} {categories[int(c)] if categories else ''}".rstrip() + f" ({float(p):.3f})"
                              for p, c in zip(top.values[row], top.indices[row]))
            print(f"{images[i][0]}: {shown}")
        target = (torch.full((len(members),), value, dtype=torch.long, device=device) if mode == "index"
                  else logits.topk(value, dim=-1).indices if value > 1 else logits.argmax(-1))
        if needs_layer and layer is None:
            (layer,) = resolve_layers(model_fn, None, params=params, x=x)
            print(f"CAM layer: {layer} (choose another with --layer)")
        references = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(args.seed)).to(x)
        for info in methods:
            options = registry.options(info, size=shape[-2:], layer=layer, key=args.seed, references=references,
                                       chunk_size=64)
            try:
                amap = info.fn(model_fn, params, x, target, **options).detach()
            except (ValueError, TypeError) as err:
                raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
            sign = args.sign if info.kind == "pixel" else "positive"
            heat = postprocess.heatmap(amap, kind=info.kind, reduce="abs_sum" if args.sign == "absolute" else "sum",
                                       size=shape[-2:]).cpu()
            multi = target.ndim == 2
            for row, i in enumerate(members):
                torch.save(amap[row].cpu().clone(), os.path.join(args.out, f"{stems[i]}_{info.name}.pt"))
                for k in range(target.shape[1] if multi else 1):
                    cls = int(target[row, k]) if multi else int(target[row])
                    h = heat[row, k] if multi else heat[row]
                    rgb = viz.overlay(raw[row].cpu(), h, sign=sign)
                    suffix = f"_c{cls}" if multi else ""
                    viz.save_rgb(rgb, os.path.join(args.out, f"{stems[i]}_{info.name}{suffix}.png"))
                    rows.setdefault((i, cls), {})[info.name] = (h, sign)
    names = [info.name for info in methods]
    fig = viz.grid([images[i][1] for i, _ in rows], {n: [r[n][0] for r in rows.values()] for n in names},
                   row_titles=[f"{stems[i]}\nclass {cls}" for i, cls in rows],
                   sign={n: next(iter(rows.values()))[n][1] for n in names}, cell=1.9)
    viz.save(fig, os.path.join(args.out, "grid.png"))
    print(f"wrote {len(rows) * len(names)} overlays, raw maps (.pt) and grid.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
