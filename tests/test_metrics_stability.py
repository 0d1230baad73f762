"""Robustness metrics that re-explain perturbed inputs, against Quantus 0.6 (test-only oracle) with its own
draws, and against their definitions."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M

quantus = pytest.importorskip("quantus")

# Quantus-style fixture (LeNet-like on 1×28×28) and a hidden size (3×10×12, batch 3).
CASES = {"mnist": (4, 1, 28, 28), "hidden": (3, 3, 10, 12)}


class Net(nn.Module):
    """A float64 CNN that accepts float32 inputs (Quantus's predict casts with ``torch.Tensor``)."""

    def __init__(self, c):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    def forward(self, x):
        return self.head(self.features(x.double()))


def setup(case):
    shape = CASES[case]
    torch.manual_seed(1)
    net = Net(shape[1]).double().eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, model_fn, params, x, y


def explain(model_fn, params):
    def explain_func(model, inputs, targets, **kwargs):
        xt = torch.as_tensor(np.asarray(inputs), dtype=torch.float64)
        return fxai.gradient(model_fn, params, xt, torch.as_tensor(np.asarray(targets))).numpy()
    return explain_func


def quantus_draws(seed, samples, shape, draw):
    """The perturbations Quantus draws after ``np.random.seed(seed)``: one ``[B, D]`` array per sample."""
    np.random.seed(seed)
    return torch.stack([torch.from_numpy(draw(size=(shape[0], int(np.prod(shape[1:]))))).view(shape)
                        for _ in range(samples)])


def run_quantus(metric, net, x, y, a, model_fn, params, seed=0, **call):
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                                 explain_func=explain(model_fn, params), device="cpu", **call), dtype=np.float64)


def fixed(deltas):
    return lambda x, *, samples, key: deltas


COMMON = dict(abs=False, normalise=False, disable_warnings=True)
S = 4


@pytest.mark.parametrize("case", list(CASES))
def test_local_lipschitz_and_sensitivities_equal_quantus(case):
    net, model_fn, params, x, y = setup(case)
    a = fxai.gradient(model_fn, params, x, y)
    std = 0.1
    q = run_quantus(quantus.LocalLipschitzEstimate(nr_samples=S, perturb_std=std, **COMMON), net, x, y, a,
                    model_fn, params)
    d = quantus_draws(0, S, x.shape, lambda size: np.random.normal(0.0, std, size=size))
    got = M.local_lipschitz_estimate(model_fn, params, x, y, a, method=fxai.gradient, samples=S, perturb=fixed(d))
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-9)

    r = 0.2
    d = quantus_draws(0, S, x.shape, lambda size: np.random.uniform(-r, r, size=size))
    q = run_quantus(quantus.AvgSensitivity(nr_samples=S, lower_bound=r, **COMMON), net, x, y, a, model_fn, params)
    got = M.avg_sensitivity(model_fn, params, x, y, a, method=fxai.gradient, samples=S, perturb=fixed(d))
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-9)
    q = run_quantus(quantus.MaxSensitivity(nr_samples=S, lower_bound=r, **COMMON), net, x, y, a, model_fn, params)
    got = M.max_sensitivity(model_fn, params, x, y, a, method=fxai.gradient, samples=S, perturb=fixed(d), key=0)
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_relative_stabilities_equal_quantus(case):
    net, model_fn, params, x, y = setup(case)
    a = fxai.gradient(model_fn, params, x, y)
    lo, hi = 0.0, 0.01  # small enough that no prediction changes (Quantus gives NaN for an image if one does)
    d = quantus_draws(0, S, x.shape, lambda size: np.random.uniform(lo, hi, size=size))
    kw = dict(nr_samples=S, perturb_func_kwargs={"lower_bound": lo, "upper_bound": hi}, **COMMON)
    opts = dict(method=fxai.gradient, samples=S, perturb=fixed(d))
    q = run_quantus(quantus.RelativeInputStability(**kw), net, x, y, a, model_fn, params)
    got = M.relative_input_stability(model_fn, params, x, y, a, **opts)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-9)
    q = run_quantus(quantus.RelativeOutputStability(**kw), net, x, y, a, model_fn, params, softmax=False)
    got = M.relative_output_stability(model_fn, params, x, y, a, **opts)
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-5)  # Quantus predicts on float32 copies of the inputs
    q = run_quantus(quantus.RelativeRepresentationStability(layer_names=["features.1"], **kw), net, x, y, a,
                    model_fn, params)
    got = M.relative_representation_stability(model_fn, params, x, y, a, layer="features.1", **opts)
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_continuity_equals_quantus(case):
    net, model_fn, params, x, y = setup(case)
    a = fxai.gradient(model_fn, params, x, y)
    steps = 7
    q = run_quantus(quantus.Continuity(nr_steps=steps, **COMMON), net, x, y, a, model_fn, params)
    got = M.continuity(model_fn, params, x, y, a, method=fxai.gradient, steps=steps, chunk_size=5)
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_consistency_equals_quantus_with_its_discretisation(case):
    net, model_fn, params, x, y = setup(case)
    x = torch.cat([x, x.flip(0), x[:2]])  # repeated inputs share explanations and predictions
    y = net(x).argmax(1)
    a = fxai.gradient(model_fn, params, x, y)
    a[3] = a[0]  # same explanation, prediction may differ
    q = run_quantus(quantus.Consistency(**COMMON), net, x, y, a, model_fn, params)
    got = M.consistency(model_fn, params, x, y, a, discretise="first_sign")
    np.testing.assert_allclose(got.numpy(), q, rtol=1e-8)
    assert (got > 0).any()


