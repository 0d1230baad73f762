"""Time and peak memory of the gradient family on resnet18 (CPU): fxai eager and compiled, Captum, the floor.

Cases (batch B = 2, 224×224, random weights, eval mode):

- ``ig``: Integrated Gradients, 32 steps (Gauss–Legendre for both libraries);
- ``smoothgrad``: SmoothGrad of the gradient, 32 samples;
- ``k_targets``: the gradient for K = 10 classes per input: one fxai call with a
  ``[B, K]`` target against K Captum ``Saliency`` calls.

The floor of ``ig`` and ``smoothgrad`` is one forward and one input-gradient
backward (``torch.autograd.grad``) over the 64 stacked images, which both
libraries must at least do. Variants run interleaved (variant a, b, c, a, b,
c, ...) in one process; times are medians of ``--repeats`` runs after a warm-up
call (which also compiles; its time is the "first call" column). ``err`` is
``max |map - ref| / max |ref|`` and ``||map - ref|| / ||ref||`` against fxai
eager in float64 (same noise), and ``vs eager`` the same against fxai eager in
float32. In a ReLU network a rounding-size change of the input can cross a
ReLU kink and change a few gradient entries by O(1), so the max measure of
float32 maps can be ~1e-3 even between two correct float32 computations; the
L2 measure shows whether the map as a whole agrees. Compiled variants:
``fxai.compiled(method, model, ...)`` (the whole call compiled by Inductor on a
copy of the model with frozen weights in channels-last layout) and the forward
only (``torch.compile(model_fn)`` passed as ``model_fn``; autograd runs the
compiled backward).

Peak memory: the resident set (RSS) high-water mark during one call, above the
RSS just before it. Linux only: the mark is reset by writing ``5`` to
``/proc/self/clear_refs`` and read from ``VmHWM`` in ``/proc/self/status``;
``malloc_trim(0)`` first returns freed heap pages so that earlier calls do not
hide this one's allocations. It counts every allocation of the call (tensors,
autograd graph, allocator slack), not only tensors.

Run: ``python benchmarks/bench_gradients.py --threads 2 --repeats 5``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time

import warnings

import torch
import torchvision

import fxai


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure(fn) -> tuple[float, int]:
    """Seconds and peak extra RSS (bytes) of one call of ``fn``."""
    _trim()
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, max(_status("VmHWM") - base, 0)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(max |a - ref| / max |ref|, ||a - ref||_2 / ||ref||_2)``."""
    d = a.double() - ref
    return float(d.abs().max() / ref.abs().max()), float(d.norm() / ref.norm())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per variant; the median is reported")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32, help="IG steps and SmoothGrad samples")
    ap.add_argument("--k", type=int, default=10, help="targets per input in the k_targets case")
    ap.add_argument("--cases", default="ig,smoothgrad,k_targets")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled fxai variants")
    args = ap.parse_args(argv)

    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    warnings.filterwarnings("ignore", module="captum")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(model)
    model64_fn, params64 = fxai.functional(torchvision.models.resnet18(weights=None).eval().double())
    params64 = {k: v.double() if v.is_floating_point() else v for k, v in params.items()}
    B, S = args.batch, args.steps
    x = torch.rand(B, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 7] * B)[:B]
    sigma, key = 0.15, 0
    span = float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).max())

    sg = fxai.smoothgrad(fxai.gradient, samples=S, sigma=sigma)
    compiled_fn = torch.compile(model_fn)  # compiling the forward only
    stacked = x.repeat(S, 1, 1, 1)

    def floor():
        xs = stacked.clone().requires_grad_()
        out = model(xs).gather(1, target.repeat(S)[:, None]).sum()
        return torch.autograd.grad(out, xs)[0]

    FLOOR = f"floor (fwd+bwd, {B * S} images)"
    cases = {}
    if "ig" in args.cases:
        ig = lambda x, t: fxai.integrated_gradients(model_fn, params, x, t, steps=S)  # noqa: E731
        cases["ig"] = {
            "ref": lambda: fxai.integrated_gradients(model64_fn, params64, x.double(), target, steps=S),
            "fxai eager": lambda: ig(x, target),
            "fxai compiled": (fxai.compiled(fxai.integrated_gradients, model, steps=S), lambda f: f(x, target)),
            "fxai, compiled forward": lambda: fxai.integrated_gradients(compiled_fn, params, x, target, steps=S),
            "captum": lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=S, method="gausslegendre"),
            "captum, internal_batch_size=8": lambda: IntegratedGradients(model).attribute(
                x, target=target, n_steps=S, method="gausslegendre", internal_batch_size=8),
            FLOOR: floor,
        }
    if "smoothgrad" in args.cases:
        sgx = lambda x, t: sg(model_fn, params, x, t, key=key)  # noqa: E731

        def captum_sg():
            # Captum draws its own noise with an absolute std; sigma * range as fxai (the same range here)
            return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=S,
                                                         stdevs=sigma * span, target=target, abs=False)

        cases["smoothgrad"] = {
            "ref": lambda: sg(model64_fn, params64, x.double(), target, key=key),
            "fxai eager": lambda: sgx(x, target),
            "fxai compiled": (fxai.compiled(sg, model, key=key), lambda f: f(x, target)),
            "fxai, compiled forward": lambda: sg(compiled_fn, params, x, target, key=key),
            "captum": captum_sg,
            "captum, nt_samples_batch_size=4": lambda: NoiseTunnel(Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=S, nt_samples_batch_size=4, stdevs=sigma * span, target=target,
                abs=False),
            FLOOR: floor,
        }
    if "k_targets" in args.cases:
        targets = torch.arange(args.k).expand(B, args.k)
        grad_k = lambda x, t: fxai.gradient(model_fn, params, x, t)  # noqa: E731
        sal = Saliency(model)
        cases["k_targets"] = {
            "ref": lambda: fxai.gradient(model64_fn, params64, x.double(), targets),
            "fxai eager": lambda: grad_k(x, targets),
            "fxai compiled": (fxai.compiled(fxai.gradient, model), lambda f: f(x, targets)),
            "fxai, compiled forward": lambda: fxai.gradient(compiled_fn, params, x, targets),
            "captum": lambda: torch.stack([sal.attribute(x, target=k, abs=False) for k in range(args.k)], 1),
        }

    rows = []
    for case, variants in cases.items():
        ref = variants.pop("ref")()
        if args.no_compile:
            variants = {n: v for n, v in variants.items() if "compiled" not in n}
        calls, errors, compile_s, vs_eager, eager = {}, {}, {}, {}, None
        for name, v in variants.items():
            call = (lambda f=v[0], c=v[1]: c(f)) if isinstance(v, tuple) else v
            t0 = time.perf_counter()
            out = call()  # warm-up (compiles)
            compile_s[name] = time.perf_counter() - t0
            calls[name] = call
            if "floor" not in name and not (case == "smoothgrad" and name.startswith("captum")):  # own noise
                errors[name] = rel_err(out, ref)
                eager = out if name == "fxai eager" else eager
                vs_eager[name] = rel_err(out, eager.double())
        times = {n: [] for n in calls}
        mems = {n: [] for n in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                s, m = measure(call)
                times[name].append(s)
                mems[name].append(m)
        med = {n: statistics.median(t) for n, t in times.items()}
        # Captum as its users tune it for speed and memory (a batch of 8 images per pass) when the case has it
        tuned = next((n for n in med if n.startswith("captum,")), "captum")
        for name in calls:
            rows.append((case, name, med[name], statistics.median(mems[name]) / 2**20,
                         med[name] / med[tuned], med[name] / med.get(FLOOR, float("nan")),
                         errors.get(name), vs_eager.get(name), compile_s[name] if "compiled" in name else None))

    print(f"resnet18, {B}x3x{args.size}x{args.size}, CPU, torch {torch.__version__}, "
          f"{args.threads} threads, median of {args.repeats}; command: python {' '.join(sys.argv)}\n")
    print("Ratios to Captum are to its tuned variant (8 images per pass) where the case has one.\n")
    print("| case | variant | time (s) | peak RSS (MiB) | / Captum | / floor | err vs float64 (max / L2) "
          "| vs eager (max / L2) "
          "| first call (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    def fmt(v, f):
        if isinstance(v, tuple):
            return " / ".join(fmt(u, f) for u in v)
        return "" if v is None or v != v else format(v, f)

    for case, name, t, m, rc, rf, err, ve, c in rows:
        print(f"| {case} | {name} | {t:.3f} | {m:.0f} | {rc:.2f} | {fmt(rf, '.2f')} | {fmt(err, '.1e')} "
              f"| {fmt(ve, '.1e')} | {fmt(c, '.0f')} |")


if __name__ == "__main__":
    main()
