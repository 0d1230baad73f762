"""Evidence that the transformer methods explain: a small ViT trained on the built-in shapes, its maps scored.

The ViT of ``fxai demo --arch vit`` (reused from ``--out/model.pt`` when the demo ran there, else trained here
with the demo's settings) explains ``--count`` held-out images for their true class with attention rollout,
Chefer's gradient-weighted attention, AttnLRP, Grad-CAM at the default ViT layer (the first norm of the last
block), Integrated Gradients and a random map. Scores, as the demo computes them (maps: positive part of the
channel-summed absolute value for pixel maps):

- relevance mass and pointing game against the objects' ground-truth masks (higher is better);
- Chefer et al.'s perturbation protocol on patches (the ViT's 4×4 patches, set to 0): the probability of the
  true class as the most relevant patches are removed first ("positive", lower AUC is better) and as the least
  relevant are removed first ("negative", higher AUC is better), 10 steps from 0 to 100% (the paper records
  top-1 accuracy at 10%...90%; the probability is the per-image version of it).

Run: ``python benchmarks/vit_evidence.py --out fxai-demo-vit`` (after ``fxai demo --arch vit --out fxai-demo-vit``,
whose model it reuses; else it trains the same model first, ~2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

import fxai
from fxai import metrics, postprocess
from fxai._core.discovery import resolve_layers
from fxai.app import demo
from fxai.data.synthetic import shapes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fxai-demo-vit", help="the demo's report folder (its model.pt is reused)")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=demo.VIT_STEPS, help="training steps (the demo's by default)")
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate (the demo's for the ViT by default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    config = dataclasses.replace(demo.FULL, arch="vit", steps=args.steps, lr=args.lr)
    dev = torch.device("cpu")
    model = demo.train(config, seed=args.seed, device=dev, checkpoint=os.path.join(args.out, "model.pt"),
                       progress=False)
    model_fn, params = fxai.functional(model)
    opts = dict(seed=args.seed, size=config.size, classes=config.classes, device=dev)
    test = shapes(1000, start=demo.TEST_START, **opts)
    acc = demo.accuracy(model_fn, params, test.images, test.labels)
    batch = shapes(args.count, start=demo.TEST_START, **opts)
    x, target, masks = batch.images, batch.labels, batch.masks
    layer = resolve_layers(model_fn, None, params=params, x=x)[0]
    size = tuple(x.shape[-2:])
    maps = {
        "attention_rollout": ("cam", fxai.attention_rollout(model_fn, params, x, target)),
        "chefer": ("cam", fxai.chefer(model_fn, params, x, target)),
        "attnlrp": ("pixel", fxai.attnlrp(model_fn, params, x, target)),
        "attnlrp (CP-LRP)": ("pixel", fxai.attnlrp(model_fn, params, x, target, variant="cp")),
        f"grad_cam ({layer})": ("cam", fxai.grad_cam(model_fn, params, x, target, layer=layer)),
        "integrated_gradients (32 steps)": ("pixel", fxai.integrated_gradients(model_fn, params, x, target, steps=32)),
        "random": ("cam", torch.rand(x.shape[0], *size, generator=torch.Generator().manual_seed(args.seed))),
    }
    patch = model.patch_size
    rows = []
    for name, (kind, amap) in maps.items():
        heat = postprocess.heatmap(amap.detach(), kind=kind, reduce="abs_sum", sign="positive", size=size)
        curve = dict(steps=10, patch=patch, imputer=metrics.constant(0.0), softmax=True)
        positive = metrics.auc(metrics.morf(model_fn, params, x, target, heat, **curve)).mean().item()
        negative = metrics.auc(metrics.lerf(model_fn, params, x, target, heat, **curve)).mean().item()
        rows.append((name, metrics.relevance_mass(heat, masks).mean().item(),
                     metrics.pointing_game(heat, masks, tolerance=0).float().mean().item(), positive, negative))

    print(f"small ViT ({sum(p.numel() for p in model.parameters())} parameters, {config.steps} steps), test accuracy "
          f"{acc:.3f}; {args.count} held-out images, true class; command: python {' '.join(sys.argv)}\n")
    print("| method | relevance mass ↑ | pointing game ↑ | positive perturbation AUC ↓ | negative perturbation AUC ↑ |")
    print("|---|---:|---:|---:|---:|")
    for name, mass, point, pos, neg in rows:
        print(f"| {name} | {mass:.3f} | {point:.3f} | {pos:.3f} | {neg:.3f} |")


if __name__ == "__main__":
    main()
