"""Peak memory of every method called with its defaults (``chunk_size=None``), CPU.

Each registry method runs once with the options a user must give (a layer, a key, references, occlusion's
window) and nothing else, on resnet18 at 224×224 (batch 2), and RISE — the method whose default stacks the
most inputs (4000 masks) — also on a small CNN at 64×64, 96×96 and 224×224, where it used to need 9.4 GB,
20 GB and more than this machine has. The peak is the resident memory above the RSS before the call
(``VmHWM`` after resetting it), as in ``bench_gradients.py``. The budget that ``chunk_size=None`` keeps is
8 images of 3×224×224 per pass (``fxai._core.batching.ROW_BUDGET``).

Run: ``python benchmarks/bench_memory.py --threads 2`` (``--skip score_cam,ablation_cam`` for a quicker run).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gradients import measure  # noqa: E402

import fxai  # noqa: E402
from fxai import registry  # noqa: E402


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated methods not to run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    torch.manual_seed(0)
    model_fn, params = fxai.functional(torchvision.models.resnet18(weights=None).eval())
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    refs = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    for info in registry.METHODS.values():
        if info.name in skip or info.name == "rise":  # 8000 resnet18 forwards: measured on the small CNN below
            continue
        opts = registry.options(info, size=(224, 224), layer="layer4", key=0, references=refs)
        seconds, peak = measure(lambda: info.fn(model_fn, params, x, 3, **opts))
        rows.append(("resnet18, 2×3×224×224", info.name, seconds, peak))
        print(rows[-1], flush=True)
    if "rise" not in skip:  # the method whose default stacks the most inputs
        small_fn, small_params = fxai.functional(small_cnn())
        for size in (64, 96, 224):
            xs = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            seconds, peak = measure(lambda: fxai.rise(small_fn, small_params, xs, 3, key=0))
            rows.append((f"small CNN, 2×3×{size}×{size}", "rise (4000 masks)", seconds, peak))
            print(rows[-1], flush=True)
    print(f"\nCPU, torch {torch.__version__}, {args.threads} threads; command: python {' '.join(sys.argv)}\n")
    print("| model, input | method | time (s) | peak RSS above the start (MiB) |\n|---|---|---:|---:|")
    for model, name, seconds, peak in rows:
        print(f"| {model} | {name} | {seconds:.2f} | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    main()
