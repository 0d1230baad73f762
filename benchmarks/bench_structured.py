"""The cost of structured inputs: IG on a two-input model, fxai (a tuple with a fixed leaf) against Captum
(``additional_forward_args``) and against the same fxai call on one tensor with the extra input closed over.

The model is torchvision's resnet18 (random weights, eval mode) whose pooled features are scaled per sample by
a conditioning vector ``[B, 512]`` (FiLM-style) before the classifier: the image is attributed, the vector
rides along with its rows through the 32 path steps. The closure variant is the floor of what packing and
riding can cost: the same method on the image alone, the vector repeated by hand for the stacked rows. Both
libraries use 32 Gauss–Legendre steps; Captum with ``internal_batch_size=8`` (its users' setting on the CPU),
fxai with its default chunking (8 images per pass at 224×224), rounded to an even number of rows for
both fxai variants (the closure pairs rows with the batch by position). Medians of interleaved runs after a warm-up.

Run: ``python benchmarks/bench_structured.py --threads 2 --repeats 5``
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

import fxai
from fxai._core.batching import auto_chunk
from timing import interleaved_medians


class Conditioned(nn.Module):
    def __init__(self):
        super().__init__()
        net = torchvision.models.resnet18()
        self.features = nn.Sequential(*list(net.children())[:-1])
        self.fc = net.fc

    def forward(self, image, condition):
        return self.fc(self.features(image).flatten(1) * condition)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    module = Conditioned().eval()
    model_fn, params = fxai.functional(module)
    image = torch.rand(2, 3, args.size, args.size)
    condition = torch.rand(2, 512) + 0.5
    target = torch.tensor([3, 7])

    def closed(p, rows):
        return model_fn(p, (rows, condition.repeat(rows.shape[0] // 2, 1)))

    ig = IntegratedGradients(module)
    chunk = max(2, auto_chunk(None, image) // 2 * 2)  # fxai's default, even so that the closure's rows align
    variants = {
        "fxai (image, fixed(condition))": lambda: fxai.integrated_gradients(
            model_fn, params, (image, fxai.fixed(condition)), target, steps=32, chunk_size=chunk),
        "fxai, condition closed over": lambda: fxai.integrated_gradients(closed, params, image, target, steps=32,
                                                                         chunk_size=chunk),
        "Captum additional_forward_args": lambda: ig.attribute(image, target=target, n_steps=32,
                                                               additional_forward_args=(condition,),
                                                               internal_batch_size=8),
    }
    ours = variants["fxai (image, fixed(condition))"]()[0]
    theirs = variants["Captum additional_forward_args"]()
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    times = interleaved_medians(variants, args.repeats)
    floor = times["fxai, condition closed over"]
    print(f"resnet18 + conditioning, B=2, {args.size}², IG 32 steps, {args.threads} threads; "
          f"fxai vs Captum max rel diff {err:.1e}")
    for name, t in times.items():
        print(f"  {name:34s} {t:7.3f} s  {t / floor:5.2f}× closure")


if __name__ == "__main__":
    main()
