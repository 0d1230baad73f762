"""Time of Grad-CAM and Eigen-CAM on a detector's boxes (CPU): fxai against pytorch-grad-cam's detection pipeline.

Faster R-CNN (ResNet-50 FPN, random weights, ``min_size``/``max_size`` as given, default 320/480), one image,
its first ``--boxes`` detections as the target, at ``backbone.body.layer4``:

- ``fxai``: ``fxai.grad_cam(model_fn, params, x, fxai.box_target(boxes, labels), layer=...)`` with
  ``model_fn, params = fxai.functional(detector, output=fxai.detections)``;
- ``pytorch-grad-cam``: ``GradCAM(model, [model.backbone.body.layer4])(x, [FasterRCNNBoxScoreTarget(labels,
  boxes)])``, the tutorial's pipeline (the same for ``EigenCAM``);
- ``floor``: one forward of the detector and one ``torch.autograd.grad`` of the box score w.r.t. the layer's
  output (captured by a hook), the least any detection Grad-CAM must do.

Run: ``python benchmarks/bench_detection.py --threads 1 --repeats 3``
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from torchvision.models import detection

import fxai
from timing import interleaved_medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=480)
    parser.add_argument("--boxes", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from pytorch_grad_cam import EigenCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    torch.manual_seed(0)
    model = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=args.min_size,
                                              max_size=args.max_size, box_score_thresh=0.0).eval()
    x = torch.rand(1, 3, args.min_size, args.max_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found = model(x)[0]
    boxes, labels = found["boxes"][:args.boxes], found["labels"][:args.boxes]
    model_fn, params = fxai.functional(model, output=fxai.detections)
    target = fxai.box_target(boxes, labels)
    layer = "backbone.body.layer4"
    pgc_model = copy.deepcopy(model)
    pgc_targets = [FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=boxes)]
    grad = GradCAM(pgc_model, [pgc_model.backbone.body.layer4])
    eigen = EigenCAM(pgc_model, [pgc_model.backbone.body.layer4])
    captured = {}
    hook = model.backbone.body.layer4.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))

    def floor():
        with torch.enable_grad():
            out = model(x.clone())
            return torch.autograd.grad(target(fxai.detections(out)).sum(), captured["a"])[0]

    variants = {
        "fxai grad_cam": lambda: fxai.grad_cam(model_fn, params, x, target, layer=layer),
        "pytorch-grad-cam GradCAM": lambda: grad(input_tensor=x, targets=pgc_targets),
        "floor (forward + backward)": floor,
        "fxai eigen_cam": lambda: fxai.eigen_cam(model_fn, params, x, layer=layer),
        "pytorch-grad-cam EigenCAM": lambda: eigen(input_tensor=x, targets=pgc_targets),
    }
    med = interleaved_medians(variants, args.repeats)
    hook.remove()
    print(f"Faster R-CNN R50-FPN, {args.min_size}x{args.max_size}, {args.boxes} boxes, CPU, {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| variant | median (ms) | ratio to floor |")
    print("|---|---:|---:|")
    base = med["floor (forward + backward)"]
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.0f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
