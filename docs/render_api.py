"""Render docs/api.md from the docstrings of fxai's public functions.

Run from the repository root: ``python docs/render_api.py`` (``--check`` exits
non-zero when docs/api.md is out of date).
"""

from __future__ import annotations

import argparse
import inspect
import pathlib
import sys

import fxai
from fxai import postprocess, registry

SECTIONS = [
    ("Models as pure functions", ["functional", "FunctionalModel"]),
    ("Gradient methods", ["gradient", "input_x_gradient", "integrated_gradients", "path_rule", "expected_gradients"]),
    ("Backward rules", ["guided_backprop", "deconvnet", "with_relu_rule", "relu_rule"]),
    ("DeepLIFT", ["deeplift", "deeplift_shap"]),
    ("Transforms (ensembles over noisy inputs)", ["smoothgrad", "smoothgrad_sq", "vargrad"]),
    ("CAM family", ["cam", "grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam", "eigen_cam",
                    "eigen_grad_cam", "full_grad", "guided_grad_cam"]),
    ("Perturbation methods", ["score_cam", "ablation_cam", "rise", "occlusion"]),
    ("Compilation", ["compiled"]),
]

HEADER = """# API reference

Generated from the docstrings by `python docs/render_api.py`; do not edit by hand.

Conventions: `x` is a batch `[B, C, H, W]`; `target` is an `int`, a
`LongTensor[B]`, a `LongTensor[B, K]` (K maps per input, output `[B, K, ...]`),
`None` (top-1 class on the clean input) or a callable `logits -> scores[B]`.
Options are keyword-only; randomised methods need `key` (an int seed or a
`torch.Generator`). Pixel methods return maps shaped like `x`; CAM methods
return `[B, H, W]`. Outputs are raw: see `fxai.postprocess`.
"""


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _entry(qualname: str, obj) -> str:
    doc = inspect.getdoc(obj) or "(no docstring)"
    return f"### `{qualname}`\n\n```python\n{qualname}{_signature(obj)}\n```\n\n{doc}\n"


def render() -> str:
    out = [HEADER]
    listed = set()
    for title, names in SECTIONS:
        out.append(f"## {title}\n")
        for name in names:
            if hasattr(fxai, name):
                out.append(_entry(f"fxai.{name}", getattr(fxai, name)))
                listed.add(name)
    rest = [n for n in fxai.__all__ if n not in listed and callable(getattr(fxai, n))
            and not inspect.ismodule(getattr(fxai, n))]
    if rest:
        out.append("## Other functions\n")
        out += [_entry(f"fxai.{n}", getattr(fxai, n)) for n in sorted(rest)]
    out.append("## Post-processing (`fxai.postprocess`)\n")
    out.append(inspect.getdoc(postprocess) + "\n")
    for name, obj in inspect.getmembers(postprocess, inspect.isfunction):
        if not name.startswith("_") and obj.__module__ == postprocess.__name__:
            out.append(_entry(f"fxai.postprocess.{name}", obj))
    out.append("## Registry (`fxai.registry`)\n")
    out.append(inspect.getdoc(registry) + "\n")
    out.append(_entry("fxai.registry.MethodInfo", registry.MethodInfo))
    out.append(_entry("fxai.registry.method", registry.method))
    out.append("| method | kind | randomised | layered | needs |\n|---|---|---|---|---|")
    for m in registry.METHODS.values():
        out.append(f"| `{m.name}` | {m.kind} | {'yes' if m.randomised else ''} | {'yes' if m.layered else ''} "
                   f"| {', '.join(m.needs)} |")
    out.append("\nMetrics are documented in [metrics.md](metrics.md).\n")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/api.md differs from the docstrings")
    args = ap.parse_args(argv)
    path = pathlib.Path(__file__).with_name("api.md")
    text = render()
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date; run python docs/render_api.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
