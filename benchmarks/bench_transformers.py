"""Time and peak memory of the transformer methods on a ViT (CPU): rollout, Chefer, AttnLRP, LXT and the floors.

Models have random weights (eval mode), a batch of ``--batch`` images at 224², one target per image.

- ``attention_rollout`` against one forward pass (its floor: the attention is read from that pass);
- ``chefer`` against one forward and one input-gradient backward (``torch.autograd.grad``);
- ``attnlrp`` (uniform rule) against the same floor and against LXT 2.1: its efficient rules
  (``lxt/efficient/rules.py``: identity rule on GELU, LayerNorm with the std detached, the gradient to ``q, k``
  divided by 4 and to ``v`` by 2) applied to a copy of the model the way LXT's patches apply them, relevance =
  input × gradient; ``vs LXT`` is ``max |fxai - LXT| / max |LXT|`` (float32).

Variants run interleaved in one process; times are medians of ``--repeats`` runs after a warm-up call. Peak
memory: resident memory above the RSS before one call (``VmHWM`` after resetting it, as ``bench_gradients.py``).

Run: ``python benchmarks/bench_transformers.py --threads 1 --repeats 3``
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gradients import measure  # noqa: E402
from timing import interleaved_medians  # noqa: E402

import fxai  # noqa: E402


def lxt_rules():
    path = importlib.util.find_spec("lxt").submodule_search_locations[0] + "/efficient/rules.py"
    spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lxt_patched(model):
    """A copy of ``model`` (timm or torchvision ViT) with LXT's AttnLRP rules (uniform rule in attention)."""
    lxt = lxt_rules()
    model = copy.deepcopy(model)

    def layer_norm(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        std = (((x - mean) ** 2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        return (x - mean) / lxt.stop_gradient(std) * self.weight + self.bias

    def split(q, k, v):
        return lxt.divide_gradient(q, 4), lxt.divide_gradient(k, 4), lxt.divide_gradient(v, 2)

    def attend(self, x, attn_mask=None, **_):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(*split(q, k, v)).transpose(1, 2).reshape(b, n, c))

    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.forward = types.MethodType(layer_norm, m)
        elif isinstance(m, nn.GELU):
            m.forward = (lambda orig: lambda x: lxt.identity_rule_implicit(orig, x))(m.forward)
        elif isinstance(m, nn.MultiheadAttention):
            m.forward = (lambda orig: lambda q, k, v, *a, **kw: orig(*split(q, k, v), *a, **kw))(m.forward)
        elif type(m).__name__ == "Attention" and hasattr(m, "qkv"):
            m.forward = types.MethodType(attend, m)
    return model


def build(name):
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm
        return timm.create_model(name[5:], num_classes=1000).eval()
    import torchvision
    model = getattr(torchvision.models, name)().eval()
    nn.init.normal_(model.heads.head.weight, 0, 0.02)  # torchvision starts the head at zero
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--models", default="timm:vit_small_patch16_224")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 7] * args.batch)[:args.batch]
    rows = []
    for name in args.models.split(","):
        model = build(name)
        model_fn, params = fxai.functional(model)
        lxt_model = lxt_patched(model)

        def forward():
            with torch.no_grad():
                return model(x)

        def floor():
            xs = x.clone().requires_grad_()
            return torch.autograd.grad(model(xs).gather(1, target[:, None]).sum(), xs)[0]

        def lxt():
            xs = x.clone().requires_grad_()
            return xs.detach() * torch.autograd.grad(lxt_model(xs).gather(1, target[:, None]).sum(), xs)[0]

        variants = {
            "forward": forward,
            "forward+backward": floor,
            "attention_rollout": lambda: fxai.attention_rollout(model_fn, params, x, target),
            "chefer": lambda: fxai.chefer(model_fn, params, x, target),
            "attnlrp": lambda: fxai.attnlrp(model_fn, params, x, target),
            "LXT (uniform)": lxt,
        }
        outs = {n: v() for n, v in variants.items()}  # warm-up
        err = float((outs["attnlrp"] - outs["LXT (uniform)"]).abs().max() / outs["LXT (uniform)"].abs().max())
        med = interleaved_medians(variants, args.repeats, warm_up=False)
        peaks = {n: measure(v)[1] for n, v in variants.items()}
        for n in variants:
            rows.append((name, n, med[n], med[n] / med["forward"], med[n] / med["forward+backward"],
                         med[n] / med["LXT (uniform)"], peaks[n] / 2 ** 20, err if n == "attnlrp" else None))

    print(f"{args.batch}x3x224x224, CPU, torch {torch.__version__}, {args.threads} threads, median of "
          f"{args.repeats}; command: python {' '.join(sys.argv)}\n")
    print("| model | variant | time (s) | / forward | / fwd+bwd | / LXT | peak extra RSS (MiB) | vs LXT (max rel) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, n, t, rf, rb, rl, mem, e in rows:
        print(f"| {model} | {n} | {t:.3f} | {rf:.2f} | {rb:.2f} | {rl:.2f} | {mem:.0f} | "
              f"{'' if e is None else f'{e:.1e}'} |")


if __name__ == "__main__":
    main()
