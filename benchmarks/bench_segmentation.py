"""Time of explaining a segmentation model (fcn_resnet50, CPU): fxai against pytorch-grad-cam and the floor.

The target is ``fxai.segmentation_target(c, mask)`` (one mask per input) and, for pytorch-grad-cam,
``SemanticSegmentationTarget(c, mask)`` on its documented wrapper returning ``model(x)["out"]``.

- ``grad_cam``: ``fxai.grad_cam(..., layer="backbone.layer4", upsample=False)`` (the raw layer map);
- ``grad_cam+up``: the same, upsampled to the input size;
- ``pytorch-grad-cam``: ``GradCAM(wrapper, [backbone.layer4])(x, targets)`` (ReLU, min-max, cv2 resize);
- ``cam floor``: the backbone, then the head from a leaf at ``layer4``, and one ``torch.autograd.grad`` of the
  masked score w.r.t. it (split by hand), the least any Grad-CAM must do;
- ``gradient (dict)``: ``fxai.gradient`` on ``fxai.functional(model)``, whose ``output=None`` picks ``"out"``
  from the model's dict in every call;
- ``gradient (tensor)``: the same on the wrapper that returns the tensor (the cost of the picking is the gap);
- ``gradient floor``: one forward and one ``torch.autograd.grad`` w.r.t. the input.

Variants run interleaved in one process (medians of ``--repeats`` after a warm-up). Prints Markdown tables.

Run: ``python benchmarks/bench_segmentation.py --threads 2 --repeats 5``
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
import torchvision

import fxai
from timing import interleaved_medians


class OutOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x)["out"].argmax(1)
    category = int(labels.flatten().mode().values)
    masks = labels == category
    target = fxai.segmentation_target(category, masks)
    model_fn, params = fxai.functional(model)
    tensor_fn, tensor_params = fxai.functional(OutOnly(model))
    pgc_model = OutOnly(copy.deepcopy(model))
    pgc = GradCAM(model=pgc_model, target_layers=[pgc_model.model.backbone.layer4])
    pgc_targets = [SemanticSegmentationTarget(category, m.float().numpy()) for m in masks]
    weights = masks.float()

    def cam_floor():
        a = model.backbone(x)["out"].detach().requires_grad_()
        out = torch.nn.functional.interpolate(model.classifier(a), size=x.shape[-2:], mode="bilinear",
                                              align_corners=False)
        return torch.autograd.grad((out[:, category] * weights).sum(), a)[0]

    def gradient_floor():
        leaf = x.clone().requires_grad_()
        return torch.autograd.grad((model(leaf)["out"][:, category] * weights).sum(), leaf)[0]

    cams = {
        "grad_cam": lambda: fxai.grad_cam(model_fn, params, x, target, layer="backbone.layer4", upsample=False),
        "grad_cam+up": lambda: fxai.grad_cam(model_fn, params, x, target, layer="backbone.layer4"),
        "pytorch-grad-cam": lambda: pgc(input_tensor=x, targets=pgc_targets),
        "cam floor": cam_floor,
        "gradient (dict)": lambda: fxai.gradient(model_fn, params, x, target),
        "gradient (tensor)": lambda: fxai.gradient(tensor_fn, tensor_params, x, target),
        "gradient floor": gradient_floor,
    }
    med = interleaved_medians(cams, args.repeats)
    print(f"fcn_resnet50, segmentation_target, B={args.batch}, {args.size}x{args.size}, CPU, {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| variant | median (ms) | ratio to its floor |")
    print("|---|---:|---:|")
    for name, t in med.items():
        floor = med["gradient floor"] if name.startswith("gradient") else med["cam floor"]
        print(f"| {name} | {1000 * t:.1f} | {t / floor:.2f} |")
    print(f"\ngrad_cam / pytorch-grad-cam = {med['grad_cam+up'] / med['pytorch-grad-cam']:.2f} (both upsampled); "
          f"gradient dict / tensor = {med['gradient (dict)'] / med['gradient (tensor)']:.3f}")
    pgc.activations_and_grads.release()


if __name__ == "__main__":
    main()
