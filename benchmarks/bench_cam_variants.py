"""Time of the later CAMs on resnet18 (CPU, batch 2): fxai against its oracle (pytorch-grad-cam or TorchCAM).

Each row runs the fxai method and the oracle on the same model, input, layer and targets, interleaved in one
process (medians of ``--repeats`` runs after a warm-up); ``ratio`` is fxai's time over the oracle's. For the
masked CAMs (Score-CAM, SS-CAM, IS-CAM) the last column is fxai's time over the floor of their masked forwards:
one plain forward of the ``B·C·N`` masked inputs, stacked as fxai stacks them (chunks of 64 rows).

- gradient CAMs at ``layer4`` on 224×224: ``GradCAMElementWise``, ``ShapleyCAM``, ``KPCA_CAM``,
  ``SegEigenCAM``, ``FinerCAM``, ``RefineCAM`` (layer3 + layer4);
- masked CAMs at ``layer4`` (512 channels) on 64×64 inputs: TorchCAM's ``ScoreCAM``, ``SSCAM`` (N=2) and
  ``ISCAM`` (N=2), batch size 64 (fxai ``chunk_size=64``).

Run: ``python benchmarks/bench_cam_variants.py --threads 2 --repeats 3``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import warnings

import torch
import torchvision

import fxai
from timing import interleaved_medians


def _pgc(cls, model, layers, **init):
    m = copy.deepcopy(model)
    return cls(m, [m.get_submodule(n) for n in layers], **init)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam import methods as tcm
    import logging
    logging.disable(logging.WARNING)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 7])
    targets = [ClassifierOutputTarget(int(c)) for c in t]

    rows = []
    gradient = [
        ("grad_cam_element_wise", fxai.grad_cam_element_wise, pgc.GradCAMElementWise, ["layer4"], {}),
        ("shapley_cam", fxai.shapley_cam, pgc.ShapleyCAM, ["layer4"], {}),
        ("kpca_cam", fxai.kpca_cam, pgc.KPCA_CAM, ["layer4"], {}),
        ("seg_eigen_cam", fxai.seg_eigen_cam, pgc.SegEigenCAM, ["layer4"], {}),
        ("refine_cam", fxai.refine_cam, pgc.RefineCAM, ["layer3", "layer4"], {}),
    ]
    for name, fn, cls, layers, kw in gradient:
        oracle = _pgc(cls, model, layers)
        layer = layers[0] if len(layers) == 1 else layers
        med = interleaved_medians({
            "fxai": lambda fn=fn, layer=layer: fn(model_fn, params, x, t, layer=layer, **kw),
            "oracle": lambda oracle=oracle: oracle(input_tensor=x, targets=targets),
        }, args.repeats)
        rows.append((name, f"pytorch-grad-cam {cls.__name__}", med["fxai"], med["oracle"], None))
    finer = _pgc(pgc.FinerCAM, model, ["layer4"])
    med = interleaved_medians({
        "fxai": lambda: fxai.finer_cam(model_fn, params, x, None, layer="layer4"),
        "oracle": lambda: finer(x, targets=None),
    }, args.repeats)
    rows.append(("finer_cam", "pytorch-grad-cam FinerCAM", med["fxai"], med["oracle"], None))

    small = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    trunk = torch.nn.Sequential(*list(model.children())[:-2])

    def floor(samples):
        with torch.no_grad():
            act = trunk(small)
            masks = torch.nn.functional.interpolate(act.flatten(0, 1)[:, None], (64, 64), mode="bilinear")
            rows_ = (small.repeat(512, 1, 1, 1) * masks).repeat(samples, 1, 1, 1)
            return [model(rows_[i:i + 64]) for i in range(0, rows_.shape[0], 64)]

    masked = [
        ("score_cam", lambda: fxai.score_cam(model_fn, params, small, t, layer="layer4", score="logit",
                                             channel_softmax=True, mask_norm="layer", chunk_size=64),
         tcm.ScoreCAM, {}, 1),
        ("ss_cam", lambda: fxai.ss_cam(model_fn, params, small, t, layer="layer4", samples=2, mask_norm="layer",
                                       key=0, chunk_size=64), tcm.SSCAM, {"num_samples": 2}, 2),
        ("is_cam", lambda: fxai.is_cam(model_fn, params, small, t, layer="layer4", samples=2, mask_norm="layer",
                                       chunk_size=64), tcm.ISCAM, {"num_samples": 2}, 2),
    ]
    for name, ours, cls, init, samples in masked:
        m = copy.deepcopy(model)
        extractor = cls(m, "layer4", batch_size=64, input_shape=(3, 64, 64), **init)

        def oracle(m=m, extractor=extractor):
            with torch.no_grad():
                m(small)
            return extractor(class_idx=[3, 7])

        med = interleaved_medians({"fxai": ours, "oracle": oracle, "floor": lambda s=samples: floor(s)}, args.repeats)
        rows.append((name, f"TorchCAM {cls.__name__}", med["fxai"], med["oracle"], med["floor"]))
        with contextlib.suppress(Exception):
            extractor.remove_hooks()

    print(f"resnet18, B=2, CPU, {args.threads} threads, median of {args.repeats}\n")
    print("| method | oracle | fxai (ms) | oracle (ms) | fxai / oracle | fxai / floor |")
    print("|---|---|---:|---:|---:|---:|")
    for name, oracle, ours, theirs, fl in rows:
        floor_ratio = "" if fl is None else f"{ours / fl:.2f}"
        print(f"| `{name}` | {oracle} | {1000 * ours:.0f} | {1000 * theirs:.0f} | {ours / theirs:.2f} "
              f"| {floor_ratio} |")


if __name__ == "__main__":
    main()
