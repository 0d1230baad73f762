"""Time of LRP (EpsilonPlusFlat) on resnet18 and vgg16 (CPU): fxai, Zennit, Captum and the compute floor.

Models have random weights (eval mode), a batch of ``--batch`` images at ``--size``², one target per image.

- ``fxai``: ``fxai.lrp(..., composite="epsilon_plus_flat")``, BatchNorm folded on every call;
- ``fxai, params folded once``: the same with ``fxai.fold_batchnorm`` applied beforehand and ``canonizers=()``;
- ``zennit``: ``EpsilonPlusFlat`` with Zennit's torchvision canonizer (``ResNetCanonizer``; none for vgg16,
  which has no BatchNorm), relevance started at the target score;
- ``captum``: ``captum.attr.LRP`` with z⁺ (``Alpha1_Beta0_Rule``) on every convolution and ε on dense layers,
  the closest Captum gets (it has no flat rule, no rule for residual additions and reads BatchNorm as ε);
  its map differs on purpose, so only its time is compared;
- floor: one forward and one input-gradient backward (``torch.autograd.grad``), what any backward-rule
  method must at least do.

Variants run interleaved in one process; times are medians of ``--repeats`` runs after a warm-up call.
``vs zennit`` is ``max |fxai - zennit| / max |zennit|``.

Run: ``python benchmarks/bench_lrp.py --threads 2 --repeats 3``
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch
import torch.nn.functional as F
import torchvision

import fxai
from timing import interleaved_medians


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--models", default="resnet18,vgg16")
    args = ap.parse_args(argv)

    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 7] * args.batch)[:args.batch]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        model_fn, params = fxai.functional(model)
        folded = fxai.fold_batchnorm(model_fn, params, x)
        captum_model = getattr(torchvision.models, name)().eval()
        captum_model.load_state_dict(model.state_dict())
        for m in captum_model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.rule = Alpha1_Beta0_Rule()
            elif isinstance(m, torch.nn.Linear):
                m.rule = EpsilonRule(epsilon=1e-6)
        captum = LRP(captum_model)
        canonizers = [ResNetCanonizer()] if name.startswith("resnet") else []

        def zennit():
            with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=canonizers)) as attributor:
                return attributor(x, lambda out: F.one_hot(target, out.shape[1]).to(out) * out)[1]

        def floor():
            xs = x.clone().requires_grad_()
            return torch.autograd.grad(model(xs).gather(1, target[:, None]).sum(), xs)[0]

        variants = {
            "fxai": lambda: fxai.lrp(model_fn, params, x, target),
            "fxai, params folded once": lambda: fxai.lrp(model_fn, folded, x, target, canonizers=()),
            "zennit": zennit,
            "captum": lambda: captum.attribute(x, target=target),
            "floor (fwd+bwd)": floor,
        }
        outs = {n: v() for n, v in variants.items()}  # warm-up
        ref = outs["zennit"]
        err = {n: float((outs[n] - ref).abs().max() / ref.abs().max()) for n in ("fxai", "fxai, params folded once")}
        med = interleaved_medians(variants, args.repeats, warm_up=False)  # the outputs above were the warm-up
        for n in variants:
            rows.append((name, n, med[n], med[n] / med["zennit"], med[n] / med["captum"],
                         med[n] / med["floor (fwd+bwd)"], err.get(n)))

    print(f"{args.batch}x3x{args.size}x{args.size}, CPU, torch {torch.__version__}, {args.threads} threads, "
          f"median of {args.repeats}; command: python {' '.join(sys.argv)}\n")
    print("| model | variant | time (s) | / Zennit | / Captum | / floor | vs zennit (max rel) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model, n, t, rz, rc, rf, e in rows:
        print(f"| {model} | {n} | {t:.3f} | {rz:.2f} | {rc:.2f} | {rf:.2f} | {'' if e is None else f'{e:.1e}'} |")


if __name__ == "__main__":
    main()
