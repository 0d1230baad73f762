"""Cross-checks against Captum (test-only oracle) on torchvision's resnet18 with random weights.

Compared in float64, to 1e-9 relative (1e-7 where Captum rounds to float32); one
float32 case checks the user-facing precision (1e-5 relative). Captum's random
draws (NoiseTunnel's noise, GradientShap's baselines and path points) are
replaced, in the test only, by the draws fxai makes from the same key.
"""

import numpy as np
import pytest
import torch
import torchvision

import fxai

captum_attr = pytest.importorskip("captum.attr")

B, S, H = 2, 3, 32


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().double()
    x = torch.rand(B, 3, H, H, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x, torch.tensor([3, 7])


def close(got, expected, rtol=1e-9):
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def test_gradient_vs_saliency(resnet):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    close(fxai.gradient(model_fn, params, x, t), captum_attr.Saliency(model).attribute(x, target=t, abs=False))


def test_gradient_vs_saliency_float32(resnet):
    model, x, t = resnet
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model.load_state_dict({k: v.float() for k, v in resnet[0].state_dict().items()})
    model_fn, params = fxai.functional(model)
    x = x.float()
    close(fxai.gradient(model_fn, params, x, t), captum_attr.Saliency(model).attribute(x, target=t, abs=False),
          rtol=1e-5)


def test_input_x_gradient(resnet):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    close(fxai.input_x_gradient(model_fn, params, x, t), captum_attr.InputXGradient(model).attribute(x, target=t))


@pytest.mark.parametrize("rule", ["riemann_right", "gausslegendre"])  # Captum's trapezoid weights sum to (n-1)/n
def test_integrated_gradients(rule, resnet):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    baseline = torch.full_like(x, 0.25)
    ours, err = fxai.integrated_gradients(model_fn, params, x, t, baseline=baseline, steps=4, method=rule,
                                          return_error=True)
    theirs, delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=baseline, target=t, n_steps=4, method=rule, return_convergence_delta=True)
    close(ours, theirs, rtol=1e-7)  # Captum casts its quadrature weights to float32
    close(err, delta, rtol=1e-7)


@pytest.mark.parametrize("ours, theirs", [(fxai.guided_backprop, captum_attr.GuidedBackprop),
                                          (fxai.deconvnet, captum_attr.Deconvolution)])
def test_backward_rules(ours, theirs, resnet):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    expected = theirs(model).attribute(x, target=t)
    close(ours(model_fn, params, x, t), expected)
    assert not torch.allclose(fxai.gradient(model_fn, params, x, t), expected)


def test_expected_gradients_vs_gradient_shap(resnet, monkeypatch):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    refs = torch.rand(5, 3, H, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # fxai's draws from key 3: reference indices [S, B], then path points [S, B]
    gen = torch.Generator().manual_seed(3)
    pick = torch.randint(5, (S, B), generator=gen)
    alphas = torch.rand((S, B), generator=gen)
    # Captum stacks the S samples of each input contiguously (input-major)
    monkeypatch.setattr(np.random, "choice", lambda n, size: np.asarray(pick.t().reshape(-1)))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: alphas.t().reshape(-1).double().numpy())
    theirs = captum_attr.GradientShap(model).attribute(x, baselines=refs, n_samples=S, stdevs=0.0, target=t)
    ours = fxai.expected_gradients(model_fn, params, x, t, references=refs, samples=S, key=3)
    close(ours, theirs, rtol=1e-7)  # path points a*x + (1-a)*b vs b + a*(x-b): same up to rounding


@pytest.mark.parametrize("transform, nt_type, inner, captum_inner, options, captum_options", [
    (fxai.smoothgrad, "smoothgrad", fxai.gradient, captum_attr.Saliency, {}, {"abs": False}),
    (fxai.smoothgrad_sq, "smoothgrad_sq", fxai.gradient, captum_attr.Saliency, {}, {"abs": False}),
    (fxai.vargrad, "vargrad", fxai.gradient, captum_attr.Saliency, {}, {"abs": False}),
    (fxai.smoothgrad, "smoothgrad", fxai.integrated_gradients, captum_attr.IntegratedGradients,
     {"steps": 3}, {"n_steps": 3}),  # both default to Gauss-Legendre
], ids=["smoothgrad", "smoothgrad_sq", "vargrad", "smoothgrad-ig"])
def test_noise_tunnel(transform, nt_type, inner, captum_inner, options, captum_options, resnet, monkeypatch):
    model, x, t = resnet
    model_fn, params = fxai.functional(model)
    sigma = 0.2
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(B, 1, 1, 1)
    noise = torch.randn((S, *x.shape), generator=torch.Generator().manual_seed(5)).double() * sigma * span
    stacked = noise.transpose(0, 1).reshape(B * S, *x.shape[1:])  # Captum: input-major
    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input",
                        staticmethod(lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + stacked))
    theirs = captum_attr.NoiseTunnel(captum_inner(model)).attribute(
        x, nt_type=nt_type, nt_samples=S, stdevs=1.0, target=t, **captum_options)
    ours = transform(inner, samples=S, sigma=sigma)(model_fn, params, x, t, key=5, **options)
    # Captum's VarGrad is E[a^2] - E[a]^2 (cancellation); its IG weights are float32
    close(ours, theirs, rtol=1e-9 if captum_inner is captum_attr.Saliency and nt_type != "vargrad" else 1e-7)
