"""What op interception itself costs: a forward under LRP's mode and under the shared engine, against a plain one.

Forwards without gradients (eval mode, random weights, batch ``--batch`` at ``--size``²) of:

- ``plain``: ``model_fn(params, x)``;
- ``lrp mode, recording``: under ``RelevanceMode(..., record=[])`` (EpsilonPlusFlat): every call goes through
  LRP's ``__torch_function__``, the ops with a rule are recorded and computed plainly;
- ``engine, recording``: under the shared engine's ``Intercept`` with DeepLIFT's ``Recorder`` (the reference pass);
- ``engine, no rules``: under ``Intercept({})``, which only dispatches every call.

At 224² the convolutions dominate and the rows differ by run-to-run noise; at 32² (``--size 32``) the
per-call cost of the Python dispatch shows. This is the measurement behind keeping LRP's own mode
(docs/lrp.md): which of the two dispatches runs does not change the time.

Run: ``python benchmarks/bench_interception.py --threads 1 --size 224`` (and ``--size 32``)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torchvision
from timing import interleaved_medians

import fxai
from fxai.rules.engine import Intercept, Recorder
from fxai.rules.lrp_mode import RelevanceMode
from fxai.rules.lrp import as_composite
from fxai.rules.multipliers import intercepted_ops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--models", default="resnet18,vgg16")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    composite = as_composite("epsilon_plus_flat")
    print(f"{args.batch}x3x{args.size}x{args.size}, CPU, torch {torch.__version__}, {args.threads} threads, median of "
          f"{args.repeats}; command: python {' '.join(sys.argv)}\n")
    print("| model | variant | time (ms) | / plain | calls recorded (no rules: seen) |")
    print("|---|---|---:|---:|---:|")
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval()
        model_fn, params = fxai.functional(model)
        counts = {}

        def plain():
            with torch.no_grad():
                model_fn(params, x)

        def lrp_mode():
            record = []
            with torch.no_grad(), RelevanceMode(composite, params, record=record):
                model_fn(params, x)
            counts["lrp mode, recording"] = len(record)

        def engine():
            recorder = Recorder()
            with torch.no_grad(), Intercept(dict.fromkeys(intercepted_ops("rescale"), recorder), copy_inplace=True):
                model_fn(params, x)
            counts["engine, recording"] = len(recorder.calls)

        def dispatch_only():
            seen = [0]

            def observe(func, a, k):
                seen[0] += 1
            with torch.no_grad(), Intercept({}, observe=observe):
                model_fn(params, x)
            counts["engine, no rules"] = seen[0]

        variants = {"plain": plain, "lrp mode, recording": lrp_mode, "engine, recording": engine,
                    "engine, no rules": dispatch_only}
        med = interleaved_medians(variants, args.repeats)
        for v, t in med.items():
            print(f"| {name} | {v} | {t * 1e3:.1f} | {t / med['plain']:.3f} | {counts.get(v, '')} |")


if __name__ == "__main__":
    main()
