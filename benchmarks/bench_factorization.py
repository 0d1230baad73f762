"""Deep Feature Factorization on resnet18 (CPU, 224×224, batch 8, 4 concepts): fxai against pytorch-grad-cam.

- ``fxai``: ``fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=4, head="auto",
  key=0)`` (maps upsampled to 224×224, concepts named by ``fc``);
- ``pytorch-grad-cam``: ``DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
  (x, n_components=4)`` (scikit-learn's ``NMF(init="random", random_state=0)`` in numpy, maps
  min-max scaled and resized with OpenCV);
- ``floor``: the forward pass to ``layer4``, the least any DFF must do;
- ``fxai NMF`` / ``sklearn NMF``: the factorisation alone, on the same activation matrix ``[512, 8·7·7]``.

Reconstruction error: :math:`\\lVert V - \\hat V\\rVert_F / \\lVert V\\rVert_F` of the layer4 activations, with
:math:`\\hat V` each library's factors plus its shift (fxai: from the returned maps and concepts at the
layer's resolution; pytorch-grad-cam: from its ``dff`` function, the computation its class runs).
Errors are given for several seeds (``key`` for fxai, ``random_state`` for scikit-learn), since each
random start reaches its own local minimum.

Variants run interleaved in one process; times are medians of ``--repeats`` runs after a warm-up.

Run: ``python benchmarks/bench_factorization.py --threads 2 --repeats 5``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import numpy as np
import torch
import torchvision

import fxai
from fxai.attribution.nmf import nmf
from timing import interleaved_medians


def _relative(v: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(v - approx) / np.linalg.norm(v))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concepts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the reconstruction errors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from pytorch_grad_cam import DeepFeatureFactorization
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as pgc_dff
    from sklearn.decomposition import NMF

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    model_fn, params = fxai.functional(model)
    pgc_model = copy.deepcopy(model)
    pgc = DeepFeatureFactorization(model=pgc_model, target_layer=pgc_model.layer4,
                                   computation_on_concepts=pgc_model.fc)
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    k = args.concepts
    with torch.no_grad():
        act = trunk(x)
    v = act.transpose(0, 1).reshape(act.shape[1], -1).contiguous()
    v_np = v.numpy()

    def floor():
        with torch.no_grad():
            return trunk(x)

    def sklearn_nmf():
        model_nmf = NMF(n_components=k, init="random", random_state=0)
        return model_nmf.fit_transform(v_np), model_nmf.components_

    variants = {
        "fxai": lambda: fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=k,
                                                        head="auto", key=0),
        "pytorch-grad-cam": lambda: pgc(x, n_components=k),
        "floor (forward to layer4)": floor,
        "fxai NMF": lambda: nmf(v, k, key=0),
        "sklearn NMF": sklearn_nmf,
    }
    med = interleaved_medians(variants, args.repeats)

    ours_err, ours_iters, theirs_err, theirs_iters = [], [], [], []
    for seed in range(args.seeds):
        out = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=k, key=seed,
                                              upsample=False)
        approx = torch.einsum("kc,bkhw->cbhw", out.concepts, out.maps).reshape(v.shape)
        ours_err.append(_relative(v_np, approx.numpy()))
        ours_iters.append(int(nmf(v, k, key=seed).iterations))
        model_nmf = NMF(n_components=k, init="random", random_state=seed)
        w = model_nmf.fit_transform(v_np - v_np.min(1, keepdims=True))
        theirs_iters.append(model_nmf.n_iter_)
        if seed == 0:  # pytorch-grad-cam's own function (random_state=0): concepts carry its shift back
            concepts, maps = pgc_dff(act.numpy().copy(), n_components=k)
            shift = v_np.min(1, keepdims=True)
            approx = (concepts - shift) @ maps.transpose(1, 0, 2, 3).reshape(k, -1) + shift
            theirs_err.append(_relative(v_np, approx))
        else:
            theirs_err.append(_relative(v_np, w @ model_nmf.components_ + v_np.min(1, keepdims=True)))

    print(f"Deep Feature Factorization, resnet18 layer4, B={args.batch}, {args.size}x{args.size}, K={k}, CPU, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| variant | median (ms) | ratio to floor |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.1f} | {t / med['floor (forward to layer4)']:.2f} |")
    print(f"\nfxai / pytorch-grad-cam = {med['fxai'] / med['pytorch-grad-cam']:.2f}; "
          f"fxai NMF / sklearn NMF = {med['fxai NMF'] / med['sklearn NMF']:.2f}\n")
    print(f"| relative reconstruction error, seeds 0..{args.seeds - 1} | errors | median | iterations |")
    print("|---|---|---:|---|")
    print(f"| fxai (HALS, tol 1e-4 per 10 iterations) | {', '.join(f'{e:.5f}' for e in ours_err)} | "
          f"{statistics.median(ours_err):.5f} | {', '.join(map(str, ours_iters))} |")
    print(f"| pytorch-grad-cam (sklearn NMF, cd, tol 1e-4) | {', '.join(f'{e:.5f}' for e in theirs_err)} | "
          f"{statistics.median(theirs_err):.5f} | {', '.join(map(str, theirs_iters))} |")
    pgc.activations_and_grads.release()


if __name__ == "__main__":
    main()
