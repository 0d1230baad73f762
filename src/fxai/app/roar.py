"""``fxai roar`` and ``fxai extract``: the subcommands, added to the ``fxai`` parser by :func:`add_commands`."""

from __future__ import annotations

import argparse

from ..roar import pipeline
from .cli_methods import accepted, as_roar_spec, method_names, parse_options, spelled
from .loading import UsageError
from ..roar.removal import FILLS, MODES
from ..roar.train import AUGMENTATIONS, OPTIMIZERS, TrainConfig

COMMANDS = ("roar", "extract")
_D, _T = pipeline.RoarConfig(), TrainConfig()


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def _names(choices):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated values from {', '.join(choices)}, "
                                             f"got {text!r}")
        return values
    return parse


def _methods(text: str) -> tuple[str, ...]:
    """Comma-separated methods and controls in the one spelling (``smoothgrad_sq:gradient``), as the grid names
    them (``smoothgrad_sq(gradient)``)."""
    from ..roar import methods

    try:
        return tuple(methods.canonical(as_roar_spec(n)) for n in method_names(text, flag="--method"))
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _takes(spec: str) -> set:
    """The options the ROAR method ``spec`` accepts (none for the controls)."""
    from ..roar import methods

    transform, base = methods.parse(spec)
    if base in methods.CONTROLS:
        return set()
    return accepted(methods.registry.method(base)) | ({"samples", "sigma"} if transform else set())


def method_options(args, specs, base: dict) -> dict:
    """``{spec: options}`` for the chosen methods: ``base`` (the run's defaults) updated by ``--option`` (and the
    older ``--options`` JSON); an option no chosen method takes is refused."""
    settings = parse_options(args.option or [], legacy_json=args.options)
    out = {k: dict(v) for k, v in base.items()}
    chosen = {spelled(s): s for s in specs}
    for name, value in settings.items():
        if isinstance(value, dict):
            if name not in chosen:
                raise UsageError(f"--option {name}.NAME: {name!r} is not among the chosen methods "
                                 f"({', '.join(chosen)})")
            bad = sorted(set(value) - _takes(chosen[name]))
            if bad:
                raise UsageError(f"--option {name}.{bad[0]}: {name} does not take {bad[0]!r}; it takes: "
                                 f"{', '.join(sorted(_takes(chosen[name]))) or 'no options'}")
            out.setdefault(chosen[name], {}).update(value)
            continue
        takers = [s for s in specs if name in _takes(s)]
        if not takers:
            raise UsageError(f"--option {name}: none of the chosen methods ({', '.join(chosen)}) takes {name!r}")
        for spec in takers:
            out.setdefault(spec, {})[name] = value
    return out


def _data_args(p):
    p.add_argument("--dataset", default="shapes", choices=("shapes", "mnist", "cifar10", "folder"),
                   help="the built-in synthetic shapes, MNIST or CIFAR-10 from --data-dir, or an image folder "
                        "(--data-dir/train/<class>/..., --data-dir/test/<class>/...) (default: %(default)s)")
    p.add_argument("--data-dir", help="folder holding the dataset files (MNIST/raw, cifar-10-batches-py, ...)")
    p.add_argument("--size", type=int,
                   help=f"image side of the synthetic shapes and image folders (default {_D.size})")
    p.add_argument("--classes", type=int, help=f"classes of the synthetic shapes (default {_D.classes})")
    p.add_argument("--train-count", type=int,
                   help=f"training images used (default: {_D.train_count} synthetic, all otherwise)")
    p.add_argument("--test-count", type=int,
                   help=f"test images used (default: {_D.test_count} synthetic, all otherwise)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s; under torchrun "
                                                   "'cuda' means one GPU per local rank)")
    p.add_argument("--seed", type=int, help="seed of the data, the models and the maps (default 0)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keeps `fxai --debug roar`
                   help="show the full traceback on errors")


