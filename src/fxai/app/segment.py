"""``fxai explain`` on a torchvision segmentation model (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``): a category's
logits summed over the pixels the model assigns to it (:func:`fxai.segmentation_target`), explained by any method."""

from __future__ import annotations

import os
import re

import torch
import torchvision

from .loading import UsageError


def is_segmenter(name: str) -> bool:
    """Whether ``name`` is a torchvision segmentation model."""
    return name in torchvision.models.list_models(module=torchvision.models.segmentation)


def default_layer(module) -> str:
    """The backbone's last block (``backbone.layer4`` for the ResNet ones, the last feature block for MobileNet)."""
    names = dict(module.named_modules())
    if "backbone.layer4" in names:
        return "backbone.layer4"
    return f"backbone.{list(names['backbone'].named_children())[-1][0]}"


def categories_of(mode: str, value: int, pred: torch.Tensor, classes: int) -> list[int]:
    """The categories to explain: ``index`` as given; ``topK``: the K categories covering the most pixels
    (the background, 0, only when nothing else is predicted)."""
    if mode == "index":
        if value >= classes:
            raise UsageError(f"--target {value} is out of range: the model has {classes} categories")
        return [value]
    counts = torch.bincount(pred.flatten(), minlength=classes)
    if counts[1:].sum() > 0:
        counts[0] = -1
    return [int(c) for c in counts.argsort(descending=True)[:value] if counts[c] != 0]


def explain_segmenter(args, methods, settings, mode: str, value: int) -> int:
    """The ``explain`` command for a segmentation model named by ``args.model`` (see :mod:`fxai.app.cli`)."""
    from .. import functional, postprocess, registry, segmentation_target, viz
    from .cli_methods import accepted
    from .loading import load_images, resolve_device, torchvision_task_model

    device = resolve_device(args.device)
    module, names = torchvision_task_model(args.model, args.weights, device)
    model_fn, params = functional(module)  # picks the "out" logits
    layer = args.layer or default_layer(module)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(-1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(-1, 1, 1)
    resize = (tuple(args.resize), None) if args.resize else None
    os.makedirs(args.out, exist_ok=True)
    written, used = 0, set()
    for path, raw in load_images(args.images, 3, resize is None, resize):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "image"
        while stem in used:
            stem += "_"
        used.add(stem)
        x = ((raw.to(device) - mean) / std)[None]
        with torch.no_grad():
            logits = model_fn(params, x)
        pred = logits.argmax(1)[0]
        for c in categories_of(mode, value, pred, logits.shape[1]):
            label = names[c] if c < len(names) else f"category {c}"
            mask = pred == c
            print(f"{path}: {label}, {int(mask.sum())} of {mask.numel()} pixels")
            target = segmentation_target(c, mask)
            for info in methods:
                try:
                    options = registry.options(info, size=x.shape[-2:], layer=layer, key=args.seed,
                                               references=torch.zeros_like(x), chunk_size=args.chunk_size)
                    options.update({k: v for k, v in settings.items() if k in accepted(info)})
                    amap = info.fn(model_fn, params, x, target, **options).detach()
                except (ValueError, TypeError, LookupError) as err:
                    raise UsageError(f"{info.name}: {' '.join(str(err).split())}") from None
                sign = args.sign if info.kind == "pixel" else "positive"
                heat = postprocess.heatmap(amap, kind=info.kind, reduce="abs_sum" if sign == "absolute" else "sum",
                                           size=x.shape[-2:])[0].cpu()
                torch.save(amap[0].cpu(), os.path.join(args.out, f"{stem}_{info.name}_c{c}.pt"))
                fig = viz.explanation(raw, heat, title=f"{info.name} · {label} (predicted mask)\n"
                                      f"{os.path.basename(path)}", sign=sign,
                                      origin=viz.origin_for(info.kind, info.family))
                viz.save(fig, os.path.join(args.out, f"{stem}_{info.name}_c{c}.png"))
                written += 1
    print(f"wrote {written} pictures and their raw maps (.pt) to {args.out}")
    return 0
