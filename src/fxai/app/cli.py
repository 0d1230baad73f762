"""The ``fxai`` command: ``fxai demo`` (the built-in ground-truth demo) and ``fxai explain IMAGE ...``.

Errors in what the user passed (files, names, indices) end the command with a
one-line message on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_methods import help_epilog
from .explain import DEFAULT_METHODS
from .loading import UsageError, check_writable

EXIT_ERROR = 2


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
                           "(trained for 2000 steps; the whole run about 6 minutes on 2 CPU cores)")
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
                         "config.json), a torchvision detector (e.g. fasterrcnn_resnet50_fpn, with --weights; "
                         "one figure per image with each detected box's map) or segmentation model (fcn_*, "
                         "deeplabv3_*, lraspp_*: --target is a category, explained over its predicted mask); timm and HuggingFace models bring "
                         "their own preprocessing "
                         "(default: %(default)s)")
    weights = ex.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE", help="a state dict saved with torch.save (or a checkpoint "
                                                           "holding one under 'state_dict' or 'model')")
    weights.add_argument("--pretrained", action="store_true", help="torchvision's (or timm's) default pretrained "
                                                                    "weights (downloaded once to the hub cache)")
    ex.add_argument("--method", default=DEFAULT_METHODS,
                    help="comma-separated methods, 'all', or TRANSFORM:METHOD for a smoothed method (e.g. "
                         "smoothgrad_sq:gradient) (default: %(default)s); see the lists below")
    ex.add_argument("--option", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                    help="a method option, e.g. steps=64, num_masks=4000, window=16,16, samples=25 (repeatable; "
                         "given to every chosen method that takes it, or to one: rise.num_masks=500; see the lists "
                         "below)")
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
    from .evaluate import add_command as add_evaluate_command
    add_evaluate_command(sub)
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
        if args.command == "evaluate":
            from . import evaluate
            return evaluate.run(args)
        if args.command in ("roar", "extract"):
            from . import roar as roar_cli
            return roar_cli.run(args)
        from . import explain
        return explain.run(args)
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

    check_writable(args.out)
    demo.run(args.out, seed=args.seed, device=args.device, quick=args.quick, arch=args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
