"""The ``fxai`` command: ``fxai demo`` (the built-in ground-truth demo) and ``fxai explain IMAGE ...``.

Errors in what the user passed (files, names, indices) end the command with a
one-line message on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

EXIT_ERROR = 2
DEFAULT_METHODS = "gradient,integrated_gradients,grad_cam"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SKIPPED_LAYER_TYPES = ("Pool", "ReLU", "GELU", "SiLU", "Hardswish", "Sigmoid", "Dropout", "Identity", "BatchNorm",
                        "LayerNorm", "GroupNorm", "Flatten")


class UsageError(Exception):
    """A problem with what the user passed: printed as one line, exit status 2."""


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
    from .roar.cli import add_commands as add_roar_commands
    add_roar_commands(sub)
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
        if args.command in ("roar", "extract"):
            from .roar import cli as roar_cli
            return roar_cli.run(args)
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


def _build_model(name: str, classes: int | None = None):
    """``(module, weights_enum_or_None)`` for a torchvision name (with ``classes`` outputs) or ``package.module:factory``."""
    import torch
    import torchvision

    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(f"cannot import {module_name!r} for --model {name!r}: {err}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise UsageError(f"--model {name!r}: {module_name} has no callable {attr!r}")
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"--model {name!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model, None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [m for m in available if name.lower().replace("-", "_") in m][:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (e.g. resnet18, resnet50, vgg16, convnext_tiny)"
        raise UsageError(f"unknown model {name!r}: give a torchvision classification model name{hint} "
                         "or package.module:factory")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return torchvision.models.get_model(name, weights=None, **({"num_classes": classes} if classes else {})), weights


def _read_weights(path: str) -> dict:
    import torch

    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise UsageError(f"cannot read weights file {path}: {' '.join(str(err).split())[:200] or type(err).__name__} "
                         "(expected a state dict saved with torch.save)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classes_in(model, state: dict) -> int | None:
    """The number of classes ``state`` was trained for, read at the model's last linear layer."""
    import torch

    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    weight = state.get(f"{linears[-1]}.weight") if linears else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def _load_weights(model, state: dict, path: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise UsageError(f"weights in {path} do not fit the model: {' '.join(detail.split())[:300]}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        parts = ([f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})"] if unexpected else [])
        raise UsageError(f"weights in {path} do not fit the model: {'; '.join(parts)}")


def _pretrained(model_name: str, weights, device):
    import torchvision

    try:
        return torchvision.models.get_model(model_name, weights=weights)
    except Exception as err:  # noqa: BLE001 - any download failure: explain the offline route
        filename = os.path.basename(weights.url)
        from torch.hub import get_dir

        raise UsageError(f"cannot get the pretrained weights of {model_name} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]}); if offline, download {weights.url} elsewhere and pass "
                         f"it with --weights FILE, or place it at {os.path.join(get_dir(), 'checkpoints', filename)}") \
            from None


