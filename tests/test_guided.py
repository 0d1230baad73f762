"""Guided backprop, DeconvNet and backward rules: the 4×4 fixture in every ReLU spelling, no leaks."""

import pytest
import torch
import torch.nn.functional as F
from conftest import RELU_SPELLINGS, Conv4, active_modes, leftover_hooks

import fxai

GUIDED = [[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]]
DECONV = [[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]]


@pytest.mark.parametrize("spelling", list(RELU_SPELLINGS))
@pytest.mark.parametrize("method, expected", [(fxai.guided_backprop, GUIDED), (fxai.deconvnet, DECONV)])
def test_conv4_fixture(method, expected, spelling, conv4_input):
    module = Conv4(spelling).eval()
    model_fn, params = fxai.functional(module)
    got = method(model_fn, params, conv4_input, 0)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32).view(1, 1, 4, 4), rtol=0, atol=0)
    assert active_modes() == [] and leftover_hooks(module) == []


@pytest.mark.parametrize("spelling", list(RELU_SPELLINGS))
def test_conv4_plain_gradient_differs(spelling, conv4_input):
    # The fixture is not trivial: the plain gradient differs (the channel-1 paths cancel channel 0).
    model_fn, params = fxai.functional(Conv4(spelling).eval())
    g = fxai.gradient(model_fn, params, conv4_input, 0)
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(g, expected.view(1, 1, 4, 4), rtol=0, atol=0)


def test_rules_keep_the_forward(tiny_cnn, tiny_input):
    for rule in ("guided", "deconvnet"):
        with fxai.relu_rule(rule):
            out = tiny_cnn(tiny_input)
        torch.testing.assert_close(out, tiny_cnn(tiny_input), rtol=0, atol=0)


def test_with_relu_rule_composes_with_any_method(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    guided_ig = fxai.with_relu_rule(fxai.integrated_gradients, "guided")
    got = guided_ig(model_fn, params, tiny_input, 1, steps=3, method="riemann_right")
    # IG = (x - 0) * mean of guided gradients at the three path points
    path = [fxai.guided_backprop(model_fn, params, tiny_input * a, 1) for a in (1 / 3, 2 / 3, 1.0)]
    torch.testing.assert_close(got, tiny_input * torch.stack(path).mean(0), rtol=1e-5, atol=1e-7)
    assert guided_ig.__name__ == "integrated_gradients" and active_modes() == []


def test_guided_backprop_is_gradient_under_rule(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with fxai.relu_rule("guided"):
        inside = fxai.gradient(model_fn, params, tiny_input, 2)
    torch.testing.assert_close(inside, fxai.guided_backprop(model_fn, params, tiny_input, 2), rtol=0, atol=0)
    assert not torch.allclose(inside, fxai.gradient(model_fn, params, tiny_input, 2))


def test_guided_backprop_by_hand(tiny_cnn, tiny_input):
    # The same network written out, with each ReLU's backward replaced through a hook on its output.
    m = tiny_cnn

    def guided(t):
        t = t.clamp(min=0)
        t.register_hook(lambda g: g.clamp(min=0) * (t > 0))
        return t

    x = tiny_input.clone().requires_grad_()
    h = guided(m.bn1(m.conv1(x)))
    h = guided(m.conv2(h))
    h = guided(m.conv3(h))
    h = guided(m.layer4.conv(h))
    m.fc(h.mean((2, 3)))[:, 4].sum().backward()
    model_fn, params = fxai.functional(m)
    torch.testing.assert_close(fxai.guided_backprop(model_fn, params, tiny_input, 4), x.grad, rtol=1e-5, atol=1e-7)


def test_no_relu_means_plain_gradient(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(2, 2, 3, 3)
    for method in (fxai.guided_backprop, fxai.deconvnet):
        torch.testing.assert_close(method(model_fn, params, x, 1), fxai.gradient(model_fn, params, x, 1))


def test_custom_rule_function(conv4_input):
    class Identity(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x.clamp(min=0)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            return grad

    model_fn, params = fxai.functional(Conv4("F.relu").eval())
    # With pass-through ReLUs the map is the gradient of the purely linear network: fc row · conv.
    got = fxai.with_relu_rule(fxai.gradient, Identity)(model_fn, params, conv4_input, 0)
    signs = torch.tensor([1.0, 1, 1, 1, 1, -1, -1, -1]).view(2, 2, 2)  # the fc row
    expected = torch.zeros(4, 4)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                expected[i:i + 3, j:j + 3] += signs[c, i, j]
    torch.testing.assert_close(got, expected.view(1, 1, 4, 4), rtol=0, atol=0)


def test_mode_removed_after_exception(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)

    def boom(logits):
        raise RuntimeError("boom")

    for method in (fxai.guided_backprop, fxai.deconvnet):
        with pytest.raises(RuntimeError, match="boom"):
            method(model_fn, params, tiny_input, boom)
        assert active_modes() == []
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    F.relu(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0]))


def test_rules_under_vmap_and_jacrev(conv4_input):
    model_fn, params = fxai.functional(Conv4("nn.ReLU").eval())
    xs = torch.stack([conv4_input, conv4_input * 2])
    got = torch.func.vmap(lambda x: fxai.guided_backprop(model_fn, params, x, 0))(xs)
    torch.testing.assert_close(got[0], fxai.guided_backprop(model_fn, params, conv4_input, 0), rtol=0, atol=0)
    torch.testing.assert_close(got[1], fxai.guided_backprop(model_fn, params, conv4_input * 2, 0), rtol=0, atol=0)
