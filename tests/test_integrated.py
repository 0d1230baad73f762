"""Integrated Gradients and Expected Gradients: paper toy, closed forms, completeness, quadrature rules."""

import pytest
import torch

import fxai

RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


# ---------------------------------------------------------------- quadrature rules


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [2, 5, 32])
def test_rule_weights_sum_to_one(rule, steps):
    alphas, weights = fxai.path_rule(rule, steps)
    assert alphas.shape == weights.shape == (steps,) and alphas.dtype == weights.dtype == torch.float64
    assert ((alphas >= 0) & (alphas <= 1)).all()
    assert abs(float(weights.sum()) - 1.0) < 1e-14


@pytest.mark.parametrize("rule, alphas", [
    ("riemann_left", [0, 0.25, 0.5, 0.75]),
    ("riemann_right", [0.25, 0.5, 0.75, 1]),
    ("riemann_middle", [0.125, 0.375, 0.625, 0.875]),
    ("riemann_trapezoid", [0, 1 / 3, 2 / 3, 1]),
])
def test_rule_points(rule, alphas):
    got, weights = fxai.path_rule(rule, 4)
    torch.testing.assert_close(got, torch.tensor(alphas, dtype=torch.float64))
    expected = [1 / 6, 1 / 3, 1 / 3, 1 / 6] if rule == "riemann_trapezoid" else [0.25] * 4
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_gauss_legendre_exact_for_polynomials(steps):
    alphas, weights = fxai.path_rule("gausslegendre", steps)
    for degree in range(2 * steps):
        assert abs(float((weights * alphas**degree).sum()) - 1 / (degree + 1)) < 1e-13


def test_rule_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        fxai.path_rule("simpson", 4)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        fxai.path_rule("riemann_left", 0)
    with pytest.raises(ValueError, match="steps must be at least 2 for the trapezoid rule"):
        fxai.path_rule("riemann_trapezoid", 1)


# ---------------------------------------------------------------- the paper's toy


