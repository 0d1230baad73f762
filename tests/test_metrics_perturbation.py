import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M


def small_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(64, 5)).double().eval()
    return fxai.functional(net)


def pixel_model(c=1, i=2, j=3):
    """Class 0 reads one pixel, class 1 is constant 0."""
    def model_fn(params, x):
        v = x[:, c, i, j] * params["w"]
        return torch.stack([v, torch.zeros_like(v)], 1)
    return model_fn, {"w": torch.tensor(1.0, dtype=torch.float64)}


def linear_model(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)

    def model_fn(params, x):
        v = (x * params["w"]).flatten(1).sum(1)
        return torch.stack([v, -v], 1)
    return model_fn, {"w": w}


def test_ranking_order_ties_and_patches():
    amap = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])
    assert M.ranking(amap).tolist() == [[[3, 0], [1, 2]]]
    # a pixel map is reduced over channels first
    assert torch.equal(M.ranking(torch.stack([amap, -2 * amap], 1), reduce="sum"), M.ranking(-amap))
    flat = torch.zeros(1, 4, 4)
    assert M.ranking(flat).flatten().tolist() == list(range(16))
    a, b = M.ranking(flat, key=1), M.ranking(flat, key=1)
    assert torch.equal(a, b) and sorted(a.flatten().tolist()) == list(range(16))
    assert not torch.equal(M.ranking(flat, key=1), M.ranking(flat, key=2))
    # patches: mean over 2x2 blocks, non-divisible border patches average what they hold
    m = torch.arange(25.0).view(1, 5, 5)
    r = M.ranking(m, patch=2)
    means = torch.tensor([[3.0, 5.0, 7.0], [13.0, 15.0, 17.0], [21.5, 23.5, 24.0]])
    expect = torch.empty(9, dtype=torch.long)
    expect[means.flatten().argsort(descending=True)] = torch.arange(9)
    assert torch.equal(r, expect.view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, :5, :5])


def test_masks():
    r = M.ranking(torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0)))
    top, bottom = M.top_mask(r, [0, 2, 9]), M.bottom_mask(r, [0, 2, 9])
    assert top.shape == (3, 2, 3, 3) and top.dtype == torch.bool
    assert top.flatten(2).sum(-1).tolist() == [[0, 0], [2, 2], [9, 9]]
    assert torch.equal(top[1], r < 2) and torch.equal(bottom[1], r >= 7)


def test_deletion_of_a_one_pixel_model_drops_when_the_pixel_goes():
    model_fn, params = pixel_model(c=1, i=2, j=3)
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1
    amap = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rank = M.ranking(amap)[:, 2, 3]
    curve = M.deletion(model_fn, params, x, 0, amap, steps=20)
    k = torch.arange(21)
    expect = torch.where(k[None] <= rank[:, None], x[:, 1, 2, 3, None], torch.zeros(()))
    assert torch.equal(curve, expect)
    # insertion restores it exactly at its rank
    ins = M.insertion(model_fn, params, x, 0, amap, steps=20, imputer=M.constant(0.0))
    assert torch.equal(ins, torch.where(k[None] > rank[:, None], x[:, 1, 2, 3, None], torch.zeros(())))


def test_perfect_and_inverted_attributions_bound_the_scores():
    x = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model_fn, params = linear_model(x.shape[1:])
    perfect = params["w"] * x
    rand = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opts = dict(steps=12, imputer=M.constant(0.0))
    d = {n: M.deletion(model_fn, params, x, 0, a, **opts) for n, a in
         [("perfect", perfect), ("random", rand), ("inverted", -perfect)]}
    # greedy removal of the largest contributions is optimal for an additive model
    assert (d["perfect"] <= d["random"] + 1e-12).all() and (d["random"] <= d["inverted"] + 1e-12).all()
    auc = {n: M.auc(c) for n, c in d.items()}
    assert (auc["perfect"] < auc["random"]).all() and (auc["random"] < auc["inverted"]).all()
    ins = {n: M.auc(M.insertion(model_fn, params, x, 0, a, **opts)) for n, a in
           [("perfect", perfect), ("inverted", -perfect)]}
    assert (ins["perfect"] > ins["inverted"]).all()
    mo = M.aopc(M.morf(model_fn, params, x, 0, perfect, **opts))
    le = M.aopc(M.lerf(model_fn, params, x, 0, perfect, **opts))
    assert (mo > M.aopc(M.morf(model_fn, params, x, 0, -perfect, **opts))).all() and (mo > le).all()
    # the clean point and the fully perturbed point are the model's scores on x and on zeros
    assert torch.allclose(d["perfect"][:, 0], model_fn(params, x)[:, 0])
    assert torch.equal(d["perfect"][:, -1], torch.zeros(3, dtype=torch.float64))


