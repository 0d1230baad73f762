"""SmoothGrad, SmoothGrad², VarGrad as transforms of any method: values, noise scale, keys, chunks."""

import pytest
import torch

import fxai


def _noise(key, samples, x, sigma):
    """The documented noise: N(0, (sigma * range(x_b))^2) drawn as one [S, B, ...] block from ``key``."""
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *([1] * (x.ndim - 1)))
    return torch.randn((samples, *x.shape), generator=torch.Generator().manual_seed(key)) * sigma * span


def _per_sample(method, model_fn, params, x, target, noise, /, **options):
    return torch.stack([method(model_fn, params, x + n, target, **options) for n in noise])


MEAN, SQUARE, VARIANCE = lambda m: m.mean(0), lambda m: (m * m).mean(0), lambda m: ((m - m.mean(0)) ** 2).mean(0)


@pytest.mark.parametrize("transform, reduce, inner, options", [
    (fxai.smoothgrad, MEAN, fxai.gradient, {}),
    (fxai.smoothgrad, MEAN, fxai.integrated_gradients, {"steps": 3, "method": "riemann_middle"}),
    (fxai.smoothgrad, MEAN, fxai.guided_backprop, {}),
    (fxai.smoothgrad_sq, SQUARE, fxai.gradient, {}),
    (fxai.vargrad, VARIANCE, fxai.integrated_gradients, {"steps": 3, "method": "riemann_middle"}),  # population
], ids=["smoothgrad-gradient", "smoothgrad-ig", "smoothgrad-guided", "smoothgrad_sq-gradient", "vargrad-ig"])
def test_transform_equals_explicit_loop(transform, reduce, inner, options, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    targets = torch.tensor([2, 0, 1])
    got = transform(inner, samples=4, sigma=0.2)(model_fn, params, tiny_input, targets, key=5, **options)
    maps = _per_sample(inner, model_fn, params, tiny_input, targets, _noise(5, 4, tiny_input, 0.2), **options)
    torch.testing.assert_close(got, reduce(maps), rtol=1e-4, atol=1e-6)


def test_vargrad_is_population_variance(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    mean = fxai.smoothgrad(fxai.gradient, samples=5)(model_fn, params, tiny_input, 1, key=3)
    sq = fxai.smoothgrad_sq(fxai.gradient, samples=5)(model_fn, params, tiny_input, 1, key=3)
    var = fxai.vargrad(fxai.gradient, samples=5)(model_fn, params, tiny_input, 1, key=3)
    torch.testing.assert_close(var, sq - mean**2, rtol=1e-3, atol=1e-6)
    maps = _per_sample(fxai.gradient, model_fn, params, tiny_input, 1, _noise(3, 5, tiny_input, 0.15))
    torch.testing.assert_close(var, maps.var(0, unbiased=False), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(var, maps.var(0, unbiased=True), rtol=1e-2)


def test_noise_std_is_relative_to_each_inputs_range():
    # model = identity, score = |x|^2 / 2: the gradient is x + noise, so VarGrad is the noise variance.
    x = torch.zeros(2, 1, 40, 50)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0, 10.0  # ranges 1 and 10
    model_fn = lambda p, x: x.flatten(1)  # noqa: E731
    var = fxai.vargrad(fxai.gradient, samples=200, sigma=0.1)(model_fn, {}, x, lambda z: (z * z).sum(-1) / 2, key=0)
    std = var.mean((1, 2, 3)).sqrt()
    torch.testing.assert_close(std, torch.tensor([0.1, 1.0]), rtol=0.01, atol=0)


def test_sigma_zero_is_the_method(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    got = fxai.smoothgrad(fxai.integrated_gradients, samples=3, sigma=0.0)(model_fn, params, tiny_input, 1, key=0,
                                                                            steps=4)
    torch.testing.assert_close(got, fxai.integrated_gradients(model_fn, params, tiny_input, 1, steps=4),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("transform", [fxai.smoothgrad, fxai.smoothgrad_sq, fxai.vargrad])
def test_keys_and_chunk_sizes(transform, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    method = transform(fxai.input_x_gradient, samples=4)
    a = method(model_fn, params, tiny_input, None, key=11)
    torch.testing.assert_close(method(model_fn, params, tiny_input, None, key=11), a, rtol=0, atol=0)
    torch.testing.assert_close(method(model_fn, params, tiny_input, None, key=torch.Generator().manual_seed(11)), a,
                               rtol=0, atol=0)
    for chunk_size in (2, 5):
        torch.testing.assert_close(method(model_fn, params, tiny_input, None, key=11, chunk_size=chunk_size), a,
                                   rtol=1e-5, atol=1e-8)
    assert not torch.allclose(method(model_fn, params, tiny_input, None, key=12), a)


def test_over_randomised_method_is_deterministic(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    refs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    method = fxai.smoothgrad(fxai.expected_gradients, samples=3)
    a = method(model_fn, params, tiny_input, 0, key=1, references=refs, samples=2)
    torch.testing.assert_close(method(model_fn, params, tiny_input, 0, key=1, references=refs, samples=2), a,
                               rtol=0, atol=0)
    torch.testing.assert_close(method(model_fn, params, tiny_input, 0, key=1, references=refs, samples=2,
                                      chunk_size=2), a, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(method(model_fn, params, tiny_input, 0, key=2, references=refs, samples=2), a)


def test_nested_transforms(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    method = fxai.vargrad(fxai.smoothgrad(fxai.gradient, samples=2), samples=3)
    a = method(model_fn, params, tiny_input, 1, key=0)
    assert a.shape == tiny_input.shape and torch.isfinite(a).all() and a.abs().sum() > 0
    torch.testing.assert_close(method(model_fn, params, tiny_input, 1, key=0), a, rtol=0, atol=0)
    assert method.__name__ == "vargrad(smoothgrad(gradient))"


def test_errors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(TypeError, match="key is required"):
        fxai.smoothgrad(fxai.gradient, samples=2)(model_fn, params, tiny_input, 0)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        fxai.smoothgrad(fxai.gradient, samples=0)
    with pytest.raises(ValueError, match="sigma must be a non-negative number"):
        fxai.smoothgrad(fxai.gradient, samples=2, sigma=-1)(model_fn, params, tiny_input, 0, key=0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fxai.smoothgrad(fxai.gradient, samples=2)(model_fn, params, tiny_input.long(), 0, key=0)


def test_metadata():
    sg = fxai.smoothgrad(fxai.integrated_gradients, samples=2)
    assert sg.__name__ == "smoothgrad(integrated_gradients)"
    assert "Smilkov" in sg.__doc__ and "integrated_gradients" in sg.__doc__