# f(x1, x2) = relu(relu(x1) - 1 - relu(x2)) along (3a, a): the gradient is (1, -1) for a > 1/2, else 0
# (torch's relu'(0) = 0). With 4 points, every rule but riemann_left puts weight 1/2 above a = 1/2.
@pytest.mark.parametrize("rule, expected", [
    ("riemann_left", (0.75, -0.25)),
    ("riemann_right", (1.5, -0.5)),
    ("riemann_middle", (1.5, -0.5)),
    ("riemann_trapezoid", (1.5, -0.5)),
    ("gausslegendre", (1.5, -0.5)),
])
def test_ig_paper_toy(rule, expected, ig_toy):
    model_fn, params = fxai.functional(ig_toy)
    x = torch.tensor([[3.0, 1.0]])
    ig, err = fxai.integrated_gradients(model_fn, params, x, 0, steps=4, method=rule, return_error=True)
    torch.testing.assert_close(ig, torch.tensor([expected]), rtol=0, atol=1e-7)
    torch.testing.assert_close(err, torch.tensor([sum(expected) - 1.0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("rule", RULES)
def test_ig_paper_toy_converges(rule, ig_toy):
    model_fn, params = fxai.functional(ig_toy)
    x = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    ig = fxai.integrated_gradients(model_fn, params, x, torch.tensor([0, 1]), steps=101, method=rule)
    torch.testing.assert_close(ig, torch.tensor([[1.5, -0.5], [-1.5, 0.5]]), rtol=0, atol=3 * 1.5 / 101)


# ---------------------------------------------------------------- linear model: exact for every rule


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline_kind", ["number", "tensor", "callable"])
def test_ig_linear_is_w_times_x_minus_baseline(rule, baseline_kind, linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    b0 = {"number": 0.5, "tensor": torch.linspace(-1, 1, 9).view(1, 1, 3, 3),
          "callable": lambda x: x.mean((2, 3), keepdim=True)}[baseline_kind]
    b = b0(x) if callable(b0) else b0
    w = linear_model.fc.weight.detach()
    targets = torch.tensor([0, 2, 1])
    ig, err = fxai.integrated_gradients(model_fn, params, x, targets, baseline=b0, steps=3, method=rule,
                                        return_error=True)
    torch.testing.assert_close(ig, w[targets].view_as(x) * (x - b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(err, torch.zeros(3), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- real CNN


def test_ig_completeness_error_is_exact_arithmetic(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    targets = torch.tensor([[0, 1], [2, 3], [4, 0]])
    ig, err = fxai.integrated_gradients(model_fn, params, tiny_input, targets, steps=8, return_error=True)
    assert err.shape == (3, 2)
    logits, base = tiny_cnn(tiny_input), tiny_cnn(torch.zeros_like(tiny_input))
    gap = logits.gather(1, targets) - base.gather(1, targets)
    torch.testing.assert_close(err, ig.sum((2, 3, 4)) - gap, rtol=1e-5, atol=1e-5)


def test_ig_completeness_improves_with_steps(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    errors = [fxai.integrated_gradients(model_fn, params, tiny_input, 1, steps=s, method="riemann_middle",
                                        return_error=True)[1].abs().max() for s in (2, 64)]
    gap = (tiny_cnn(tiny_input)[:, 1] - tiny_cnn(torch.zeros_like(tiny_input))[:, 1]).abs().max()
    assert errors[1] < 0.02 * gap and errors[1] < errors[0]


def test_ig_equals_explicit_riemann_sum(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    b = 0.3 * torch.ones_like(tiny_input)
    grads = []
    for k in range(1, 6):
        xa = (b + k / 5 * (tiny_input - b)).requires_grad_()
        tiny_cnn(xa)[:, 3].sum().backward()
        grads.append(xa.grad)
    expected = (tiny_input - b) * torch.stack(grads).mean(0)
    got = fxai.integrated_gradients(model_fn, params, tiny_input, 3, baseline=b, steps=5, method="riemann_right")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_ig_chunked_equals_unchunked(chunk_size, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    full = fxai.integrated_gradients(model_fn, params, tiny_input, None, steps=4, return_error=True)
    part = fxai.integrated_gradients(model_fn, params, tiny_input, None, steps=4, return_error=True,
                                     chunk_size=chunk_size)
    torch.testing.assert_close(part[0], full[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(part[1], full[1], rtol=0, atol=1e-5)  # a difference of O(1) sums


def test_ig_baseline_errors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match="baseline of shape .* does not broadcast"):
        fxai.integrated_gradients(model_fn, params, tiny_input, 0, baseline=torch.zeros(2, 3, 16, 16), steps=2)
    with pytest.raises(TypeError, match="baseline must be a number, a tensor"):
        fxai.integrated_gradients(model_fn, params, tiny_input, 0, baseline="black", steps=2)
    with pytest.raises(ValueError, match="method must be one of"):
        fxai.integrated_gradients(model_fn, params, tiny_input, 0, method="simpson")


# ---------------------------------------------------------------- expected gradients


def test_eg_single_reference_linear_is_exact(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(3, 2, 3, 3)
    ref = torch.randn(1, 2, 3, 3)
    w = linear_model.fc.weight.detach()
    eg = fxai.expected_gradients(model_fn, params, x, 2, references=ref, samples=5, key=0)
    torch.testing.assert_close(eg, w[2].view(1, 2, 3, 3) * (x - ref), rtol=1e-5, atol=1e-6)


def test_eg_linear_is_w_times_x_minus_mean_of_drawn_references(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(2, 2, 3, 3)
    refs = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    w = linear_model.fc.weight.detach()
    eg = fxai.expected_gradients(model_fn, params, x, 0, references=refs, samples=64, key=1)
    # eg / w = x - mean(drawn refs): a constant per input, the mean of 64 draws from {0, 1, 2, 3}
    means = (x - eg / w[0].view(1, 2, 3, 3)).flatten(1)
    torch.testing.assert_close(means, means[:, :1].expand_as(means), rtol=0, atol=1e-4)
    draws = means[:, 0] * 64
    torch.testing.assert_close(draws, draws.round(), rtol=0, atol=1e-3)
    assert ((means[:, 0] > 1.0) & (means[:, 0] < 2.0)).all()


def test_eg_paper_toy_monte_carlo(ig_toy):
    model_fn, params = fxai.functional(ig_toy)
    x = torch.tensor([[3.0, 1.0]])
    eg = fxai.expected_gradients(model_fn, params, x, 0, references=torch.zeros(3, 2), samples=4000, key=0)
    # EG = (3, 1) * P(a > 1/2) * (1, -1); binomial standard error of 3 * P is 3 * 0.5 / sqrt(4000) = 0.024
    torch.testing.assert_close(eg, torch.tensor([[1.5, -0.5]]), rtol=0, atol=0.1)


def test_eg_keys_and_chunks(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    refs = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    run = lambda key, **kw: fxai.expected_gradients(model_fn, params, tiny_input, 1, references=refs,  # noqa: E731
                                                     samples=4, key=key, **kw)
    a = run(7)
    torch.testing.assert_close(run(7, chunk_size=1), a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(run(7, chunk_size=3), a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(run(torch.Generator().manual_seed(7)), a, rtol=0, atol=0)
    assert not torch.allclose(run(8), a)


def test_eg_errors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    refs = torch.zeros(2, 3, 16, 16)
    with pytest.raises(TypeError, match="key is required"):
        fxai.expected_gradients(model_fn, params, tiny_input, 0, references=refs)
    with pytest.raises(TypeError, match="key must be an int seed or a torch.Generator"):
        fxai.expected_gradients(model_fn, params, tiny_input, 0, references=refs, key=1.5)
    with pytest.raises(ValueError, match=r"references must be a batch of inputs shaped like x's"):
        fxai.expected_gradients(model_fn, params, tiny_input, 0, references=torch.zeros(2, 3, 8, 8), key=0)
    with pytest.raises(TypeError, match="references must be a floating-point tensor"):
        fxai.expected_gradients(model_fn, params, tiny_input, 0, references=refs.long(), key=0)
    with pytest.raises(TypeError, match="references"):
        fxai.expected_gradients(model_fn, params, tiny_input, 0, key=0)



def test_chunked_passes_report_progress_when_asked(tiny_cnn, tiny_input):
    # fxai._core.batching.reporting: a command line's progress inside a long method; the map is unchanged.
    from fxai._core.batching import reporting

    model_fn, params = fxai.functional(tiny_cnn)
    seen = []
    with reporting(lambda done, total: seen.append((done, total))):
        got = fxai.integrated_gradients(model_fn, params, tiny_input, 1, steps=4, chunk_size=5)
        fxai.rise(model_fn, params, tiny_input, 1, num_masks=4, cell_size=4, key=0, chunk_size=6)
    assert seen == [(5, 12), (10, 12), (12, 12), (6, 12), (12, 12)]
    torch.testing.assert_close(got, fxai.integrated_gradients(model_fn, params, tiny_input, 1, steps=4, chunk_size=5))
    fxai.gradient(model_fn, params, tiny_input, 1, chunk_size=1)
    assert len(seen) == 5  # nothing reported outside the block
