"""Benchmark: the robustness metrics (and the new localisation and complexity metrics) against Quantus 0.6.

resnet18 with random weights, a batch of images, the gradient as the explanation method for both libraries (the
same function, so that only the metrics' own machinery differs), the same number of perturbations; the floor is
the model evaluations the metric needs: the gradient of every perturbed input, ``--chunk-size`` at a time (plus
one forward over them for the relative stabilities, whose method is a black box). Variants run interleaved in one
process; medians of ``--repeats`` rounds after a warm-up call. Prints Markdown tables.

    python benchmarks/bench_metrics_robustness.py --images 8 --size 112 --samples 3 --repeats 2
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torchvision
from timing import interleaved_medians

import fxai
from fxai import metrics as M


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-free-only", action="store_true", help="only the localisation and complexity metrics")
    args = ap.parse_args()
    import quantus

    warnings.filterwarnings("ignore")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval().to(dev)
    model_fn, params = fxai.functional(net)
    b, hw, s, cs = args.images, args.size, args.samples, args.chunk_size
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(b, 3, hw, hw, generator=g) + 0.1).to(dev)
    with torch.no_grad():
        y = net(x).argmax(1)
    amap = fxai.gradient(model_fn, params, x, y)
    x_np, y_np, a_np = x.cpu().numpy(), y.cpu().numpy(), amap.cpu().numpy()

    def explain_func(model, inputs, targets, **kwargs):
        xt = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=dev)
        return fxai.gradient(model_fn, params, xt, torch.as_tensor(np.asarray(targets), device=dev)).cpu().numpy()

    def q(metric, **call):
        return lambda: metric(model=net, x_batch=x_np, y_batch=y_np, a_batch=a_np, explain_func=explain_func,
                              device=args.device, batch_size=b, **call)

    def floor(copies, forward=False):
        rows = (x[None] + 0.01 * torch.rand(copies, *x.shape, generator=g).to(dev)).flatten(0, 1)
        tgt = y.repeat(copies)

        def run():
            for a in range(0, rows.shape[0], cs):
                xi = rows[a:a + cs].clone().requires_grad_(True)
                torch.autograd.grad(net(xi).gather(1, tgt[a:a + cs, None]).sum(), xi)
                if forward:
                    with torch.no_grad():
                        net(rows[a:a + cs])
        return run

    common = dict(abs=False, normalise=False, disable_warnings=True)
    opts = dict(method=fxai.gradient, samples=s, key=0, chunk_size=cs)
    cases = {
        "local Lipschitz estimate": (
            lambda: M.local_lipschitz_estimate(model_fn, params, x, y, amap, **opts),
            q(quantus.LocalLipschitzEstimate(nr_samples=s, **common)), floor(s)),
        "average sensitivity": (
            lambda: M.avg_sensitivity(model_fn, params, x, y, amap, **opts),
            q(quantus.AvgSensitivity(nr_samples=s, **common)), floor(s)),
        "max sensitivity": (
            lambda: M.max_sensitivity(model_fn, params, x, y, amap, method=fxai.gradient, samples=s, key=0),
            q(quantus.MaxSensitivity(nr_samples=s, **common)), floor(s)),
        # s + 1 shifts: with s = 3 and a width of 112 Quantus's last shift is 113 > 112 pixels and it raises
        f"continuity ({s + 1} shifts)": (
            lambda: M.continuity(model_fn, params, x, y, amap, method=fxai.gradient, steps=s + 1, chunk_size=cs),
            q(quantus.Continuity(nr_steps=s + 1, **common)), floor(s + 1)),
        "relative input stability": (
            lambda: M.relative_input_stability(model_fn, params, x, y, amap, **opts),
            q(quantus.RelativeInputStability(nr_samples=s, **common)), floor(s, True)),
        "relative output stability": (
            lambda: M.relative_output_stability(model_fn, params, x, y, amap, **opts),
            q(quantus.RelativeOutputStability(nr_samples=s, **common), softmax=False), floor(s, True)),
        "relative representation stability (layer4.1)": (
            lambda: M.relative_representation_stability(model_fn, params, x, y, amap, layer="layer4.1", **opts),
            q(quantus.RelativeRepresentationStability(nr_samples=s, layer_names=["layer4.1"], **common)),
            floor(s, True)),
        "consistency": (
            lambda: M.consistency(model_fn, params, x, y, amap, discretise="first_sign"),
            q(quantus.Consistency(**common)), lambda: net(x)),
    }
    print(f"resnet18 (random weights), {b} images of {hw}×{hw}, {s} perturbations, device {args.device}, "
          f"{torch.get_num_threads()} threads, chunk_size={cs}\n")
    print("| metric | fxai s | Quantus s | Quantus / fxai | fxai / floor |")
    print("|---|---|---|---|---|")
    for name, (ours, theirs, fl) in cases.items():
        if args.model_free_only:
            break
        with torch.no_grad() if name == "consistency" else torch.enable_grad():
            t = interleaved_medians({"fxai": ours, "quantus": theirs, "floor": fl}, args.repeats)
        print(f"| {name} | {t['fxai']:.3f} | {t['quantus']:.3f} | {t['quantus'] / t['fxai']:.1f} | "
              f"{t['fxai'] / t['floor']:.2f} |", flush=True)

    # model-free metrics on 224×224 maps
    hw = 224
    heat = torch.randn(b, hw, hw, generator=g)
    mask = torch.zeros(b, hw, hw, dtype=torch.bool)
    mask[:, 50:150, 60:140] = True
    xs, h_np, m_np = np.zeros((b, 1, hw, hw), np.float32), heat[:, None].numpy(), mask[:, None].numpy()

    def q2(metric):
        return lambda: metric(model=None, x_batch=xs, y_batch=y_np, a_batch=h_np, s_batch=m_np)

    cases = {
        "ROC AUC against the mask": (lambda: M.mask_auc(heat, mask), q2(quantus.AUC(**common))),
        "top-k intersection (k = 1000)": (lambda: M.top_k_intersection(heat, mask),
                                          q2(quantus.TopKIntersection(**common))),
        "attribution localisation": (lambda: M.attribution_localisation(heat, mask),
                                     q2(quantus.AttributionLocalisation(abs=True, normalise=False,
                                                                        disable_warnings=True))),
        "sparseness (Gini)": (lambda: M.sparseness(heat), q2(quantus.Sparseness(abs=True, normalise=False,
                                                                                   disable_warnings=True))),
        "effective complexity": (lambda: M.effective_complexity(heat),
                                 q2(quantus.EffectiveComplexity(abs=True, normalise=False, disable_warnings=True))),
    }
    print(f"\nmodel-free metrics, {b} maps of {hw}×{hw} (CPU)\n")
    print("| metric | fxai ms | Quantus ms | Quantus / fxai |")
    print("|---|---|---|---|")
    for name, (ours, theirs) in cases.items():
        t = interleaved_medians({"fxai": ours, "quantus": theirs}, max(3, args.repeats))
        print(f"| {name} | {1e3 * t['fxai']:.1f} | {1e3 * t['quantus']:.1f} | {t['quantus'] / t['fxai']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
