import numpy as np
import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M

scipy_sparse = pytest.importorskip("scipy.sparse")
from scipy.sparse.linalg import spsolve  # noqa: E402

NEIGHBOURS = [((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
              ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12)]


def direct_fill(img, removed):
    """Reference: ROAD's system assembled pixel by pixel and solved by a direct sparse solver."""
    c, h, w = img.shape
    idx = {p: k for k, p in enumerate(zip(*np.nonzero(removed)))}
    a = scipy_sparse.lil_matrix((len(idx), len(idx)))
    b = np.zeros((len(idx), c))
    for (i, j), k in idx.items():
        for (di, dj), wt in NEIGHBOURS:
            ii, jj = i + di, j + dj
            if not (0 <= ii < h and 0 <= jj < w):
                continue
            a[k, k] += wt
            if (ii, jj) in idx:
                a[k, idx[ii, jj]] -= wt
            else:
                b[k] += wt * img[:, ii, jj]
    sol = spsolve(a.tocsc(), b).reshape(len(idx), c)
    out = img.copy()
    for (i, j), k in idx.items():
        out[:, i, j] = sol[k]
    return out


def setup(h=12, w=10, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    amap = torch.nn.functional.interpolate(torch.rand(b, 1, 3, 3, generator=g, dtype=torch.float64), size=(h, w),
                                           mode="bilinear")[:, 0]
    return x, M.ranking(amap)


def test_noisy_linear_matches_a_direct_sparse_solve():
    x, ranks = setup()
    masks = M.top_mask(ranks, [0, 12, 60, 110])
    out = M.noisy_linear(0.0, tol=1e-12)(x, masks)
    for s in range(4):
        for b in range(2):
            ref = direct_fill(x[b].numpy(), masks[s, b].numpy()) if masks[s, b].any() else x[b].numpy()
            np.testing.assert_allclose(out[s, b].numpy(), ref, rtol=0, atol=1e-9)


def test_noisy_linear_matches_a_direct_sparse_solve_across_multigrid_levels():
    # 37 x 42 is padded to 40 x 44 (pixels outside the image), coarsened to 20 x 22 and solved exactly on 10 x 11;
    # removed shares from 2% to all.
    x, ranks = setup(h=37, w=42, b=1, seed=3)
    masks = M.top_mask(ranks, [30, 700, 1500, 37 * 42])
    out = M.noisy_linear(0.0, tol=1e-12)(x, masks)
    for s in range(3):
        ref = direct_fill(x[0].numpy(), masks[s, 0].numpy())
        np.testing.assert_allclose(out[s, 0].numpy(), ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(out[3], torch.zeros_like(out[3]))  # nothing known: filled with 0


def test_noisy_linear_matches_a_direct_sparse_solve_on_scattered_masks():
    # Scattered removed pixels (a noisy map) are the case where a rediscretised coarse grid fails to anchor;
    # 70 x 64 goes through three grids (72 x 64 padded, 36 x 32, 18 x 16) to the exact 9 x 8.
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 70, 64, generator=g, dtype=torch.float64)
    masks = M.top_mask(M.ranking(torch.rand(1, 70, 64, generator=g)), [224, 2240, 4256])
    out = M.noisy_linear(0.0, tol=1e-12)(x, masks)
    for s in range(3):
        ref = direct_fill(x[0].numpy(), masks[s, 0].numpy())
        np.testing.assert_allclose(out[s, 0].numpy(), ref, rtol=0, atol=1e-9)


def test_noisy_linear_converges_in_a_few_iterations_on_compact_and_scattered_masks():
    # The multigrid preconditioner's job: a dozen iterations suffice whatever the shape of the removed set.
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 96, 96, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64), size=(96, 96),
                                             mode="bilinear")[:, 0]
    maps = torch.cat([smooth, torch.rand(1, 96, 96, generator=g, dtype=torch.float64)])
    masks = M.top_mask(M.ranking(maps), [4608, 8294])  # 50% and 90%
    exact = M.noisy_linear(0.0, tol=1e-12)(x, masks)
    fast = M.noisy_linear(0.0, tol=1e-12, max_iter=12)(x, masks)
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-4)