def _option_args(p) -> None:
    p.add_argument("--option", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                   help="a method option, as in fxai explain: steps=64 (every chosen method that takes it) or "
                        "integrated_gradients.steps=64 (one method); repeatable")
    p.add_argument("--options", metavar="JSON", help=argparse.SUPPRESS)   # the older spelling, with a note


def add_commands(sub) -> None:
    """Add ``roar`` and ``extract`` to the subparsers ``sub`` of the ``fxai`` parser."""
    r = sub.add_parser("roar", help="ROAR/KAR: retrain on data with the most/least relevant pixels replaced "
                                    "(runs a small complete benchmark on synthetic shapes by default)")
    _data_args(r)
    r.add_argument("--out", default="fxai-roar", help="run folder; an interrupted run resumes (default: %(default)s)")
    r.add_argument("--quick", action="store_true",
                   help="a small run of about a minute on two CPU cores: the default run's code path on a smaller "
                        "grid (gradient and the random and ground-truth controls, t = 0.5, 16×16 images)")
    r.add_argument("--method", "--methods", dest="methods", type=_methods, help="comma-separated methods and "
                   "controls, e.g. gradient,smoothgrad_sq:gradient,grad_cam,random,sobel,ground_truth (default: the "
                   "six methods of the default run and the three controls)")
    _option_args(r)
    r.add_argument("--fractions", type=_floats,
                   help=f"fractions of pixels replaced (default {','.join(f'{v:g}' for v in _D.fractions)})")
    r.add_argument("--modes", type=_names(MODES), help="roar, kar or both (default)")
    r.add_argument("--fill", type=_names(FILLS), help="fills used for every method (default: mean)")
    r.add_argument("--control-fill", type=_names(FILLS), help="extra fills for the controls (default: noisy_linear)")
    r.add_argument("--repeats", type=int, help=f"retrains per point (default {_D.repeats})")
    r.add_argument("--arch", choices=("smallcnn", "resnet8", "resnet20"), help=f"network (default {_T.arch})")
    r.add_argument("--width", type=int, help=f"network width (default {_T.width})")
    r.add_argument("--epochs", type=int, help=f"epochs per retrain (default {_T.epochs})")
    r.add_argument("--batch-size", type=int, help=f"batch size (default {_T.batch_size})")
    r.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"adamw (one-cycle) or sgd (cosine) (default {_T.optimizer})")
    r.add_argument("--lr", type=float, help=f"peak learning rate (default {_T.lr:g})")
    r.add_argument("--augment", choices=AUGMENTATIONS, help=f"augmentation (default {_T.augment})")
    r.add_argument("--workers", type=int, help="local worker processes sharing the grid (default: one per CPU "
                                               "core up to 4 on the CPU, one on a GPU)")
    r.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    r.add_argument("--stale-after", type=float, default=600.0,
                   help="seconds without a heartbeat after which a job is taken over (default: %(default)s)")
    r.add_argument("--only", choices=("prepare", "work", "report"), help="run one stage (e.g. 'work' on more "
                                                                         "machines sharing --out)")

    e = sub.add_parser("extract", help="maps of a whole dataset by one method, as sharded safetensors")
    _data_args(e)
    e.add_argument("--method", required=True, type=_methods, help="a method or a transform of one, e.g. gradient or "
                                                     "smoothgrad_sq:gradient, or random, sobel, ground_truth")
    _option_args(e)
    e.add_argument("--weights", required=True, help="the model's weights (.safetensors, or a state dict saved "
                                                    "with torch.save), e.g. OUT/model/model.safetensors of fxai roar")
    e.add_argument("--arch", default="smallcnn", choices=("smallcnn", "resnet8", "resnet20"),
                   help="the network of --weights (default: %(default)s; fxai roar's model file says its own)")
    e.add_argument("--width", type=int, default=_T.width, help="its width (default: %(default)s)")
    e.add_argument("--split", default="test", choices=("train", "test"))
    e.add_argument("--reduce", default="abs_sum", help="channel reduction of pixel maps (default: %(default)s)")
    e.add_argument("--dtype", default="float32", choices=("float16", "float32"))
    e.add_argument("--target", default="label", choices=("label", "predicted"))
    e.add_argument("--shard-size", type=int, default=1024)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--out", required=True, help="the map folder")


