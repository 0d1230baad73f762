"""Benchmark: feature ablation, KernelSHAP, LIME and Owen values over superpixels on resnet18 (random weights), CPU.

Speed: one 224×224 image, SLIC superpixels (65), each method at the same number of model
evaluations as its counterparts: Captum (its default ``perturbations_per_eval=1`` and tuned to the chunk
size), lime's ``LimeImageExplainer`` (same superpixels, its ``batch_size`` = the chunk size), shap's
``PartitionExplainer`` (``maskers.Image``, ``batch_size`` = the chunk size), and the floor: forwards
over the same number of inputs, built beforehand, in chunks of the same size. Runs interleaved in one
process; the table gives median CPU times of the process (one thread; on a machine shared with other jobs
wall times mostly measure the waiting) and their ratio to the floor.

Accuracy: the RMS error against exact Shapley values (every coalition of 12 grid cells) of a small CNN on
32×32 inputs, against the number of evaluations, over seeds: fxai's antithetic orderings and KernelSHAP
(paired, exact constraint) against Captum's ``ShapleyValueSampling`` and ``KernelShap``.

    python benchmarks/bench_shapley.py                        # both parts (~3 min on 2 shared cores)
    python benchmarks/bench_shapley.py --skip-speed --seeds 4  # the error curve only
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import fxai  # noqa: E402


def cpu_medians(variants: dict, repeats: int, *, warm_up: bool) -> dict:
    """Median CPU seconds of each variant over ``repeats`` interleaved rounds (after an untimed round)."""
    times = {name: [] for name in variants}
    for r in range(repeats + int(warm_up)):
        for name, fn in variants.items():
            start = time.process_time()
            fn()
            if r or not warm_up:
                times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed(args):
    from captum.attr import FeatureAblation, KernelShap, Lime

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(net)
    size, cs = args.size, args.chunk_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = fxai.metrics.imputers.gaussian_blur(x, sigma=4.0, kernel_size=25)   # smooth: SLIC finds regions
    seg = fxai.superpixels(x, "slic", n_segments=args.segments)
    m = int(seg.max()) + 1
    mask = seg[:, None].expand_as(x).contiguous()
    with torch.no_grad():
        target = int(net(x).argmax())
    n = args.samples
    print(f"resnet18, {size}x{size}, {m} SLIC superpixels, {n} sampled coalitions, chunks of {cs}, "
          f"{torch.get_num_threads()} threads")

    def floor(rows):
        def run():
            with torch.no_grad():
                for a in range(0, rows, cs):
                    net(x.expand(min(cs, rows - a), -1, -1, -1).clone())
        return run

    def f_numpy(batch):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()).softmax(1).numpy()

    img = x[0].permute(1, 2, 0).double().numpy()
    groups = {
        "feature ablation": (m + 1, {
            "fxai": lambda: fxai.feature_ablation(model_fn, params, x, target, feature_mask=seg, chunk_size=cs),
            "Captum default": lambda: FeatureAblation(net).attribute(x, target=target, feature_mask=mask),
            "Captum tuned": lambda: FeatureAblation(net).attribute(x, target=target, feature_mask=mask,
                                                                 perturbations_per_eval=cs)}),
        "KernelSHAP": (n + 2, {
            "fxai": lambda: fxai.kernel_shap(model_fn, params, x, target, feature_mask=seg, samples=n, key=0,
                                             chunk_size=cs),
            "Captum default": lambda: KernelShap(net).attribute(x, target=target, feature_mask=mask, n_samples=n + 2),
            "Captum tuned": lambda: KernelShap(net).attribute(x, target=target, feature_mask=mask, n_samples=n + 2,
                                                              perturbations_per_eval=cs)}),
        "LIME": (n, {
            "fxai": lambda: fxai.lime(model_fn, params, x, target, feature_mask=seg, samples=n, key=0, chunk_size=cs),
            "Captum tuned": lambda: Lime(net).attribute(x, target=target, feature_mask=mask, n_samples=n,
                                                        perturbations_per_eval=cs),
            "lime": lambda: _lime(f_numpy, img, seg[0].numpy(), target, n, cs)}),
        "Owen values": (n, {
            "fxai": lambda: fxai.owen_values(model_fn, params, x, target, max_evals=n, per_round=cs, chunk_size=cs),
            "shap": lambda: _shap(f_numpy, img, target, n, cs)}),
    }
    floor(2 * cs)()  # the first forwards allocate: outside every timing
    print("\n| method | evaluations | variant | CPU time (s) | × floor |\n|---|---|---|---|---|")
    for name, (rows, variants) in groups.items():
        if args.only and name not in args.only:
            continue
        med = cpu_medians({"floor": floor(rows), **variants}, args.repeats, warm_up=args.warm_up)
        for variant, t in med.items():
            print(f"| {name} | {rows} | {variant} | {t:.2f} | {t / med['floor']:.2f} |", flush=True)


def _lime(f_numpy, img, segments, target, n, cs):
    from lime import lime_image

    explainer = lime_image.LimeImageExplainer(random_state=0)
    return explainer.explain_instance(img, f_numpy, labels=(target,), top_labels=None, hide_color=0, num_samples=n,
                                      batch_size=cs, segmentation_fn=lambda _: segments)


def _shap(f_numpy, img, target, n, cs):
    import shap

    explainer = shap.PartitionExplainer(lambda a: f_numpy(a)[:, target], shap.maskers.Image(np.zeros_like(img)))
    return explainer(img[None], max_evals=n, batch_size=cs, silent=True)


def error_curve(args):
    from captum.attr import KernelShap, ShapleyValueSampling

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(64, 10)).double().eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = fxai.grid_mask((32, 32), (3, 4))
    mask = grid[None, None].expand_as(x).contiguous()
    exact = fxai.shapley_values(model_fn, params, x, 3, feature_mask=grid)
    m = 12

    def rmse(fn):
        errs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            errs.append((fn(seed) - exact).square().mean())
        return float(torch.stack(errs).mean().sqrt())

    print(f"\nRMS error against exact Shapley values (12 cells, small CNN 32x32, {args.seeds} seeds); "
          f"RMS of the exact values {float(exact.square().mean().sqrt()):.4f}")
    print("\n| evaluations | fxai shapley_sampling | Captum ShapleyValueSampling | fxai kernel_shap | "
          "Captum KernelShap |\n|---|---|---|---|---|")
    for perms in (4, 16, 64):
        evals = 2 + perms * (m - 1)
        cols = [rmse(lambda s: fxai.shapley_sampling(model_fn, params, x, 3, feature_mask=grid, samples=perms, key=s)),
                rmse(lambda s: ShapleyValueSampling(net).attribute(x, target=3, feature_mask=mask, n_samples=perms,
                                                                   perturbations_per_eval=64)),
                rmse(lambda s: fxai.kernel_shap(model_fn, params, x, 3, feature_mask=grid, samples=evals - 2, key=s)),
                rmse(lambda s: KernelShap(net).attribute(x, target=3, feature_mask=mask, n_samples=evals,
                                                         perturbations_per_eval=64))]
        print(f"| {evals} | " + " | ".join(f"{c:.5f}" for c in cols) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--segments", type=int, default=80, help="SLIC n_segments (80 gives 65 superpixels on the benchmark image)")
    ap.add_argument("--samples", type=int, default=128, help="coalitions (KernelSHAP, LIME), Owen's max_evals")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="timed rounds")
    ap.add_argument("--warm-up", action="store_true", help="an untimed round of every variant first")
    ap.add_argument("--only", nargs="*", help="methods to time, e.g. LIME 'Owen values'")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-curve", action="store_true")
    args = ap.parse_args()
    if not args.skip_speed:
        speed(args)
    if not args.skip_curve:
        error_curve(args)


if __name__ == "__main__":
    main()
