"""Benchmark: ROAD and a pixel-perturbation (deletion) curve on resnet18, 224×224, CPU.

Compares fxai with Quantus and pytorch-grad-cam on the same images, maps and
process, and with the floor: one forward pass over all perturbed inputs.
Prints a Markdown table of per-image times and checks that the results match.

    python benchmarks/bench_metrics.py --images 2 --repeats 3 --chunk-size 8
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torchvision

import fxai
from fxai import metrics as M


def timed(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


@torch.no_grad()
def chunked_forward(net, inputs, chunk_size):
    """The floor of a perturbation curve: one forward over all perturbed inputs, ``chunk_size`` at a time."""
    return torch.cat([net(inputs[i:i + chunk_size]) for i in range(0, inputs.shape[0], chunk_size)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--skip-quantus", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(net)
    b, hw = args.images, 224
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, hw, hw, generator=g)
    amap = torch.nn.functional.interpolate(torch.rand(b, 1, 7, 7, generator=g), size=(hw, hw), mode="bilinear",
                                           align_corners=False)[:, 0]
    amap = amap + 1e-4 * torch.rand(b, hw, hw, generator=g)  # no ties
    with torch.no_grad():
        y = net(x).argmax(1)
    rows, checks = [], []
    cs = args.chunk_size

    # --- deletion curve: 48 steps of 1045.3 pixels (all channels of a pixel), set to 0 ---
    steps = 48
    t_ours, curve = timed(lambda: M.deletion(model_fn, params, x, y, amap, steps=steps, chunk_size=cs), args.repeats)
    ranks = M.ranking(amap)
    masks = M.top_mask(ranks, [k * hw * hw // steps for k in range(steps + 1)])
    stacked = torch.where(masks[:, :, None], torch.zeros(()), x).flatten(0, 1)

    t_floor, _ = timed(lambda: chunked_forward(net, stacked, cs), args.repeats)
    rows.append(("deletion, 49 points", "fxai", t_ours, t_floor))
    rows.append(("deletion, 49 points", "floor (1 forward over all inputs)", t_floor, t_floor))
    if not args.skip_quantus:
        import quantus

        warnings.filterwarnings("ignore")
        # Quantus ranks the 3 * H * W features; a tiny per-channel offset keeps each pixel's channels adjacent.
        # Its steps of 3136 features (H * W must be a multiple) end on whole pixels every third step.
        metric = quantus.PixelFlipping(features_in_step=3136, perturb_baseline=0.0, normalise=False,
                                       abs=False, disable_warnings=True)
        a_np = amap[:, None].double().numpy() + 1e-9 * np.arange(3).reshape(1, 3, 1, 1)
        t_q, q = timed(lambda: metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a_np, softmax=False,
                                      device="cpu", batch_size=b), args.repeats)
        q = torch.tensor(np.asarray(q), dtype=torch.float32)
        coarse = M.deletion(model_fn, params, x, y, amap, steps=16, chunk_size=cs)
        checks.append(("deletion vs Quantus PixelFlipping (16 whole-pixel points)",
                       (q[:, 2::3] - coarse[:, 1:]).abs().max().item()))
        rows.append(("deletion, 49 points", "Quantus PixelFlipping (48 points)", t_q, t_floor))

    # --- ROAD MoRF: 10 fractions, noisy linear imputation (noise 0 to compare), on a smooth map (compact removed
    # regions, as from a CAM) and on a pixel-wise noisy one (scattered removed pixels, as from a gradient) ---
    noisy = torch.rand(b, hw, hw, generator=g)
    for kind, road_map in (("smooth map", amap), ("noisy map", noisy)):
        road_rows(f"ROAD MoRF, 10 fractions, {kind}", net, model_fn, params, x, y, road_map, args, rows, checks)

    ours = {r[0]: r[2] for r in rows if r[1] == "fxai"}
    print(f"\nresnet18, 224×224, CPU, {torch.get_num_threads()} threads, {b} images, chunk_size={cs}\n")
    print("| metric | implementation | s / image | × fxai | × floor |")
    print("|---|---|---|---|---|")
    for metric_name, impl, t, tf in rows:
        print(f"| {metric_name} | {impl} | {t / b:.3f} | {t / ours[metric_name]:.2f} | {t / tf:.2f} |")
    print("\n| check | max abs difference |\n|---|---|")
    for name, d in checks:
        print(f"| {name} | {d:.2e} |")


def road_rows(name, net, model_fn, params, x, y, amap, args, rows, checks):
    """Time ROAD MoRF (10 fractions) on ``amap``: fxai, its floor, pytorch-grad-cam and Quantus's imputation."""
    b, hw, cs = x.shape[0], x.shape[-1], args.chunk_size
    fractions = [0.05 + 0.1 * i for i in range(10)]
    t_road, road = timed(lambda: M.road(model_fn, params, x, y, amap, fractions=fractions, noise=0.0,
                                        chunk_size=cs), args.repeats)
    counts = [round(f * hw * hw) for f in fractions]
    ranks = M.ranking(amap)
    rstack = torch.where(M.top_mask(ranks, counts)[:, :, None], torch.zeros(()), x).flatten(0, 1)

    t_rfloor, _ = timed(lambda: chunked_forward(net, rstack, cs), args.repeats)
    rows.append((name, "fxai", t_road, t_rfloor))
    rows.append((name, "floor (1 forward over all inputs)", t_rfloor, t_rfloor))
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in y]

    def gradcam_road():
        return np.stack([PerturbationConfidenceMetric(RemoveMostRelevantFirst(100 - 100 * f, NoisyLinearImputer(0.0)))(
            x, amap.numpy(), targets, net, return_diff=False) for f in fractions], 1)

    t_gc, gc = timed(gradcam_road, args.repeats)
    checks.append((f"{name}: vs pytorch-grad-cam (noise 0)", float(np.abs(gc - road.numpy()).max())))
    rows.append((name, "pytorch-grad-cam ROADMostRelevantFirst", t_gc, t_rfloor))
    if args.skip_quantus:
        return
    # quantus.ROAD (0.6) ranks the C * H * W features but indexes an H * W mask: it raises IndexError on RGB
    # inputs. Its imputation is called here the way ROAD means it, on the same pixels as fxai.
    from quantus.functions.perturb_func import noisy_linear_imputation

    order = ranks.flatten(1).argsort(1).numpy()  # rank 0 first: the most relevant pixels

    def quantus_road():
        scores = []
        for k in counts:
            xs = np.stack([noisy_linear_imputation(arr=x[i].numpy(), indices=order[i, :k], noise=0.0)
                           for i in range(b)])
            with torch.no_grad():
                scores.append(net(torch.from_numpy(xs).float()).gather(1, y[:, None])[:, 0])
        return torch.stack(scores, 1)

    t_qr, qr = timed(quantus_road, args.repeats)
    rows.append((name, "Quantus noisy_linear_imputation + forward", t_qr, t_rfloor))
    checks.append((f"{name}: vs Quantus's imputation (noise 0)", float((qr - road).abs().max())))


if __name__ == "__main__":
    main()
