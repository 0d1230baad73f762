import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M


def net_and_params():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(64, 5)).double().eval()
    return net, *fxai.functional(net)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).double()  # many ties
    b = a + torch.randn(3, 40, generator=g, dtype=torch.float64)
    got = M.spearman(a, b)
    ref = torch.tensor([stats.spearmanr(a[i], b[i]).statistic for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    c = torch.randn(3, 40, generator=g, dtype=torch.float64)
    ref_abs = torch.tensor([stats.spearmanr(c[i].abs(), b[i].abs()).statistic for i in range(3)],
                           dtype=torch.float64)
    torch.testing.assert_close(M.spearman(c, b, absolute=True), ref_abs, rtol=1e-12, atol=1e-12)
    rev = M.spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]))
    assert torch.equal(rev, torch.tensor([-1.0]))


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 20, 24, generator=g, dtype=torch.float64)
    b = a + 0.2 * torch.randn(2, 20, 24, generator=g, dtype=torch.float64)
    got = M.ssim(a, b, data_range=1.0)
    ref = [metrics.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0) for i in range(2)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    c = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    d = c.flip(-1)
    ref = [metrics.structural_similarity(c[i].numpy(), d[i].numpy(), data_range=2.0, channel_axis=0) for i in range(2)]
    torch.testing.assert_close(M.ssim(c, d, data_range=2.0), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(M.ssim(a, a), torch.ones(2, dtype=torch.float64))
    # float32 maps far from 0 (a mean 1000 times their spread) keep float64's answer: variances of centred maps
    e, f = (100 + a).float(), (100 + b).float()
    ref = [metrics.structural_similarity(e[i].double().numpy(), f[i].double().numpy(), data_range=1.0)
           for i in range(2)]
    torch.testing.assert_close(M.ssim(e, f, data_range=1.0), torch.tensor(ref, dtype=torch.float32), rtol=0, atol=1e-4)


def test_layer_order_and_randomised_params_leave_originals():
    net, model_fn, params = net_and_params()
    assert M.layer_order(params, model_fn) == ["0", "1", "5"]
    assert M.layer_order(params) == ["0", "1", "5"]  # running stats recognised by name
    before = {k: v.clone() for k, v in params.items()}
    p2 = M.randomised_params(params, ["5", "1"], key=0, model_fn=model_fn)
    assert all(torch.equal(params[k], before[k]) for k in params)
    assert p2 is not params and set(p2) == set(params)
    for k in params:
        changed = k in ("5.weight", "5.bias", "1.weight", "1.bias")
        assert (p2[k] is params[k]) == (not changed), k
    # the Gaussian keeps the layer's scale
    assert abs(p2["5.weight"].std() - params["5.weight"].std()) < 0.2 * params["5.weight"].std()
    assert torch.equal(p2["5.weight"], M.randomised_params(params, ["5", "1"], key=0, model_fn=model_fn)["5.weight"])
    assert list(net.state_dict()["1.running_var"]) == list(before["1.running_var"])
    with pytest.raises(ValueError, match="no parameters"):
        M.randomised_params(params, ["nope"], key=0)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_randomisation_stages_match_manual_randomisation(mode):
    _, model_fn, params = net_and_params()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attr = fxai.gradient(model_fn, params, x, None)
    got = M.randomisation(model_fn, params, x, None, attr, method=fxai.gradient, mode=mode, key=7)
    assert got.shape == (2, 3)
    target = model_fn(params, x).argmax(1)
    gen = torch.Generator().manual_seed(7)
    order = ["5", "1", "0"]
    random = M.randomised_params(params, order, key=gen, model_fn=model_fn)
    for i, layer in enumerate(order):
        chosen = order[: i + 1] if mode == "cascading" else [layer]
        p = dict(params)
        p.update({k: random[k] for k in random
                  if k.split(".")[0] in chosen and k.rsplit(".", 1)[-1] in ("weight", "bias")})
        ref = M.spearman(attr, fxai.gradient(model_fn, p, x, target))
        torch.testing.assert_close(got[:, i], ref)
    ssim = M.randomisation(model_fn, params, x, None, attr, method=fxai.gradient, mode=mode, key=7,
                           similarity="ssim")
    assert ssim.shape == (2, 3) and (ssim < 0.99).all()
