import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(64, 5)).double().eval()
    return net, *fxai.functional(net)


def data(b=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64)


def fixed(noise):
    return lambda x, *, samples, key: noise


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero():
    w = torch.randn(3, 8, 8, dtype=torch.float64)
    def model_fn(p, x):
        return torch.stack([(x * p["w"]).flatten(1).sum(1), torch.zeros(x.shape[0], dtype=x.dtype)], 1)

    x = data()
    inf = M.infidelity(model_fn, {"w": w}, x, 0, w.expand_as(x), samples=8, sigma=0.1, key=0)
    torch.testing.assert_close(inf, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-24)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(normalize):
    captum_metrics = pytest.importorskip("captum.metrics")
    net, model_fn, params = small_net()
    x = data()
    target = torch.tensor([0, 3, 1])
    attr = fxai.gradient(model_fn, params, x, target)
    samples = 5
    noise = 0.05 * torch.randn(samples, *x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    interleaved = noise.transpose(0, 1).flatten(0, 1)  # Captum repeats each input `samples` times in a row

    def perturb_func(inputs):
        assert torch.equal(inputs, x.repeat_interleave(samples, 0))
        return interleaved, inputs - interleaved

    ref = captum_metrics.infidelity(net, perturb_func, x, attr, target=target, n_perturb_samples=samples,
                                    normalize=normalize)
    got = M.infidelity(model_fn, params, x, target, attr, samples=samples, perturb=fixed(noise), normalize=normalize)
    torch.testing.assert_close(got, ref.view(-1), rtol=1e-10, atol=1e-14)
    for chunk in (1, 4):
        torch.testing.assert_close(M.infidelity(model_fn, params, x, target, attr, samples=samples,
                                                perturb=fixed(noise), normalize=normalize, chunk_size=chunk), got,
                                   rtol=1e-12, atol=1e-16)


def test_infidelity_keys():
    _, model_fn, params = small_net()
    x = data()
    attr = fxai.gradient(model_fn, params, x, 1)
    with pytest.raises(TypeError, match="key"):
        M.infidelity(model_fn, params, x, 1, attr)
    a = M.infidelity(model_fn, params, x, 1, attr, key=3, samples=6)
    torch.testing.assert_close(a, M.infidelity(model_fn, params, x, 1, attr, key=3, samples=6, chunk_size=5),
                               rtol=1e-12, atol=1e-16)
    assert not torch.equal(a, M.infidelity(model_fn, params, x, 1, attr, key=4, samples=6))


def test_max_sensitivity_matches_captum():
    captum_metrics = pytest.importorskip("captum.metrics")
    from captum.attr import Saliency

    net, model_fn, params = small_net()
    x = data()
    target = torch.tensor([0, 3, 1])
    samples = 4
    delta = 0.02 * (2 * torch.rand(samples, *x.shape, generator=torch.Generator().manual_seed(2),
                                   dtype=torch.float64) - 1)

    def perturb_func(inputs, perturb_radius):
        return inputs + delta.transpose(0, 1).flatten(0, 1)

    ref = captum_metrics.sensitivity_max(Saliency(net).attribute, x, perturb_func=perturb_func,
                                         n_perturb_samples=samples, target=target, abs=False)
    attr = fxai.gradient(model_fn, params, x, target)
    got = M.max_sensitivity(model_fn, params, x, target, attr, method=fxai.gradient, samples=samples,
                            perturb=fixed(delta), key=0)
    torch.testing.assert_close(got, ref.view(-1), rtol=1e-10, atol=1e-14)


def test_max_sensitivity_stacks_the_method_and_passes_the_key():
    _, model_fn, params = small_net()
    x = data(2)
    calls = []

    def method(model_fn, params, x, target, *, key=None, scale=1.0):
        calls.append((x.shape[0], target.tolist() if isinstance(target, torch.Tensor) else target, key is not None))
        return scale * fxai.gradient(model_fn, params, x, target)

    attr = fxai.gradient(model_fn, params, x, None)
    top = model_fn(params, x).argmax(1)
    a = M.max_sensitivity(model_fn, params, x, None, attr, method=method, samples=3, key=0,
                          method_options={"scale": 1.0})
    assert calls == [(6, top.repeat(3).tolist(), True)]
    assert torch.equal(a, M.max_sensitivity(model_fn, params, x, None, attr, method=method, samples=3, key=0))
    # constant method: zero sensitivity
    zero = M.max_sensitivity(model_fn, params, x, None, torch.ones(2, 3), samples=3, key=0,
                             method=lambda f, p, x, t: torch.ones(x.shape[0], 3))
    assert torch.equal(zero, torch.zeros(2))