def _config(args) -> pipeline.RoarConfig:
    base = pipeline.QUICK if args.quick else {}
    train = base.get("train", TrainConfig())
    train_over = {k: getattr(args, k) for k in ("arch", "width", "epochs", "batch_size", "optimizer", "lr", "augment")
                  if getattr(args, k) is not None}
    over = {"dataset": args.dataset, "root": args.data_dir, "size": args.size, "classes": args.classes,
            "train_count": args.train_count, "test_count": args.test_count, "methods": args.methods,
            "fractions": args.fractions, "modes": args.modes, "fills": args.fill,
            "control_fills": args.control_fill, "repeats": args.repeats, "seed": args.seed}
    if args.dataset != "shapes":
        base = {k: v for k, v in base.items() if k not in ("train_count", "test_count", "size")}
        base.setdefault("train_count", None)
        base.setdefault("test_count", None)
        if "ground_truth" in (args.methods or pipeline.RoarConfig().methods) and args.methods is None:
            base["methods"] = tuple(m for m in base.get("methods", pipeline.RoarConfig().methods)
                                    if m != "ground_truth")
    import dataclasses
    fields = {**base, **{k: v for k, v in over.items() if v is not None}}
    specs = fields.get("methods", pipeline.RoarConfig().methods)
    fields["options"] = method_options(args, specs, fields.get("options", pipeline.METHOD_OPTIONS))
    return pipeline.RoarConfig(**{**fields, "train": dataclasses.replace(train, **train_over)})


def run(args) -> int:
    """Run the subcommand of parsed ``args`` (``args.command`` in :data:`COMMANDS`); returns the exit status."""
    if args.command == "roar":
        from ..roar.runner import run as run_roar

        run_roar(args.out, _config(args), device=args.device, workers=args.workers, threads=args.threads,
                 stale_after=args.stale_after, only=args.only or "all")
        return 0
    return _extract(args)


def _extract(args) -> int:
    import os

    import torch

    from .._core.functional import functional
    from ..roar import datasets, dist, extraction
    from ..roar.nets import CAM_LAYERS, build

    data = datasets.load(args.dataset, root=args.data_dir, size=args.size or _D.size,
                         classes=args.classes or _D.classes, train_count=args.train_count,
                         test_count=args.test_count, seed=args.seed or 0)
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights: no such file {args.weights}")
    from ..roar import described

    found = described.read(args.weights)
    if found is not None:                      # fxai roar's model.safetensors: it says what it is
        model = described.rebuild(*found)
        args.arch, args.width = found[0]["arch"], found[0]["width"]
    else:
        if args.weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(args.weights)
        else:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model = build(args.arch, data["classes"], channels=data["train"].images.shape[1], width=args.width)
        model.load_state_dict(state)
    device = dist.local_device(torch.device(args.device))
    model_fn, params = functional(model.to(device).eval())
    from ..roar import methods
    if len(args.method) != 1:
        raise UsageError(f"--method: extract computes the maps of one method, got {len(args.method)}")
    (spec,) = args.method
    options = method_options(args, (spec,), {}).get(spec, {})
    inner = methods.parse(spec)[1]
    if inner not in methods.CONTROLS and methods.registry.method(inner).layered:
        options.setdefault("layer", CAM_LAYERS[args.arch])
    extraction.extract(model_fn, params, data[args.split], spec, args.out, options=options,
                       reduce=args.reduce, dtype=args.dtype, target=args.target, key=args.seed or 0,
                       shard_size=args.shard_size, batch_size=args.batch_size, dataset_name=data[args.split].name,
                       device=device)
    if dist.init()[0] == 0:
        print(f"maps written to {os.path.abspath(args.out)}")
    return 0