def _input_channels(model) -> int:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def _load_images(paths, channels: int, keep_size: bool, resize):
    """``[(path, original RGB tensor [C, H, W] in [0, 1])]`` after conversion and resizing."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    loaded = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                if img.mode in ("RGBA", "LA"):
                    canvas = Image.new("RGB", img.size, (255, 255, 255))
                    canvas.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
                    img = canvas
                img = img.convert("L" if channels == 1 else "RGB")
        except UnidentifiedImageError:
            raise UsageError(f"cannot read image {path}: not a recognised image file") from None
        except OSError as err:
            raise UsageError(f"cannot read image {path}: {err}") from None
        if not keep_size:
            img = TF.center_crop(TF.resize(img, resize[0]), resize[1])
        tensor = TF.to_tensor(img)
        if channels not in (1, 3):
            raise UsageError(f"the model takes {channels} input channels; only 1 (grayscale) or 3 (RGB) are supported")
        loaded.append((path, tensor.to(torch.float32)))
    return loaded


def default_layer(model, x) -> str:
    """The model's last convolutional block: the last module to finish with a spatial output ``[B, C, h, w]``
    (h·w > 1), run exactly once, that is not a pooling, activation, normalisation or dropout layer."""
    import torch

    finished, counts = [], {}
    handles = []

    def make(name):
        def hook(mod, args, out):
            counts[name] = counts.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
                finished.append(name)
        return hook

    for name, mod in model.named_modules():
        if name and not any(t in type(mod).__name__ for t in _SKIPPED_LAYER_TYPES):
            handles.append(mod.register_forward_hook(make(name)))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    candidates = [n for n in finished if counts[n] == 1]
    if not candidates:
        raise UsageError("cannot find a convolutional layer for CAM methods in this model; pass --layer NAME")
    return candidates[-1]


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

    from . import postprocess, viz
    from ._core.functional import functional
    from .demo import method_options, resolve_device

    methods = _parse_methods(args.method)
    mode, value = _parse_target(args.target)
    device = resolve_device(args.device)
    for path in args.images:
        if not os.path.isfile(path):
            raise UsageError(f"image file not found: {path}")
    _check_writable(args.out)

    module, weights = _build_model(args.model)
    if args.pretrained:
        if weights is None:
            raise UsageError("--pretrained works with torchvision model names; for your own model pass --weights FILE")
        module = _pretrained(args.model, weights, device)
    elif args.weights:
        state = _read_weights(args.weights)
        classes = _classes_in(module, state)
        if weights is not None and classes is not None and classes != len(weights.meta.get("categories", ())):
            module, weights = _build_model(args.model, classes)   # a torchvision model fine-tuned to other classes
        _load_weights(module, state, args.weights)
    module = module.to(device).eval()
    categories = weights.meta.get("categories") if weights is not None and not args.weights else None

    channels = _input_channels(module)
    mean = torch.tensor(_floats(args.mean, IMAGENET_MEAN, "mean", channels)).view(-1, 1, 1)
    std = torch.tensor(_floats(args.std, IMAGENET_STD, "std", channels)).view(-1, 1, 1)
    images = _load_images(args.images, channels, args.keep_size, args.resize)

    model_fn, params = functional(module)
    layer = args.layer
    if layer is not None and (not layer or layer not in dict(module.named_modules())):
        names = [n for n, _ in module.named_modules() if n]
        raise UsageError(f"unknown layer {layer!r} for --layer; layers of this model include: "
                         f"{', '.join(names[:25])}{', ...' if len(names) > 25 else ''}")
    needs_layer = any(info.layered for info in methods)

    # Images of one size form one batch (all of them, unless --keep-size with mixed sizes).
    groups: dict[tuple, list[int]] = {}
    for i, (_, img) in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    used, overlays, failures = set(), {}, {}
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
            layer = default_layer(module, x)
            print(f"CAM layer: {layer} (choose another with --layer)")
        references = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(args.seed)).to(x)
        for info in methods:
            options = method_options(info, size=shape[-2:], layer=layer, seed=args.seed, references=references,
                                     chunk_size=64)
            try:
                amap = info.fn(model_fn, params, x, target, **options).detach()
            except NotImplementedError:
                failures.setdefault(info.name, "skipped: not implemented yet")
                continue
            except (ValueError, TypeError) as err:
                raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
            heat = postprocess.reduce_channels(amap, "abs_sum" if args.sign == "absolute" else "sum") \
                if info.kind == "pixel" else amap
            if tuple(heat.shape[-2:]) != tuple(shape[-2:]):
                heat = postprocess.upsample(heat, shape[-2:])
            multi = target.ndim == 2
            sign = args.sign if info.kind == "pixel" else "positive"
            for row, i in enumerate(members):
                torch.save(amap[row].cpu(), os.path.join(args.out, f"{stems[i]}_{info.name}.pt"))
                for k in range(target.shape[1] if multi else 1):
                    cls = int(target[row, k]) if multi else int(target[row])
                    h = heat[row, k] if multi else heat[row]
                    rgb = viz.overlay(raw[row].cpu(), h.cpu(), sign=sign)
                    suffix = f"_c{cls}" if multi else ""
                    viz.save_rgb(rgb, os.path.join(args.out, f"{stems[i]}_{info.name}{suffix}.png"))
                    overlays.setdefault((i, k, cls), {})[info.name] = rgb
    for name, note in failures.items():
        print(f"{name}: {note}")
    if overlays:
        _grid(overlays, images, stems, os.path.join(args.out, "grid.png"))
        print(f"wrote {sum(len(v) for v in overlays.values())} overlays, raw maps (.pt) and grid.png to {args.out}")
    else:
        raise UsageError("no method produced a map (" + "; ".join(f"{k} {v}" for k, v in failures.items()) + ")")
    return 0


def _grid(overlays: dict, images, stems, path: str) -> None:
    """Side-by-side figure: one row per (image, target class), the input then each method's overlay."""
    from . import viz

    columns = list(dict.fromkeys(name for row in overlays.values() for name in row))
    fig = viz._figure(1.9 * (len(columns) + 1), 1.9 * len(overlays) + 0.2)
    axes = fig.subplots(len(overlays), len(columns) + 1, squeeze=False)
    for r, ((i, _, cls), row) in enumerate(overlays.items()):
        panels = [("input", viz._image_rgb(images[i][1]))] + [(c, row.get(c)) for c in columns]
        for c, (title, panel) in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is not None:
                ax.imshow(panel)
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{stems[i]}\nclass {cls}", fontsize=7)
    fig.tight_layout()
    viz.save(fig, path)


if __name__ == "__main__":
    sys.exit(main())
