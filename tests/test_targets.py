"""Targets: int, LongTensor[B], None (top-1 on the clean input), callables, LongTensor[B, K]; clear errors."""

import pytest
import torch
from torch import nn

import fxai
from fxai import registry

# The backpropagation methods of the registry (any input shape), and every transform over input × gradient.
_IXG = registry.METHODS["input_x_gradient"]
METHODS = {**{m.name: m for m in registry.METHODS.values() if m.family == "gradient"},
           **{f"{t.name}(input_x_gradient)": registry.applied(t, _IXG, **t.quick) for t in registry.TRANSFORMS.values()}}


def _options(name, x, row=None):
    row = row or METHODS[name]
    references = torch.zeros(2, *x.shape[1:]) + torch.tensor([0.0, 0.5]).view(2, *([1] * (x.ndim - 1)))
    return row.fn, registry.options(row, size=x.shape[-2:], references=references, quick=True)


class Counting:
    """A model_fn that counts its forward calls and the rows it saw."""

    def __init__(self, model_fn):
        self.model_fn, self.calls, self.rows = model_fn, 0, 0

    def __call__(self, params, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model_fn(params, x)


@pytest.mark.parametrize("name", list(METHODS))
def test_int_and_tensor_targets_agree(name, tiny_cnn, tiny_input):
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    by_tensor = fn(model_fn, params, tiny_input, torch.full((3,), 2), **opts)
    by_int = fn(model_fn, params, tiny_input, 2, **opts)
    by_scalar = fn(model_fn, params, tiny_input, torch.tensor(2), **opts)
    torch.testing.assert_close(by_int, by_tensor, rtol=0, atol=0)
    torch.testing.assert_close(by_scalar, by_tensor, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(METHODS))
def test_none_is_top1_on_clean_input(name, tiny_cnn, tiny_input):
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    top1 = tiny_cnn(tiny_input).argmax(1)
    assert len(set(top1.tolist())) > 1  # the fixture exercises per-input classes
    torch.testing.assert_close(fn(model_fn, params, tiny_input, None, **opts),
                               fn(model_fn, params, tiny_input, top1, **opts), rtol=0, atol=0)


class Crossing(nn.Module):
    """Two classes on s = sum(x): 2s and s + 1. Top-1 is class 0 for s > 1 and class 1 below."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([2 * s, s + 1], dim=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_top1_fixed_along_path_and_noise(name):
    # On x (s = 3) the top class is 0; near the zero baseline and under large noise it is 1 for many
    # path points / samples. A method that re-resolved top-1 per row would mix the two gradients (2 and 1).
    row = METHODS[name]
    if "(" in name:  # a transform: large noise
        row = registry.applied(registry.TRANSFORMS[name.split("(")[0]], _IXG, samples=16, sigma=5.0)
    fn, opts = _options(name, torch.zeros(1, 1, 1, 3), row)
    x = torch.ones(2, 1, 1, 3)
    model_fn, params = fxai.functional(Crossing())
    torch.testing.assert_close(fn(model_fn, params, x, None, **opts), fn(model_fn, params, x, 0, **opts),
                               rtol=0, atol=0)


def test_top1_fixed_values_for_path_methods():
    model_fn, params = fxai.functional(Crossing())
    x = torch.ones(2, 1, 1, 3)
    torch.testing.assert_close(fxai.integrated_gradients(model_fn, params, x, None, steps=8,
                                                         method="riemann_left"), 2 * x)
    refs = torch.zeros(4, 1, 1, 3)
    torch.testing.assert_close(fxai.expected_gradients(model_fn, params, x, None, references=refs, samples=8, key=0),
                               2 * x)
    sg = fxai.smoothgrad(fxai.gradient, samples=32, sigma=5.0)(model_fn, params, x, None, key=0)
    torch.testing.assert_close(sg, torch.full_like(x, 2.0))


@pytest.mark.parametrize("name", list(METHODS))
def test_callable_target_equals_score_head(name, tiny_cnn, tiny_input):
    # A callable target (a mask-weighted score) gives the map of a model whose only output is that score.
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    w = torch.tensor([1.0, 0, -2, 0, 0.5])
    head = lambda p, x: (model_fn(p, x) * w).sum(-1, keepdim=True)  # noqa: E731
    got = fn(model_fn, params, tiny_input, lambda logits: (logits * w).sum(-1), **opts)
    torch.testing.assert_close(got, fn(head, params, tiny_input, 0, **opts), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gradient", "input_x_gradient", "integrated_gradients", "expected_gradients",
                                  "smoothgrad(input_x_gradient)"])
def test_callable_target_is_weighted_sum_of_classes(name, tiny_cnn, tiny_input):
    # Per-input weights: the map of sum_c w_bc * logit_bc is the same weighted sum of the K class maps
    # (these methods are linear in the score).
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    w = torch.tensor([[1.0, 0, -2, 0, 0.5], [0, 1, 0, 0, 0], [0.3, 0.3, 0.3, 0, 0]])
    got = fn(model_fn, params, tiny_input, lambda logits: (logits * w).sum(-1), **opts)
    k_maps = fn(model_fn, params, tiny_input, torch.arange(5).expand(3, 5), **opts)
    expected = (w.view(3, 5, 1, 1, 1) * k_maps).sum(1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_callable_target_gradient_exact(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(4, 2, 3, 3)
    mask = torch.tensor([1.0, 0.0, 2.0])
    g = fxai.gradient(model_fn, params, x, lambda logits: logits.softmax(-1)[:, 0] + (logits * mask).sum(-1))
    p = (linear_model(x)).softmax(-1)
    w = linear_model.fc.weight
    dsoft = p[:, :1] * (torch.eye(3)[0] - p) @ w  # d softmax_0 / dx = p0 (e0 - p) W
    torch.testing.assert_close(g, (dsoft + mask @ w).view_as(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, forwards", [("gradient", 1), ("input_x_gradient", 1), ("guided_backprop", 1),
                                            ("integrated_gradients", 1), ("smoothgrad(input_x_gradient)", 1)])
def test_k_targets_share_one_forward(name, forwards, tiny_cnn, tiny_input):
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    counting = Counting(model_fn)
    fn(counting, params, tiny_input, torch.arange(5).expand(3, 5), **opts)
    assert counting.calls == forwards
    single = Counting(model_fn)
    fn(single, params, tiny_input, 1, **opts)
    assert counting.rows == single.rows  # K targets cost no more forward rows than one


def test_integrated_gradients_top1_costs_one_extra_forward(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    counting = Counting(model_fn)
    fxai.integrated_gradients(counting, params, tiny_input, None, steps=4)
    assert (counting.calls, counting.rows) == (2, 3 + 4 * 3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("target", [5, 99, torch.tensor([0, 5, 1]), torch.tensor([[0, 1], [2, 7], [0, 0]])])
def test_out_of_range_target(target, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match=r"target.*out of range.*5 outputs"):
        fxai.gradient(model_fn, params, tiny_input, target)


@pytest.mark.parametrize("target", [-1, torch.tensor([0, -1, 0])])
def test_negative_target(target, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match="target.*negative"):
        fxai.gradient(model_fn, params, tiny_input, target)


@pytest.mark.parametrize("target", [torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3]), torch.zeros(3, 2, 2).long()])
def test_wrong_shape_target(target, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match=r"target must have shape \[B\] or \[B, K\] with B = 3"):
        fxai.integrated_gradients(model_fn, params, tiny_input, target, steps=2)


@pytest.mark.parametrize("target, match", [(torch.tensor([0.0, 1.0, 2.0]), "integer class indices"),
                                           (True, "bool"), ("cat", "got str")])
def test_wrong_type_target(target, match, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(TypeError, match=match):
        fxai.gradient(model_fn, params, tiny_input, target)


def test_callable_target_wrong_output(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match=r"callable target must return one floating score per input, a tensor \[B\]"):
        fxai.gradient(model_fn, params, tiny_input, lambda logits: logits.sum())


@pytest.mark.parametrize("name", list(METHODS))
def test_non_float_input(name, tiny_cnn, tiny_input):
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fn(model_fn, params, (tiny_input * 10).long(), 0, **opts)


@pytest.mark.parametrize("name", list(METHODS))
def test_wrong_rank_input(name, tiny_cnn, tiny_input):
    fn, opts = _options(name, tiny_input)
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match=r"x must be a batch \[B, ...\] with at least 2 dimensions"):
        fn(model_fn, params, tiny_input[0, 0, 0], 0, **opts)


def test_not_a_tensor_input(tiny_cnn):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fxai.gradient(model_fn, params, "image.png", 0)
    with pytest.raises(TypeError, match="every leaf of a structured input must be a tensor"):
        fxai.gradient(model_fn, params, [[0.0]], 0)


def test_model_fn_returning_non_tensor(tiny_input):
    with pytest.raises(TypeError, match="model_fn must return a tensor"):
        fxai.gradient(lambda p, x: (x.sum((1, 2, 3)),), {}, tiny_input, 0)


def test_class_target_needs_2d_logits(tiny_input):
    with pytest.raises(ValueError, match="callable target"):
        fxai.gradient(lambda p, x: x.flatten(1).sum(1), {}, tiny_input, 0)
    g = fxai.gradient(lambda p, x: x.flatten(1).sum(1), {}, tiny_input, lambda s: s)
    torch.testing.assert_close(g, torch.ones_like(tiny_input))
