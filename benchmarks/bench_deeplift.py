"""Time and peak memory of DeepLIFT and DeepLiftShap on resnet18 (CPU): fxai, Captum, the floor.

Cases (batch B = 2, 224×224, random weights, eval mode, Rescale rule):

- ``deeplift``: DeepLIFT from a zero baseline;
- ``deeplift_shap``: DeepLiftShap over R = 10 references (every input against every reference).

Captum's hooks refuse torchvision's ResNet (each block calls its one ``nn.ReLU``
twice), so Captum runs on a copy whose blocks have a second ``nn.ReLU`` for the
second call, the change a Captum user has to make; its DeepLiftShap maps still
differ from fxai's, where its max-pool rule is incomplete (see docs/deeplift.md).

The floor is one forward and one input-gradient backward (``torch.autograd.grad``)
over the rows the method explains (B for DeepLIFT, R·B for DeepLiftShap): the
gradient of the same batch, which any rule-based backward must at least do.
DeepLIFT adds the reference pass (one row for a shared baseline, R rows for
DeepLiftShap). Captum runs inputs and references as one batch of twice the rows.
Variants run interleaved (a, b, c, a, b, c, ...) in one process; times are
medians of ``--repeats`` runs after a warm-up call. ``err vs float64`` is
``max |map - ref| / max |ref|`` and ``||map - ref|| / ||ref||`` against fxai in
float64; ``completeness`` is ``max |sum(map) - (f(x) - f(x'))| / max |f(x) - f(x')|``
(for DeepLiftShap against the mean over the references). Peak memory as in
``bench_gradients.py``.

Run: ``python benchmarks/bench_deeplift.py --threads 2 --repeats 3``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import types
import warnings

import torch
import torchvision
from bench_gradients import measure, rel_err
from torch import nn

import fxai


def _block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out += identity
    return self.relu_out(out)


def captum_ready(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet whose blocks call a distinct ``nn.ReLU`` for their output."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torchvision.models.resnet.BasicBlock):
            m.relu_out = nn.ReLU(inplace=True)
            m.forward = types.MethodType(_block_forward, m)
    return model


def completeness(model_fn, params, amap, x, refs, target):
    with torch.no_grad():
        fx = model_fn(params, x).gather(1, target[:, None])[:, 0].double()
        fr = model_fn(params, refs).double()[:, target].mean(0)
    change = fx - fr
    return float((amap.double().flatten(1).sum(1) - change).abs().max() / change.abs().max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--references", type=int, default=10, help="references for DeepLiftShap")
    ap.add_argument("--cases", default="deeplift,deeplift_shap")
    args = ap.parse_args(argv)

    from captum.attr import DeepLift, DeepLiftShap

    warnings.filterwarnings("ignore", module="captum")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    theirs = captum_ready(model)
    model_fn, params = fxai.functional(model)
    model64_fn, params64 = fxai.functional(copy.deepcopy(model).double())
    B, R, S = args.batch, args.references, args.size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 3, S, S, generator=g)
    refs = torch.rand(R, 3, S, S, generator=g) * 0.5
    zero = torch.zeros(1, 3, S, S)
    target = torch.tensor([3, 7] * B)[:B]

    def floor(rows, t):
        def run():
            xs = rows.clone().requires_grad_()
            out = model(xs).gather(1, t[:, None]).sum()
            return torch.autograd.grad(out, xs)[0]
        return run

    cases = {}
    if "deeplift" in args.cases.split(","):
        cases["deeplift"] = (zero, {
            "ref": lambda: fxai.deeplift(model64_fn, params64, x.double(), target),
            "fxai": lambda: fxai.deeplift(model_fn, params, x, target),
            "captum": lambda: DeepLift(theirs).attribute(x, torch.zeros_like(x), target=target),
            f"floor (fwd+bwd, {B} images)": floor(x, target),
        })
    if "deeplift_shap" in args.cases.split(","):
        cases["deeplift_shap"] = (refs, {
            "ref": lambda: fxai.deeplift_shap(model64_fn, params64, x.double(), target, references=refs.double()),
            "fxai": lambda: fxai.deeplift_shap(model_fn, params, x, target, references=refs),
            "fxai, chunk_size=8": lambda: fxai.deeplift_shap(model_fn, params, x, target, references=refs,
                                                             chunk_size=8),
            "captum": lambda: DeepLiftShap(theirs).attribute(x, refs, target=target),
            f"floor (fwd+bwd, {R * B} images)": floor(x.repeat(R, 1, 1, 1), target.repeat(R)),
        })

    rows = []
    for case, (case_refs, variants) in cases.items():
        ref = variants.pop("ref")()
        errors, complete = {}, {}
        for name, call in variants.items():
            out = call()  # warm-up
            if "floor" not in name:
                errors[name] = rel_err(out, ref)
                complete[name] = completeness(model_fn, params, out, x, case_refs, target)
        times = {n: [] for n in variants}
        mems = {n: [] for n in variants}
        for _ in range(args.repeats):
            for name, call in variants.items():
                s, m = measure(call)
                times[name].append(s)
                mems[name].append(m)
        med = {n: statistics.median(t) for n, t in times.items()}
        floor_name = next(n for n in variants if "floor" in n)
        for name in variants:
            rows.append((case, name, med[name], statistics.median(mems[name]) / 2**20, med[name] / med["captum"],
                         med[name] / med[floor_name], errors.get(name), complete.get(name)))

    print(f"resnet18, {B}x3x{S}x{S}, CPU, torch {torch.__version__}, {args.threads} threads, "
          f"median of {args.repeats}; command: python {' '.join(sys.argv)}\n")
    print("| case | variant | time (s) | peak RSS (MiB) | / Captum | / floor | err vs float64 (max / L2) "
          "| completeness |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case, name, t, m, rc, rf, err, comp in rows:
        e = "" if err is None else f"{err[0]:.1e} / {err[1]:.1e}"
        c = "" if comp is None else f"{comp:.1e}"
        print(f"| {case} | {name} | {t:.3f} | {m:.0f} | {rc:.2f} | {rf:.2f} | {e} | {c} |")


if __name__ == "__main__":
    main()
