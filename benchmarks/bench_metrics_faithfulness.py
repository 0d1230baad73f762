"""Benchmark: the correlation-style faithfulness, axiomatic and randomisation metrics on resnet18, CPU.

Each metric runs in fxai and in Quantus 0.6 with the same inputs, maps and settings, and against its floor:
the model evaluations it needs (forward passes over as many inputs as it perturbs, in chunks of
``--chunk-size`` rows; gradient calls for the metrics that explain). Prints a Markdown table of per-batch
median times and ratios, and the largest difference between fxai's and Quantus's scores where both compute
the same quantity with the same draws.

    OMP_NUM_THREADS=2 python benchmarks/bench_metrics_faithfulness.py --size 112 --images 8 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

import fxai
from fxai import metrics as M

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved_medians  # noqa: E402


@torch.no_grad()
def floor_forward(net, x, passes, chunk_size):
    """``passes`` forward passes per input, ``chunk_size`` rows at a time (copies of ``x``: the cost does not
    depend on the values)."""
    rows = x.repeat(passes, 1, 1, 1)
    for i in range(0, rows.shape[0], chunk_size):
        net(rows[i:i + chunk_size])


def gradients(model, inputs, targets, **kwargs):
    """Quantus ``explain_func``: the input gradient of the target logit."""
    x = torch.tensor(np.asarray(inputs, dtype=np.float32), requires_grad=True)
    model(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum().backward()
    return x.grad.numpy()


def quantus_call(metric, net, x, y, a, **kwargs):
    opts = dict(device="cpu", softmax=False)
    opts.update(kwargs)
    return metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), **opts)


def cases(net, model_fn, params, x, y, a, cs, quantus):
    """``(name, fxai, quantus or None, floor, check)``; ``check(ours, theirs)`` is the max abs difference."""
    b, c, h, w = x.shape
    n = c * h * w
    step = h * w // 4  # 3 · 4 = 12 groups of features
    groups = n // step

    def diff(o, q):
        return float((o.float() - torch.tensor(np.asarray(q, dtype=np.float64)).float()).abs().max())
    out = []

    runs, size = 10, 224
    np.random.seed(0)
    subsets = []
    for _ in range(runs):
        subsets.append(np.stack([np.random.choice(n, size, replace=False) for _ in range(b)]))
        np.random.uniform(size=b)
    subsets = torch.tensor(np.stack(subsets, 1))

    def q_fc():
        np.random.seed(0)
        metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, normalise=False,
                                                 return_aggregate=False, disable_warnings=True)
        return quantus_call(metric, net, x, y, a)
    out.append(("faithfulness correlation (10 runs)",
                lambda: M.faithfulness_correlation(model_fn, params, x, y, a, runs=runs, subset_size=size,
                                                   subsets=subsets, chunk_size=cs),
                q_fc, lambda: floor_forward(net, x, runs + 1, cs), diff))
    out.append(("faithfulness estimate (12 groups)",
                lambda: M.faithfulness_estimate(model_fn, params, x, y, a, features_in_step=step, chunk_size=cs),
                lambda: quantus_call(quantus.FaithfulnessEstimate(features_in_step=step, normalise=False,
                                                                  disable_warnings=True), net, x, y, a),
                lambda: floor_forward(net, x, groups + 1, cs), diff))
    out.append(("monotonicity (12 groups)",
                lambda: M.monotonicity(model_fn, params, x, y, a, features_in_step=step, chunk_size=cs),
                lambda: quantus_call(quantus.Monotonicity(features_in_step=step, normalise=False,
                                                          disable_warnings=True), net, x, y, a),
                lambda: floor_forward(net, x, groups, cs), None))  # Quantus never restores x: always True
    samples = 2
    np.random.seed(1)
    noise = torch.tensor(np.stack([np.stack([np.random.uniform(0, 1, size=b) for _ in range(samples)])
                                   for _ in range(groups)]), dtype=torch.float32)

    def q_mc():
        np.random.seed(1)
        return quantus_call(quantus.MonotonicityCorrelation(nr_samples=samples, features_in_step=step,
                                                            normalise=False, disable_warnings=True), net, x, y, a)
    out.append(("monotonicity correlation (12 groups × 2)",
                lambda: M.monotonicity_correlation(model_fn, params, x, y, a, samples=samples, features_in_step=step,
                                                   noise=noise, chunk_size=cs),
                q_mc, lambda: floor_forward(net, x, groups * samples + 1, cs), diff))
    patch = h // 4
    out.append(("region perturbation (16 patches)",
                lambda: M.region_perturbation(model_fn, params, x, y, a, patch=patch, regions=16, chunk_size=cs),
                lambda: quantus_call(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=16,
                                                                normalise=False, disable_warnings=True), net, x, y, a),
                lambda: floor_forward(net, x, 17, cs), diff))
    out.append(("sensitivity-n (2 sizes × 6 subsets; Quantus: its own 12 steps)",
                lambda: M.sensitivity_n(model_fn, params, x, y, a, ns=[224, 2240], samples=6, key=0, chunk_size=cs),
                lambda: quantus_call(quantus.SensitivityN(features_in_step=step, normalise=False,
                                                          return_aggregate=False, disable_warnings=True), net, x, y, a),
                lambda: floor_forward(net, x, 13, cs), None))
    out.append(("completeness",
                lambda: M.completeness(model_fn, params, x, y, a),
                lambda: quantus_call(quantus.Completeness(normalise=False, disable_warnings=True), net, x, y, a),
                lambda: floor_forward(net, x, 2, cs), None))  # Quantus: exact float equality
    out.append(("sufficiency",
                lambda: M.sufficiency(model_fn, params, x, None, a),
                lambda: quantus_call(quantus.Sufficiency(normalise=False, disable_warnings=True), net, x, y, a,
                                     softmax=True),
                lambda: floor_forward(net, x, 1, cs), diff))
    g = fxai.gradient(model_fn, params, x, y)
    np.random.seed(42)
    r = torch.tensor(np.random.randint(0, 999, b))
    off = r + (r >= y).long()
    out.append(("random logit (SSIM: fxai 2-D, Quantus 1-D)",
                lambda: M.random_logit(model_fn, params, x, y, g, method=fxai.gradient, off_class=off),
                lambda: quantus_call(quantus.RandomLogit(num_classes=1000, normalise=False, disable_warnings=True),
                                     net, x, y, g, explain_func=gradients),
                lambda: fxai.gradient(model_fn, params, x, off), None))
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    *_, (_, last) = wrapped.get_random_layer_generator(order="bottom_up", seed=42)
    randomised = {k: v.detach().clone() for k, v in fxai.functional(last)[1].items()}
    out.append(("efficient MPRT",
                lambda: M.efficient_mprt(model_fn, params, x, y, g, method=fxai.gradient, randomised=randomised),
                lambda: quantus_call(quantus.EfficientMPRT(disable_warnings=True), net, x, y, g, softmax=True,
                                     explain_func=gradients),
                lambda: fxai.gradient(model_fn, randomised, x, y), diff))
    return out


def irof_case(net, model_fn, params, x, y, a, cs, quantus):
    """IROF on the SLIC superpixels of each image (Quantus's segmentation call, about 100 segments)."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in NumPy 2

    def mean_fill(arr, mask, perturb_baseline="mean", **kwargs):  # Quantus's own asserts on RGB inputs
        return np.where(np.broadcast_to(mask, arr.shape), arr.mean(), arr)

    seg = M.slic_segments(x)
    passes = int(max(s.unique().numel() for s in seg)) + 1
    return ("IROF (SLIC, ~100 segments; segmentation included)",
            lambda: M.irof(model_fn, params, x, y, a, chunk_size=cs),
            lambda: quantus_call(quantus.IROF(normalise=False, return_aggregate=False, perturb_func=mean_fill,
                                              disable_warnings=True), net, x, y, a),
            lambda: floor_forward(net, x, passes, cs), None)


def small_cases(net, model_fn, params, x, y, a, cs, quantus):
    """Metrics whose Quantus run takes one forward per feature or one explanation per layer and sample,
    on small images: non-sensitivity (one group per feature: Quantus works only so), smooth MPRT over every
    layer of resnet18, and input invariance (on a copy of the network whose first convolution has a bias)."""
    import copy

    b, n = x.shape[0], x[0].numel()
    out = []
    a0 = a.clone()
    a0.view(-1)[::3] = 0.0
    out.append((f"non-sensitivity ({n} single features)",
                lambda: M.non_sensitivity(model_fn, params, x, y, a0, normalise=False, chunk_size=cs),
                lambda: quantus_call(quantus.NonSensitivity(features_in_step=1, normalise=False, disable_warnings=True),
                                     net, x, y, a0),
                lambda: floor_forward(net, x, n + 1, cs),
                lambda o, q: float((o - torch.tensor(np.asarray(q), dtype=o.dtype)).abs().max())))
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    stages = [{k: v.detach().clone() for k, v in fxai.functional(m)[1].items()}
              for _, m in wrapped.get_random_layer_generator(order="bottom_up", seed=42)]
    samples = 2
    g = fxai.gradient(model_fn, params, x, y)

    def explain(model, inputs, targets, **kwargs):
        return gradients(model, inputs, targets)

    def q_smprt():
        saved, quantus.explain = quantus.explain, explain  # Quantus's SmoothMPRT calls quantus.explain
        try:
            np.random.seed(5)
            return quantus_call(quantus.SmoothMPRT(nr_samples=samples, disable_warnings=True), net, x, y, g,
                                explain_func=explain)
        finally:
            quantus.explain = saved

    def ours_smprt():
        np.random.seed(5)
        for _ in range(samples - 1):
            np.random.randn(*x.shape)
        return M.smooth_mprt(model_fn, params, x, y, g, method=fxai.gradient, samples=samples, stages=stages,
                             noise=lambda shape: torch.from_numpy(np.random.randn(*shape)))

    def smprt_diff(o, q):
        q = torch.tensor([q[k] for k in list(q)[1:]], dtype=torch.float32).T
        return float((o - q).abs().max())

    rows = x.repeat(samples, 1, 1, 1)
    out.append((f"smooth MPRT ({len(stages)} layers × {samples} samples)", ours_smprt, q_smprt,
                lambda: [fxai.gradient(model_fn, p, rows, y.repeat(samples)) for p in stages], smprt_diff))
    biased = copy.deepcopy(net)
    conv = biased.conv1
    biased.conv1 = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
    with torch.no_grad():
        biased.conv1.weight.copy_(conv.weight)
        biased.conv1.bias.zero_()
    bf, bp = fxai.functional(biased)
    gb = fxai.gradient(bf, bp, x, y)

    def shift_all(arr, indices, indexed_axes=None, input_shift=-1, **kwargs):  # Quantus skips the first element
        return arr + input_shift

    out.append(("input invariance (gradient)",
                lambda: M.input_invariance(bf, bp, x, y, gb, method=fxai.gradient, layer="conv1"),
                lambda: quantus_call(quantus.InputInvariance(disable_warnings=True, perturb_func=shift_all), biased,
                                     x, y, gb, explain_func=gradients),
                lambda: fxai.gradient(bf, bp, x, y),
                lambda o, q: float((o - torch.tensor(np.asarray(q, dtype=np.float32))).abs().max())))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--irof-images", type=int, default=2)
    ap.add_argument("--small-size", type=int, default=16, help="image size of the per-feature and per-layer cases")
    ap.add_argument("--only", default="", help="comma-separated substrings of metric names")
    args = ap.parse_args()
    import quantus

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(net)
    g = torch.Generator().manual_seed(0)
    b, hw, cs = args.images, args.size, args.chunk_size
    # smooth images (SLIC finds one segment in uniform noise) with a little pixel noise
    x = torch.nn.functional.interpolate(torch.rand(b, 3, hw // 8, hw // 8, generator=g), size=(hw, hw),
                                        mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.rand(b, 3, hw, hw, generator=g)).clamp(0, 1)
    a = torch.randn(b, 3, hw, hw, generator=g)  # no ties: every sort gives one order
    with torch.no_grad():
        y = net(x).argmax(1)
    todo = cases(net, model_fn, params, x, y, a, cs, quantus)
    k = args.irof_images
    todo.append(irof_case(net, model_fn, params, x[:k], y[:k], a[:k], cs, quantus))
    s = args.small_size
    xs = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ys = net(xs).argmax(1)
    todo += small_cases(net, model_fn, params, xs, ys, torch.randn(b, 3, s, s, generator=g), cs, quantus)
    if args.only:
        keys_ = args.only.split(",")
        todo = [t for t in todo if any(s in t[0] for s in keys_)]
    print(f"\nresnet18, {hw}×{hw} ({s}×{s} for the last three), CPU, {torch.get_num_threads()} threads, batch {b} "
          f"(IROF: {k}), chunk_size={cs}\n")
    print("| metric | fxai (s) | Quantus (s) | floor (s) | Quantus / fxai | fxai / floor | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, ours, theirs, floor, check in todo:
        last = {}
        t = interleaved_medians({"fxai": lambda: last.__setitem__("fxai", ours()),
                                 "quantus": lambda: last.__setitem__("quantus", theirs()), "floor": floor},
                                args.repeats, warm_up=False)
        d = f"{check(last['fxai'], last['quantus']):.1e}" if check is not None else "(differs by definition)"
        print(f"| {name} | {t['fxai']:.3f} | {t['quantus']:.3f} | {t['floor']:.3f} | "
              f"{t['quantus'] / t['fxai']:.1f} | {t['fxai'] / t['floor']:.2f} | {d} |", flush=True)


if __name__ == "__main__":
    main()