def test_consistency_by_its_definition():
    # Four inputs: 0 and 1 share the explanation and the prediction, 2 shares the explanation of 0 and 1 but
    # not their prediction, 3 stands alone.
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    def model_fn(p, x):
        return x.flatten(1)[:, :2] @ p["w"].T

    x = torch.tensor([[[[2.0, 1.0]]], [[[3.0, 1.0]]], [[[1.0, 2.0]]], [[[5.0, 0.0]]]])
    a = torch.tensor([[[[1.0, -1.0]]], [[[2.0, -3.0]]], [[[4.0, -1.0]]], [[[-1.0, 1.0]]]])
    got = M.consistency(model_fn, {"w": w}, x, None, a, top=2)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_continuity_closed_form_for_a_linear_model():
    # The gradient of a linear model does not change: continuity 0; the map x * w changes by w * (x - x').
    torch.manual_seed(0)
    w = torch.randn(2, 1, 4, 6, dtype=torch.float64)

    def model_fn(p, x):
        return (x[:, None] * p["w"]).flatten(2).sum(-1)

    x = torch.rand(2, 1, 4, 6, dtype=torch.float64) + 0.5
    g = fxai.gradient(model_fn, {"w": w}, x, 0)
    assert torch.equal(M.continuity(model_fn, {"w": w}, x, 0, g, method=fxai.gradient, steps=4),
                       torch.zeros(2, dtype=torch.float64))
    ixg = fxai.input_x_gradient(model_fn, {"w": w}, x, 0)
    got = M.continuity(model_fn, {"w": w}, x, 0, ixg, method=fxai.input_x_gradient, steps=13, fill=0.0)
    ratios = []
    for k in range(1, 14):
        t = -6 + k
        xs = torch.zeros_like(x)
        if t >= 6:
            pass  # moved out entirely: all fill
        elif t >= 0:
            xs[..., t:] = x[..., :6 - t]
        else:
            xs[..., :6 + t] = x[..., -t:]
        ratios.append((w[0] * (x - xs)).flatten(1).abs().sum(1) / ((x - xs).flatten(1).norm(dim=1) + 1e-9))
    torch.testing.assert_close(got, torch.stack(ratios).amax(0), rtol=1e-12, atol=0)


