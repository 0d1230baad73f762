"""Time of Grad-CAM on resnet18 (CPU, 224×224, batch 2): fxai against Captum, pytorch-grad-cam and the floor.

- ``fxai``: ``fxai.grad_cam(..., layer="layer4", upsample=False)`` (raw layer map, like Captum);
- ``fxai+up``: the same, upsampled bilinearly to 224×224;
- ``captum``: ``LayerGradCam(model, model.layer4).attribute(x, target)``;
- ``pytorch-grad-cam``: ``GradCAM(model, [model.layer4])(x, targets)`` (adds ReLU, min-max, cv2 resize);
- ``floor``: one forward and one ``torch.autograd.grad`` of the target scores w.r.t. the layer4 output
  (split at layer4 by hand), the least any Grad-CAM must do.

Variants run interleaved in one process; times are medians of ``--repeats`` runs after a warm-up;
``ratio`` is the median time over the floor's. Prints a Markdown table.

Run: ``python benchmarks/bench_cam.py --threads 2 --repeats 5``
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
import torchvision

import fxai
from timing import interleaved_medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 7])
    model_fn, params = fxai.functional(model)
    captum = LayerGradCam(copy.deepcopy(model), None)
    captum.layer = captum.forward_func.layer4
    pgc_model = copy.deepcopy(model)
    pgc = GradCAM(model=pgc_model, target_layers=[pgc_model.layer4])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in target]
    trunk = torch.nn.Sequential(*list(model.children())[:-2])

    def floor():
        a = trunk(x).detach().requires_grad_()
        logits = model.fc(torch.flatten(model.avgpool(a), 1))
        return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)[0]

    variants = {
        "fxai": lambda: fxai.grad_cam(model_fn, params, x, target, layer="layer4", upsample=False),
        "fxai+up": lambda: fxai.grad_cam(model_fn, params, x, target, layer="layer4"),
        "captum": lambda: captum.attribute(x, target),
        "pytorch-grad-cam": lambda: pgc(input_tensor=x, targets=pgc_targets),
        "floor": floor,
    }
    med = interleaved_medians(variants, args.repeats)
    print(f"Grad-CAM, resnet18, B=2, {args.size}x{args.size}, CPU, {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| variant | median (ms) | ratio to floor |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.1f} | {t / med['floor']:.2f} |")
    print(f"\nfxai / captum = {med['fxai'] / med['captum']:.2f}")
    pgc.activations_and_grads.release()


if __name__ == "__main__":
    main()
