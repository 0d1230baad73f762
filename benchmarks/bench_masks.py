"""Benchmark: Score-CAM and RISE on resnet18 (random weights), CPU.

Score-CAM at ``layer4`` of one 224×224 image (512 masked inputs) against
pytorch-grad-cam's ``ScoreCAM`` and against the floor: one forward pass over
all masked inputs, built beforehand outside fxai. RISE with 4000 masks against
its floor (one forward over all masked inputs, masks built beforehand). All
implementations run in one process, interleaved, with the same chunk size;
the table gives median times and their ratios to the floor, and the checks
give the largest difference between fxai's and pytorch-grad-cam's maps.

    python benchmarks/bench_masks.py                                # the issue's setting
    python benchmarks/bench_masks.py --size 96 --masks 400 --repeats 2   # a quick run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

import fxai  # noqa: E402
from fxai.attribution.masks import _rise_draw, _rise_masks  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time of each callable over ``repeats`` rounds, after one warm-up round; calls alternate."""
    times = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def chunked_forward(net, rows_of, n: int, chunk: int):
    with torch.no_grad():
        return torch.cat([net(rows_of(a, min(a + chunk, n))) for a in range(0, n, chunk)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--layer", default="layer4", help="Score-CAM layer (layer4: 512 channels, layer3: 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--masks", type=int, default=4000, help="RISE masks")
    ap.add_argument("--cell-size", type=int, default=7)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-rise", action="store_true")
    ap.add_argument("--skip-score-cam", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = net(x).argmax(1)
    cs = args.chunk_size
    rows, checks = [], []

    if not args.skip_score_cam:
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        opts = dict(layer=args.layer, score="logit", channel_softmax=True, align_corners=True, chunk_size=cs)
        store = {}
        handle = net.get_submodule(args.layer).register_forward_hook(lambda m, i, out: store.update(a=out))
        with torch.no_grad():
            net(x)
        handle.remove()
        up = F.interpolate(store["a"], size=x.shape[-2:], mode="bilinear", align_corners=True)
        lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
        masked = (x[:, None] * ((up - lo) / (hi - lo + 1e-8))[:, :, None]).flatten(0, 1)
        n = masked.shape[0]

        def gradcam():
            with ScoreCAM(net, [net.get_submodule(args.layer)]) as cam:
                cam.batch_size = cs
                return cam(x, [ClassifierOutputTarget(int(t)) for t in target])

        times = interleaved({
            "fxai": lambda: fxai.score_cam(model_fn, params, x, target, **opts),
            "pytorch-grad-cam ScoreCAM": gradcam,
            "floor": lambda: chunked_forward(net, lambda a, b: masked[a:b], n, cs),
        }, args.repeats)
        label = f"Score-CAM, {args.layer}, {n} masked inputs"
        rows += [(label, name, t, times["floor"]) for name, t in times.items()]
        ours = fxai.postprocess.normalize(fxai.score_cam(model_fn, params, x, target, **opts), "minmax")
        checks.append(("Score-CAM vs pytorch-grad-cam (min-max maps)",
                       float((ours - torch.from_numpy(gradcam())).abs().max())))
        del masked, up

    if not args.skip_rise:
        grid, shifts, cell = _rise_draw(0, args.masks, args.cell_size, 0.5, x)
        masks = torch.cat([_rise_masks(grid[a:a + cs], shifts[a:a + cs], x.shape[-2:], cell)
                           for a in range(0, args.masks, cs)])
        b = args.batch
        n = args.masks * b

        def rows_of(a, c):
            r = torch.arange(a, c)
            return x[r % b] * masks[r // b][:, None]

        times = interleaved({
            "fxai": lambda: fxai.rise(model_fn, params, x, target, num_masks=args.masks, cell_size=args.cell_size,
                                      key=0, chunk_size=cs),
            "floor": lambda: chunked_forward(net, rows_of, n, cs),
        }, args.repeats)
        label = f"RISE, {args.masks} masks"
        rows += [(label, name, t, times["floor"]) for name, t in times.items()]
        del masks

    print(f"\nresnet18 (random weights), {args.size}×{args.size}, batch {args.batch}, CPU, "
          f"{torch.get_num_threads()} threads, chunk_size={cs}, median of {args.repeats} interleaved runs\n")
    print("| method | implementation | s / image | × floor |")
    print("|---|---|---|---|")
    for method, impl, t, tf in rows:
        print(f"| {method} | {impl} | {t / args.batch:.3f} | {t / tf:.3f} |")
    if checks:
        print("\n| check | max abs difference |\n|---|---|")
        for name, d in checks:
            print(f"| {name} | {d:.2e} |")


if __name__ == "__main__":
    main()
