"""Benchmark: Blur IG, Guided IG, XRAI and the PIC metric against PAIR's ``saliency`` 0.2, resnet18, CPU.

One 224×224 image, resnet18 with random weights, the top-1 class. PAIR runs as its users run it: its
``call_model_function`` is the same torch model (float32, one ``torch.autograd.grad`` per call), with
``batch_size`` path points per call where it has that option (Blur IG, XRAI's IG). The floor of each path
method is its gradient evaluations alone: the same number of rows through the same model, built beforehand
(stacked in chunks for Blur IG, whose points are known in advance; one row after another for Guided IG,
whose next point depends on the last gradient). Guided IG is also set against IG at the same number of
steps. All variants run in one process, interleaved; the table gives median times and ratios.

    python benchmarks/bench_paths.py                      # the documented setting (~2 minutes here)
    python benchmarks/bench_paths.py --size 64 --blur-steps 8 --guided-steps 8 --xrai-steps 4  # quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved_medians  # noqa: E402

import fxai  # noqa: E402
from fxai.attribution.xrai import xrai_regions, xrai_segments  # noqa: E402
from fxai.metrics.pic import THRESHOLDS, random_pixel_mask, sic  # noqa: E402

import saliency.core as sc  # noqa: E402
from saliency.core import xrai as pair_xrai  # noqa: E402
from saliency.metrics import pic as pair_pic  # noqa: E402

_quantile = np.quantile


def _quantile_numpy2(*args, interpolation=None, **kwargs):  # PAIR's GuidedIG on numpy 2 (DESIGN §7)
    if interpolation is not None:
        kwargs["method"] = interpolation
    return _quantile(*args, **kwargs)


np.quantile = _quantile_numpy2
if not hasattr(np, "trapz"):  # PAIR's PIC on numpy 2.4
    np.trapz = np.trapezoid


def pair_call(model, target):
    def call(batch, call_model_args=None, expected_keys=None):
        t = torch.from_numpy(np.asarray(batch, dtype=np.float32)).permute(0, 3, 1, 2).contiguous().requires_grad_()
        (g,) = torch.autograd.grad(model(t)[:, target].sum(), t)
        return {sc.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}
    return call


def gradient_floor(model, rows: torch.Tensor, target: int, chunk: int):
    """Input gradients of ``rows`` in chunks: plain autograd, nothing else."""
    for a in range(0, rows.shape[0], chunk):
        r = rows[a:a + chunk].clone().requires_grad_()
        torch.autograd.grad(model(r)[:, target].sum(), r)


def report(title, times, floor=None, pair=None):
    print(f"\n{title}")
    for name, t in times.items():
        extra = []
        if floor:
            extra.append(f"{t / times[floor]:.2f}x floor")
        if pair and name != pair:
            extra.append(f"{t / times[pair]:.2f}x PAIR")
        print(f"  {name:<34} {t:8.2f} s   " + "  ".join(extra))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--blur-steps", type=int, default=20, help="PAIR's default is 100")
    ap.add_argument("--guided-steps", type=int, default=32, help="PAIR's default is 200")
    ap.add_argument("--xrai-steps", type=int, default=16, help="IG steps per baseline (PAIR's default is 100)")
    ap.add_argument("--batch-size", type=int, default=8, help="PAIR's batch_size and fxai's chunk_size")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["blur", "guided", "xrai", "pic"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model_fn, params = fxai.functional(model)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    image = x[0].permute(1, 2, 0).numpy()
    with torch.no_grad():
        target = int(model(x).argmax())
    call = pair_call(model, target)
    chunk = args.batch_size
    print(f"resnet18, {args.size}x{args.size}, one image, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), chunk/batch_size {chunk}, repeats {args.repeats}")

    if "blur" not in args.skip:
        s = args.blur_steps
        ours = fxai.blur_ig(model_fn, params, x, target, steps=s, chunk_size=chunk)
        ref = sc.BlurIG().GetMask(image, call, steps=s, batch_size=chunk)
        # PAIR's float32 blurs make its finite difference noisy; its float64 blurs (same float32 model) are
        # the accurate reference both are measured against.
        ref64 = sc.BlurIG().GetMask(image.astype(np.float64), call, steps=s, batch_size=chunk)
        ours_np = ours[0].permute(1, 2, 0).numpy()
        scale = np.abs(ref64).max()
        err = (f"fxai vs PAIR {np.abs(ours_np - ref).max() / scale:.1e}; vs PAIR on float64 blurs: "
               f"fxai {np.abs(ours_np - ref64).max() / scale:.1e}, PAIR {np.abs(ref - ref64).max() / scale:.1e}")
        rows = torch.rand(s, 3, args.size, args.size)
        times = interleaved_medians({
            "floor (gradients of the path rows)": lambda: gradient_floor(model, rows, target, chunk),
            "fxai.blur_ig": lambda: fxai.blur_ig(model_fn, params, x, target, steps=s, chunk_size=chunk),
            "PAIR BlurIG": lambda: sc.BlurIG().GetMask(image, call, steps=s, batch_size=chunk),
        }, args.repeats, warm_up=False)
        report(f"Blur IG, {s} steps, max_sigma 50 (max differences / max |map|: {err})", times,
               "floor (gradients of the path rows)", "PAIR BlurIG")

    if "guided" not in args.skip:
        s = args.guided_steps
        ours = fxai.guided_ig(model_fn, params, x, target, steps=s)
        ref = sc.GuidedIG().GetMask(image, call, x_steps=s)
        err = np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() / np.abs(ref).max()
        rows = torch.rand(s, 3, args.size, args.size)
        times = interleaved_medians({
            "floor (one row after another)": lambda: gradient_floor(model, rows, target, 1),
            "fxai.guided_ig": lambda: fxai.guided_ig(model_fn, params, x, target, steps=s),
            "PAIR GuidedIG": lambda: sc.GuidedIG().GetMask(image, call, x_steps=s),
            "fxai.integrated_gradients, same steps": lambda: fxai.integrated_gradients(
                model_fn, params, x, target, steps=s, chunk_size=chunk),
        }, args.repeats, warm_up=False)
        report(f"Guided IG, {s} steps, fraction 0.25, max_dist 0.02 (max rel. difference to PAIR {err:.1e})",
               times, "floor (one row after another)", "PAIR GuidedIG")

    if "xrai" not in args.skip:
        s = args.xrai_steps
        params_ = sc.XRAIParameters(steps=s)
        ours = fxai.xrai(model_fn, params, x, target, steps=s, chunk_size=chunk)
        rows = torch.rand(2 * s, 3, args.size, args.size)
        segs = xrai_segments(x[0])
        amap = torch.randn(args.size, args.size)
        times = interleaved_medians({
            "floor (IG's gradients, 2 baselines)": lambda: gradient_floor(model, rows, target, chunk),
            "fxai.xrai": lambda: fxai.xrai(model_fn, params, x, target, steps=s, chunk_size=chunk),
            "PAIR XRAI": lambda: sc.XRAI().GetMask(image, call, batch_size=chunk, extra_parameters=params_),
            "fxai segments": lambda: xrai_segments(x[0]),
            "PAIR segments": lambda: pair_xrai._get_segments_felzenszwalb(image),
            "fxai regions (full)": lambda: xrai_regions(amap, segs),
            "PAIR regions (full)": lambda: sc.XRAI._xrai(amap.numpy(), list(segs.numpy())),
        }, args.repeats, warm_up=False)
        report(f"XRAI, IG {s} steps x 2 baselines, {segs.shape[0]} segments (map sum {float(ours.sum()):.3g})",
               times, "floor (IG's gradients, 2 baselines)", "PAIR XRAI")

    if "pic" not in args.skip:
        g = fxai.gradient(model_fn, params, x, target).abs().sum(1)
        mask = random_pixel_mask((args.size, args.size), key=0)
        img8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

        def pred(batch):
            with torch.no_grad():
                return torch.softmax(model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255), -1)[
                    :, target].numpy()

        def pair():
            try:
                return pair_pic.compute_pic_metric(img8, g[0].numpy(), mask.numpy(), pred, THRESHOLDS,
                                                   min_pred_value=0.0)
            except pair_pic.ComputePicMetricError:
                return None

        times = interleaved_medians({
            "fxai.metrics.sic": lambda: sic(model_fn, params, x, target, g, random_mask=mask, chunk_size=chunk),
            "PAIR compute_pic_metric": pair,
        }, args.repeats, warm_up=False)
        report(f"SIC, {len(THRESHOLDS)} thresholds", times, None, "PAIR compute_pic_metric")


if __name__ == "__main__":
    main()
