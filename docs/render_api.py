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
from fxai.metrics import registry as metric_registry

FAMILY_TITLES = {
    "gradient": "Gradient methods (backpropagation maps)",
    "relevance": "Relevance propagation: DeepLIFT ([deeplift.md](deeplift.md)) and LRP (rules and composites: "
                 "`fxai.lrp_rules`, [lrp.md](lrp.md))",
    "cam": "CAM family",
    "mask": "Mask methods (maps from masked inputs)",
    "transform": "Transforms (ensembles over noisy inputs)",
}
# The methods and transforms come from the registry, by family; these are the building blocks around them.
SECTIONS = [
    ("Models as pure functions", ["functional", "FunctionalModel", "split", "fixed"]),
    *((title, [m.name for m in registry.ENTRIES.values() if m.family == family]) for family, title in FAMILY_TITLES.items()),
    ("Concept discovery", ["deep_feature_factorization", "Factorization"]),
    ("Layers and neurons ([layers.md](layers.md))", ["at_layer", "layer_conductance", "layer_output", "neuron",
                                                     "LayerOutput"]),
    ("Building blocks", ["path_rule", "with_relu_rule", "relu_rule", "fold_batchnorm", "to_grid",
                         "segmentation_target"]),
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
    out.append(_entry("fxai.registry.options", registry.options))
    out.append(_entry("fxai.registry.applied", registry.applied))
    out.append("| method | kind | family | randomised | layered | needs | cost |\n|---|---|---|---|---|---|---|")
    for m in registry.ENTRIES.values():
        out.append(f"| `{m.name}` | {m.kind} | {m.family} | {'yes' if m.randomised else ''} | "
                   f"{'yes' if m.layered else ''} | {', '.join(m.needs)} | "
                   f"{', '.join(f'{k}={v}' for k, v in m.cost.items())} |")
    out.append("\n## Metric registry (`fxai.metrics.registry`)\n")
    out.append(inspect.getdoc(metric_registry) + "\n")
    out.append("| metric | kind | output | higher is better | randomised | needs |\n|---|---|---|---|---|---|")
    for m in metric_registry.METRICS.values():
        better = {True: "yes", False: "no", None: ""}[m.higher_is_better]
        out.append(f"| `{m.name}` | {m.kind} | {m.output} | {better} | {'yes' if m.randomised else ''} | "
                   f"{', '.join(m.needs)} |")
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
