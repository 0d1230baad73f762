"""ROAR/KAR: dataset-wide extraction throughput, and the cost of removing pixels on the fly during training.

Extraction (synthetic shapes at 64×64, SmallCNN of width 16 with random weights, eval mode): maps per
second of ``fxai.roar.extract`` (sharded safetensors, manifest, progress bar off) on the images held in
memory as tensors (what ``fxai roar`` does: the run's dataset is read once into tensors) and on the
synthetic dataset rendered batch by batch while extracting; against the same method called batch by
batch in a plain loop over the in-memory batches (maps kept in memory), and against the method's
compute floor on the same batches: gradient -> one forward and one input-gradient backward; IG (32
steps) -> the same over the 32 stacked copies; Grad-CAM -> one forward and the backward to the CAM
layer's activation (no CAM weighting or upsampling).

Removal: one training epoch (2000 images at 32×32, batches of 64, SmallCNN width 16, AdamW) without
removal, with the ROAR mask and the mean fill applied to every batch, and with noisy linear imputation
applied to every batch; and the once-per-job alteration of the whole training set that ``fxai roar`` does.

    python benchmarks/bench_roar.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import fxai
from fxai.data import Shapes
from fxai.models import SmallCNN
from fxai.roar import removal
from fxai.roar.datasets import TensorData


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_extraction(args) -> list[str]:
    torch.manual_seed(0)
    model = SmallCNN(4, width=16).eval()
    model_fn, params = fxai.functional(model)
    data = Shapes(args.count, seed=0, size=64, classes=4)
    batches = [data.batch(range(a, min(a + args.batch, args.count))) for a in range(0, args.count, args.batch)]
    cases = {
        "gradient": ("gradient", {}, lambda x, y: fxai.gradient(model_fn, params, x, y).abs().sum(1)),
        "ig32": ("integrated_gradients", {"steps": 32},
                 lambda x, y: fxai.integrated_gradients(model_fn, params, x, y, steps=32).abs().sum(1)),
        "grad_cam": ("grad_cam", {"layer": "features"},
                     lambda x, y: fxai.grad_cam(model_fn, params, x, y, layer="features")),
    }

    def floor(case):
        def run():
            for x, y, _ in batches:
                if case == "grad_cam":
                    with torch.no_grad():
                        a = model.stem(x)
                    a.requires_grad_()
                    logits = model.fc(model.pool(model.features(a)).flatten(1))
                    torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)
                    continue
                steps = 32 if case == "ig32" else 1
                xs = (x[None] * torch.linspace(0.02, 1, steps).view(-1, 1, 1, 1, 1)).flatten(0, 1).requires_grad_()
                logits = model(xs)
                torch.autograd.grad(logits.gather(1, y.repeat(steps)[:, None]).sum(), xs)
        return run

    rows = []
    for case, (spec, opts, call) in cases.items():
        if case not in args.cases.split(","):
            continue
        folder = tempfile.mkdtemp(prefix="bench-roar-")
        images = torch.cat([b[0] for b in batches])
        tensors = TensorData(images, torch.cat([b[1] for b in batches]), torch.cat([b[2] for b in batches]))

        def extract(dataset):
            def run():
                shutil.rmtree(folder, ignore_errors=True)
                fxai.roar.extract(model_fn, params, dataset, spec, folder, options=opts, batch_size=args.batch,
                                  shard_size=1024, progress=False)
            return run

        def loop():
            maps = []
            for x, y, _ in batches:
                maps.append(call(x, y).detach())
            torch.cat(maps)

        variants = {"fxai.roar.extract, tensors": extract(tensors), "fxai.roar.extract, rendered": extract(data),
                    "plain loop, tensors": loop, "floor": floor(case)}
        for fn in variants.values():  # warm-up
            fn()
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, fn in variants.items():
                times[k].append(_timed(fn))
        shutil.rmtree(folder, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in variants:
            rows.append(f"| {case} | {k} | {med[k]:.3f} | {args.count / med[k]:.0f} | "
                        f"{med['plain loop, tensors'] / med[k]:.2f} | {med['floor'] / med[k]:.2f} |")
    return ["| case | variant | time (s) | maps/s | speed vs loop | speed vs floor |", "|---|---|---:|---:|---:|---:|"] + rows


def bench_removal(args) -> list[str]:
    data = fxai.data.shapes(2000, seed=0, size=32, classes=4)
    maps = fxai.roar.random_map(data.images, key=0)
    mean = data.images.mean((0, 2, 3))
    imputer = fxai.metrics.noisy_linear(0.01)

    def epoch(remove):
        torch.manual_seed(0)
        model = SmallCNN(4, width=16)
        opt = torch.optim.AdamW(model.parameters(), lr=4e-3)

        def run():
            for j, a in enumerate(range(0, 2000 - 63, 64)):
                x, y = data.images[a:a + 64], data.labels[a:a + 64]
                if remove is not None:
                    mask = removal.removal_mask(maps[a:a + 64], 0.5, "roar")
                    if remove == "mean":
                        x = removal.fill_with(x, mask, "mean", mean=mean)
                    else:
                        x = imputer(x, mask[None], key=j)[0]
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return run

    def once(fill):
        return lambda: fxai.roar.alter(data.images, maps, fraction=0.5, mode="roar", fill=fill, mean=mean, key=0)

    variants = {"epoch, no removal": epoch(None), "epoch, mean fill per batch": epoch("mean"),
                "epoch, noisy linear per batch": epoch("noisy_linear"),
                "whole set once, mean fill": once("mean"), "whole set once, noisy linear": once("noisy_linear")}
    for fn in variants.values():
        fn()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            times[k].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["epoch, no removal"]
    return ["| variant | time (s) | / epoch without removal |", "|---|---:|---:|"] + [
        f"| {k} | {v:.3f} | {v / base:.2f} |" for k, v in med.items()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--count", type=int, default=256, help="images extracted per run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cases", default="gradient,ig32,grad_cam", help="extraction cases (default: %(default)s)")
    p.add_argument("--skip-extraction", action="store_true")
    p.add_argument("--skip-removal", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores\n")
    if not args.skip_extraction:
        print("\n".join(bench_extraction(args)) + "\n")
    if not args.skip_removal:
        print("\n".join(bench_removal(args)))


if __name__ == "__main__":
    main()