def test_noisy_linear_with_one_known_pixel_copies_it_everywhere():
    # Every removed pixel is the mean of its neighbours: with one pixel known, the solution is that pixel's value.
    # The system is nearly singular (one anchor for 1919 unknowns): float32 keeps about 5 digits.
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    masks = torch.ones(1, 1, 40, 48, dtype=torch.bool)
    masks[0, 0, 31, 5] = False
    for dtype, tol, atol in ((torch.float64, 1e-10, 1e-8), (torch.float32, 1e-6, 5e-5)):
        out = M.noisy_linear(0.0, tol=tol)(x.to(dtype), masks)
        want = x[0, :, 31, 5, None, None].expand(3, 40, 48).to(dtype)
        torch.testing.assert_close(out[0, 0], want, rtol=0, atol=atol)


def test_noisy_linear_matches_pytorch_grad_cam_with_noise_0():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    x, ranks = setup(h=20, w=20, b=2, seed=1)
    x = x.float()
    masks = M.top_mask(ranks, [40, 200, 360])
    out = M.noisy_linear(0.0, tol=1e-7)(x, masks)
    imputer = road.NoisyLinearImputer(noise=0.0)
    for s in range(3):
        for b in range(2):
            ref = imputer(x[b], (~masks[s, b]).float())  # their mask: 1 = keep
            torch.testing.assert_close(out[s, b], ref, rtol=0, atol=2e-6)


def test_noise_is_keyed_and_only_on_removed_pixels():
    x, ranks = setup()
    masks = M.top_mask(ranks, [30, 60])
    with pytest.raises(TypeError, match="key"):
        M.noisy_linear(0.01)(x, masks)
    a = M.noisy_linear(0.01)(x, masks, key=0)
    assert torch.equal(a, M.noisy_linear(0.01)(x, masks, key=0))
    clean = M.noisy_linear(0.0)(x, masks)
    kept = ~masks[:, :, None].expand_as(a)
    assert torch.equal(a[kept], clean[kept]) and not torch.equal(a, clean)
    assert 0.005 < (a - clean)[~kept].std() < 0.02


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(64, 5)).eval()
    return net, *fxai.functional(net)


def test_road_matches_pytorch_grad_cam_metric_and_a_plain_loop():
    pc = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, model_fn, params = small_net()
    x, _ = setup(h=16, w=16, b=2, seed=2)
    x = x.float()
    amap = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(5))
    fractions = (0.9, 0.8, 0.5)  # pytorch-grad-cam's percentiles 10, 20, 50 remove the same counts on 256 pixels
    got = M.road(model_fn, params, x, 1, amap, fractions=fractions, noise=0.0, tol=1e-7)
    targets = [ClassifierOutputTarget(1)] * 2
    for s, pct in enumerate((10, 20, 50)):
        metric = pc.PerturbationConfidenceMetric(pc.RemoveMostRelevantFirst(pct, road.NoisyLinearImputer(noise=0.0)))
        ref = metric(x, amap.numpy(), targets, net, return_diff=False)
        np.testing.assert_allclose(got[:, s].numpy(), ref, rtol=0, atol=2e-5)
    lerf = M.road(model_fn, params, x, 1, amap, fractions=fractions, order="lerf", noise=0.0, tol=1e-7)
    ranks = M.ranking(amap)
    imputer = road.NoisyLinearImputer(noise=0.0)
    for s, f in enumerate(fractions):
        n = round(f * 256)
        for b in range(2):
            keep = (ranks[b] < 256 - n).float()
            ref = net(imputer(x[b], keep)[None])[0, 1]
            torch.testing.assert_close(lerf[b, s], ref, rtol=0, atol=2e-5)
    combined = M.road_combined(got, lerf)
    torch.testing.assert_close(combined, ((lerf - got) / 2).mean(1))


def test_road_chunked_equals_unchunked_and_same_key():
    _, model_fn, params = small_net()
    x, _ = setup(h=16, w=16, b=3, seed=3)
    x = x.float()
    amap = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = M.road(model_fn, params, x, None, amap, key=0, softmax=True)
    assert a.shape == (3, 9)
    for chunk in (2, 5):
        torch.testing.assert_close(M.road(model_fn, params, x, None, amap, key=0, softmax=True, chunk_size=chunk), a,
                                   rtol=1e-5, atol=1e-6)
    assert not torch.equal(a, M.road(model_fn, params, x, None, amap, key=1, softmax=True))
