"""Benchmark: the demo's scoring of one map, before and after its faithfulness columns stopped leaking.

"black": deletion with a black fill and insertion from a blurred image, 16 steps each (the demo's former
columns); "honest": deletion and insertion over a blurred fill, 12 steps each, and ROAD (noisy linear
imputation, MoRF and LeRF) on the first 16 images (``fxai.app.demo.FULL``'s columns). 64 synthetic 32×32 images,
the demo's SmallCNN; a smooth (CAM-like) and a pixel-wise (gradient-like) map. Variants interleaved in one
process; median seconds per map.

    python benchmarks/bench_demo.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fxai
from fxai import metrics
from fxai.app import demo
from fxai.data.synthetic import shapes
from fxai.models import SmallCNN


def black(model_fn, params, x, target, heat):
    metrics.deletion(model_fn, params, x, target, heat, steps=16, softmax=True, key=0)
    metrics.insertion(model_fn, params, x, target, heat, steps=16, softmax=True, key=0)


def honest(model_fn, params, x, target, heat):
    for fn, _ in demo.FAITHFULNESS.values():
        fn(model_fn, params, x, target, heat, demo.FULL, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_fn, params = fxai.functional(SmallCNN(4, width=24).eval())
    batch = shapes(64, seed=0, start=demo.TEST_START, size=32, classes=4)
    g = torch.Generator().manual_seed(0)
    maps = {"smooth": torch.nn.functional.interpolate(torch.rand(64, 1, 4, 4, generator=g), size=(32, 32),
                                                      mode="bilinear")[:, 0],
            "pixel-wise": torch.rand(64, 32, 32, generator=g)}
    variants = {"black": black, "honest": honest}
    times = {(m, v): [] for m in maps for v in variants}
    for m, heat in maps.items():
        for v, fn in variants.items():
            fn(model_fn, params, batch.images, batch.labels, heat)          # warm-up
    for _ in range(args.repeats):
        for m, heat in maps.items():
            for v, fn in variants.items():
                start = time.perf_counter()
                fn(model_fn, params, batch.images, batch.labels, heat)
                times[m, v].append(time.perf_counter() - start)
    print("| map | black fill (s) | honest columns (s) | ratio |")
    print("|---|---|---|---|")
    for m in maps:
        a, b = statistics.median(times[m, "black"]), statistics.median(times[m, "honest"])
        print(f"| {m} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
