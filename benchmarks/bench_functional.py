"""The cost of running on fxai's own copy of the module: per call, per ``functional()``, and memory over many.

``model_fn`` runs ``torch.func.functional_call`` on a structural copy of the module
(tensors on ``meta``, one per thread) instead of on the module itself. Measured:

- ``call``: one forward of resnet18 (batch ``--batch`` at ``--size``², no grad): ``module(x)`` (the floor),
  ``functional_call(module, params, x)`` (what ``model_fn`` ran before) and ``model_fn(params, x)``;
- ``functional()``: making ``model_fn, params`` for resnet18 and resnet50, against ``copy.deepcopy(module)``;
- ``per explanation``: Grad-CAM at ``layer4`` with a held ``model_fn`` against ``functional()`` + Grad-CAM
  (which traces and binds the layer tap again each time);
- ``memory``: ``--loops`` rounds of ``functional()`` + Grad-CAM: the FX source entries left
  (``torch.fx``'s ``linecache`` loader) and the growth of the resident set (MiB, Linux ``VmRSS``)
  between the first and the last tenth of the rounds.

Variants run interleaved in one process; times are medians of ``--repeats`` runs after a warm-up.

Run: ``python benchmarks/bench_functional.py --threads 2 --repeats 9``
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time

import torch
import torchvision
from torch.func import functional_call

import fxai


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _interleaved(variants: dict, repeats: int) -> dict:
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _table(title: str, med: dict, ref: str) -> None:
    print(f"\n{title}\n")
    print(f"| variant | median (ms) | ratio to {ref} |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.2f} | {t / med[ref]:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--loops", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    r18 = torchvision.models.resnet18().eval()
    r50 = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    target = torch.arange(args.batch) % 1000
    model_fn, params = fxai.functional(r18)
    full = {**dict(r18.named_parameters()), **dict(r18.named_buffers())}

    with torch.no_grad():
        med = _interleaved({"module(x)": lambda: r18(x),
                            "functional_call(module)": lambda: functional_call(r18, full, (x,)),
                            "model_fn (copy)": lambda: model_fn(params, x)}, args.repeats)
    _table(f"One forward, resnet18, B={args.batch}, {args.size}x{args.size}, CPU, {args.threads} threads, "
           f"median of {args.repeats}", med, "module(x)")

    med = _interleaved({"deepcopy(resnet18)": lambda: copy.deepcopy(r18),
                        "functional(resnet18)": lambda: fxai.functional(r18),
                        "deepcopy(resnet50)": lambda: copy.deepcopy(r50),
                        "functional(resnet50)": lambda: fxai.functional(r50)}, args.repeats)
    _table("Making model_fn, params", med, "functional(resnet18)")

    def fresh():
        fn, p = fxai.functional(r18)
        return fxai.grad_cam(fn, p, x, target, layer="layer4")

    med = _interleaved({"grad_cam (held model_fn)": lambda: fxai.grad_cam(model_fn, params, x, target, layer="layer4"),
                        "functional() + grad_cam": fresh}, args.repeats)
    _table("Per explanation, Grad-CAM at layer4", med, "grad_cam (held model_fn)")

    loader = torch.fx.graph_module._loader
    small = torch.randn(1, 3, 32, 32)
    tenth = max(1, args.loops // 10)
    gc.collect()
    rss, entries = [], len(loader.eval_cache)
    for i in range(args.loops):
        fn, p = fxai.functional(r18)
        fxai.grad_cam(fn, p, small, 0, layer="layer4")
        del fn, p
        if i % tenth == tenth - 1:
            gc.collect()
            rss.append(_rss_mib())
    print(f"\nMemory over {args.loops} rounds of functional(resnet18) + grad_cam (1x3x32x32): "
          f"FX source entries left: {len(loader.eval_cache) - entries}; "
          f"RSS growth from round {tenth} to round {args.loops}: {rss[-1] - rss[0]:+.1f} MiB")


if __name__ == "__main__":
    main()