def _loop_curve(model_fn, x, target, amap, counts, order, fill, patch=1):
    """Reference: one image, one step at a time, masks from a plain sort."""
    out = torch.empty(x.shape[0], len(counts), dtype=x.dtype)
    for b in range(x.shape[0]):
        m = amap[b].sum(0) if amap.ndim == 4 else amap[b]
        if patch > 1:
            m = torch.nn.functional.avg_pool2d(m[None, None], patch, ceil_mode=True)[0, 0]
        order_idx = m.flatten().argsort(descending=True, stable=True).tolist()
        if order == "lerf":
            order_idx = order_idx[::-1]
        for s, n in enumerate(counts):
            xi = x[b].clone()
            chosen = order_idx[:n]
            keep = torch.ones(m.numel(), dtype=torch.bool)
            keep[chosen] = False
            if order == "insertion":
                keep = ~keep
            keep = keep.view(m.shape).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
            keep = keep[: x.shape[2], : x.shape[3]]
            xi = torch.where(keep, xi, fill[b])
            out[b, s] = model_fn({}, xi[None])[0, target[b]]
    return out


@pytest.mark.parametrize("name", ["deletion", "morf", "lerf", "selectivity", "insertion"])
def test_curves_match_a_plain_loop_and_chunking(name):
    model_fn, params = small_net()
    f = lambda p, x: model_fn(params, x)  # noqa: E731
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    amap = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = getattr(M, name)
    patch = 3 if name == "selectivity" else 1
    imputer = M.blur(2.0) if name == "insertion" else M.constant(0.5)
    opts = dict(imputer=imputer, patch=patch) if name == "selectivity" else dict(imputer=imputer, steps=7)
    got = fn(model_fn, params, x, None, amap, **opts)
    target = model_fn(params, x).argmax(1)
    units = 16 if name == "selectivity" else 100
    steps = 16 if name == "selectivity" else 7
    counts = [k * units // steps for k in range(steps + 1)]
    fill = imputer(x, torch.ones(1, 3, 10, 10, dtype=torch.bool))[0]
    order = "lerf" if name == "lerf" else "insertion" if name == "insertion" else "morf"
    ref = _loop_curve(f, x, target, amap, counts, order, fill, patch)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for chunk in (1, 4, 7):
        torch.testing.assert_close(fn(model_fn, params, x, None, amap, chunk_size=chunk, **opts), got,
                                   rtol=1e-12, atol=1e-14)


def test_random_imputers_are_keyed_and_chunk_invariant():
    model_fn, params = small_net()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    amap = torch.zeros(2, 8, 8, dtype=torch.float64)  # all ties: the key breaks them
    with pytest.raises(TypeError, match="key"):
        M.morf(model_fn, params, x, None, amap, steps=4)
    a = M.morf(model_fn, params, x, None, amap, steps=8, key=3)
    torch.testing.assert_close(a, M.morf(model_fn, params, x, None, amap, steps=8, key=3, chunk_size=3),
                               rtol=1e-12, atol=1e-14)
    assert torch.equal(a, M.morf(model_fn, params, x, None, amap, steps=8, key=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, M.morf(model_fn, params, x, None, amap, steps=8, key=4))
    noisy = M.uniform_noise()(x, torch.ones(2, 2, 8, 8, dtype=torch.bool), key=0)
    assert torch.equal(noisy[0], noisy[1])  # one noise field per image, shared by every mask
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (noisy[0].flatten(1).amin(1) >= lo).all() and (noisy[0].flatten(1).amax(1) <= hi).all()


def test_softmax_option_and_targets():
    model_fn, params = small_net()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    amap = torch.rand(2, 8, 8, dtype=torch.float64)
    logits = M.deletion(model_fn, params, x, 2, amap, steps=4)
    probs = M.deletion(model_fn, params, x, 2, amap, steps=4, softmax=True)
    assert torch.allclose(logits[:, 0], model_fn(params, x)[:, 2])
    assert torch.allclose(probs[:, 0], model_fn(params, x).softmax(1)[:, 2])
    by_fn = M.deletion(model_fn, params, x, lambda lg: lg[:, 2], amap, steps=4, chunk_size=3)
    assert torch.allclose(by_fn, logits)
    with pytest.raises(ValueError, match="attribution"):
        M.deletion(model_fn, params, x, 2, amap[:, :4], steps=4)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        M.deletion(model_fn, params, x, torch.zeros(2, 2, dtype=torch.long), amap, steps=4)


def test_aggregates_closed_form():
    c = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(M.auc(c), torch.tensor([0.5, 0.0]))
    assert torch.allclose(M.aopc(c), torch.tensor([0.5, 0.0]))
    assert torch.allclose(M.auc(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])), torch.tensor(0.375))
