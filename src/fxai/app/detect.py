"""``fxai explain`` on a torchvision detector: every detected box explained by the CAMs, one figure per image and
method with each box's map (the box targets of :func:`fxai.box_target`)."""

from __future__ import annotations

import os
import re

import torch
import torchvision

from .loading import UsageError

DEFAULT_DETECTION_METHODS = ("grad_cam", "eigen_cam")
MAX_BOXES = 8


def is_detector(name: str) -> bool:
    """Whether ``name`` is a torchvision detection model (``fasterrcnn_resnet50_fpn``, ``retinanet_*``, ...)."""
    return name in torchvision.models.list_models(module=torchvision.models.detection)


def default_layer(module) -> str:
    """The last block of the detector's backbone trunk (``backbone.body.layer4`` for the ResNet-FPN ones)."""
    names = dict(module.named_modules())
    for trunk in ("backbone.body", "backbone.features"):
        if trunk in names:
            last = list(names[trunk].named_children())[-1][0]
            return f"{trunk}.{last}"
    raise UsageError("cannot find the detector's backbone; name a layer with --layer")


def explain_detector(args, methods, settings, default_methods: bool) -> int:
    """The ``explain`` command for a detector named by ``args.model`` (see :mod:`fxai.app.cli`)."""
    from .. import box_target, detections, functional, registry, viz
    from .loading import load_images, resolve_device, torchvision_task_model

    if default_methods:
        methods = [registry.method(n) for n in DEFAULT_DETECTION_METHODS]
    wrong = [m.name for m in methods if m.kind != "cam" or not m.layered]
    if wrong:
        raise UsageError(f"a detector is explained by layer CAMs (e.g. grad_cam, eigen_cam); not by {', '.join(wrong)}")
    threshold = float(settings.pop("box_threshold", 0.5))
    device = resolve_device(args.device)
    module, categories = torchvision_task_model(args.model, args.weights, device)
    model_fn, params = functional(module, output=detections)
    layer = args.layer or default_layer(module)
    os.makedirs(args.out, exist_ok=True)
    images = load_images(args.images, 3, True, None)  # detectors resize and normalise their inputs themselves
    written, used = 0, set()
    for path, raw in images:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"
        while stem in used:
            stem += "_"
        used.add(stem)
        x = raw.to(device)[None]
        with torch.no_grad():
            found = module(x.clone())[0]
        keep = (found["scores"] >= threshold).nonzero().flatten()[:MAX_BOXES]
        boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
        names = [f"{categories[int(c)] if int(c) < len(categories) else f'class {int(c)}'} {float(s):.2f}"
                 for c, s in zip(labels, scores)]
        print(f"{path}: {len(boxes)} boxes with score >= {threshold:g}" + (": " + ", ".join(names) if names else ""))
        for info in methods:
            options = registry.options(info, size=x.shape[-2:], layer=layer, key=args.seed, chunk_size=args.chunk_size)
            options.update({k: v for k, v in settings.items() if k in info.parameters})
            try:
                maps = torch.stack([info.fn(model_fn, params, x, box_target(boxes[k:k + 1], labels[k:k + 1]),
                                            **options)[0].detach() for k in range(len(boxes))]) if len(boxes) else \
                    torch.zeros(0, *x.shape[-2:])
            except (ValueError, TypeError) as err:
                raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
            torch.save({"boxes": boxes.cpu(), "labels": labels.cpu(), "scores": scores.cpu(), "maps": maps.cpu()},
                       os.path.join(args.out, f"{stem}_{info.name}.pt"))
            fig = viz.detection(raw, maps.cpu(), boxes.cpu(), names, title=f"{info.name} · {os.path.basename(path)}")
            viz.save(fig, os.path.join(args.out, f"{stem}_{info.name}.png"))
            written += 1
    print(f"wrote {written} figures (one per image and method, each box's map) and their maps (.pt) to {args.out}")
    return 0