def test_relative_stability_skips_perturbations_that_change_the_prediction():
    _, model_fn, params, x, y = setup("hidden")
    a = fxai.gradient(model_fn, params, x, y)
    small = 0.01 * torch.rand(2, *x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    huge = torch.cat([small, 50 * torch.randn(1, *x.shape, generator=torch.Generator().manual_seed(1),
                                              dtype=torch.float64)])
    with torch.no_grad():
        changed = (model_fn(params, x + huge[2]).argmax(1) != y)
    assert changed.any()
    kw = dict(method=fxai.gradient, samples=2, perturb=fixed(small))
    two = M.relative_input_stability(model_fn, params, x, y, a, **kw)
    three = M.relative_input_stability(model_fn, params, x, y, a, **dict(kw, samples=3, perturb=fixed(huge)))
    torch.testing.assert_close(three[changed], two[changed], rtol=0, atol=0)
    only_changing = M.relative_input_stability(model_fn, params, x, y, a, method=fxai.gradient, samples=1,
                                               perturb=fixed(huge[2:]))
    assert only_changing[changed].isnan().all() and only_changing[~changed].isfinite().all()


def test_keys_chunks_and_randomised_methods():
    _, model_fn, params, x, y = setup("hidden")
    a = fxai.gradient(model_fn, params, x, y)
    for fn in (M.local_lipschitz_estimate, M.avg_sensitivity, M.relative_input_stability):
        with pytest.raises(TypeError, match="key"):
            fn(model_fn, params, x, y, a, method=fxai.gradient)
        one = fn(model_fn, params, x, y, a, method=fxai.gradient, samples=5, key=3)
        torch.testing.assert_close(fn(model_fn, params, x, y, a, method=fxai.gradient, samples=5, key=3,
                                      chunk_size=7), one, rtol=1e-12, atol=0)
        assert not torch.equal(one, fn(model_fn, params, x, y, a, method=fxai.gradient, samples=5, key=4))
    sg = fxai.smoothgrad(fxai.gradient, samples=3, sigma=0.1)
    a = sg(model_fn, params, x, y, key=0)
    one = M.avg_sensitivity(model_fn, params, x, y, a, method=sg, samples=4, key=1)
    torch.testing.assert_close(M.avg_sensitivity(model_fn, params, x, y, a, method=sg, samples=4, key=1,
                                                 chunk_size=100), one, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="attribution"):
        M.avg_sensitivity(model_fn, params, x, y, a[:, :, :, :-1], method=sg, samples=2, key=1)
    with pytest.raises(ValueError, match="steps"):
        M.continuity(model_fn, params, x, y, a, method=fxai.gradient, steps=100)


def test_continuity_shifts_past_the_border_where_quantus_raises():
    # With nr_steps dividing 2W + 1, Quantus's last shift is W + 1 pixels and np.take raises IndexError; the image
    # is then moved out entirely, all fill, and the definition still holds.
    net, model_fn, params, x, y = setup("hidden")  # W = 12: 25 = 5 * 5
    a = fxai.gradient(model_fn, params, x, y)
    with pytest.raises(IndexError):
        run_quantus(quantus.Continuity(nr_steps=5, **COMMON), net, x, y, a, model_fn, params)
    got = M.continuity(model_fn, params, x, y, a, method=fxai.gradient, steps=5)
    blank = x.flatten(1).amin(1)[:, None, None, None].expand_as(x)
    gb = fxai.gradient(model_fn, params, blank, y)
    last = (a - gb).flatten(1).abs().sum(1) / ((x - blank).flatten(1).norm(dim=1) + 1e-9)
    assert (got >= last - 1e-12).all() and torch.isfinite(got).all()


def test_quantus_relative_stability_is_nan_when_one_perturbation_changes_the_prediction():
    # Agarwal et al. maximise over the perturbations that keep the prediction; Quantus's np.max over the samples
    # with NaN for the others makes one changed prediction spoil the whole score.
    net, model_fn, params, x, y = setup("hidden")
    a = fxai.gradient(model_fn, params, x, y)
    scales = [0.001, 0.001, 30.0]
    d = torch.stack([torch.from_numpy(np.random.RandomState(i).uniform(-s, s, size=x.shape)) for i, s in
                     enumerate(scales)])
    with torch.no_grad():
        changed = net(x + d[2]).argmax(1) != y
    assert changed.any() and not changed.all()
    deltas = iter(d.flatten(1).view(3, x.shape[0], -1).numpy())

    def perturb_func(arr, indices, **kwargs):
        return arr + next(deltas)

    q = run_quantus(quantus.RelativeInputStability(nr_samples=3, perturb_func=perturb_func, **COMMON), net, x, y, a,
                    model_fn, params)
    got = M.relative_input_stability(model_fn, params, x, y, a, method=fxai.gradient, samples=3, perturb=fixed(d))
    assert np.isnan(q[changed.numpy()]).all() and torch.isfinite(got).all()
    kept = M.relative_input_stability(model_fn, params, x, y, a, method=fxai.gradient, samples=2, perturb=fixed(d[:2]))
    torch.testing.assert_close(got[changed], kept[changed], rtol=0, atol=0)
    np.testing.assert_allclose(got[~changed].numpy(), q[~changed.numpy()], rtol=1e-9)
