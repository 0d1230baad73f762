"""Layer access: grids from token / channels-last activations, default layers, split models, scoped taps."""

import pytest
import torch
from conftest import Conv4, leftover_hooks, make_tiny_cnn

import fxai
from fxai._core.layers import (default_layer, layer_and_input_gradients, layer_gradients, resolve_layers, split,
                               to_grid, trace_modules)
from fxai._core.targets import as_target


def test_to_grid_vit_tokens_drop_class_token():
    t = torch.arange(2 * 50 * 3.0).view(2, 50, 3)
    g = to_grid(t, size=(112, 112))
    assert g.shape == (2, 3, 7, 7)
    torch.testing.assert_close(g[1, 2, 0, 1], t[1, 1 + 1, 2])  # token 1 + (row 0, col 1)
    assert to_grid(torch.zeros(2, 49, 3)).shape == (2, 3, 7, 7)  # no class token
    assert to_grid(torch.zeros(2, 1 + 6, 3), size=(64, 96)).shape == (2, 3, 2, 3)  # non-square input
    assert to_grid(torch.zeros(2, 2, 3)).shape == (2, 3, 1, 1)


def test_to_grid_channels_last_and_first():
    t = torch.randn(2, 4, 4, 768)
    torch.testing.assert_close(to_grid(t), t.permute(0, 3, 1, 2))
    u = torch.randn(2, 512, 4, 4)
    assert to_grid(u) is u
    v = torch.randn(2, 7, 7, 7)
    assert to_grid(v) is v  # ambiguous: channels first
    torch.testing.assert_close(to_grid(v, lambda a: a.permute(0, 3, 1, 2)), v.permute(0, 3, 1, 2))


def test_to_grid_errors():
    with pytest.raises(ValueError, match="reshape="):
        to_grid(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="tokens"):
        to_grid(torch.zeros(2, 11, 3))
    with pytest.raises(ValueError, match="must return a grid"):
        to_grid(torch.zeros(2, 4, 3), lambda a: a)


def test_layer_gradients_match_autograd(conv4_input):
    module = Conv4().eval()
    model_fn, params = fxai.functional(module)
    x = conv4_input.repeat(2, 1, 1, 1) * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)
    acts, grads, scores, xgrad = layer_and_input_gradients(model_fn, params, x, as_target(0, x), ["conv"])
    a = torch.nn.functional.conv2d(x, params["conv.weight"], params["conv.bias"]).requires_grad_()
    xr = x.clone().requires_grad_()
    y = torch.relu(torch.relu(a).flatten(1) @ params["fc.weight"].T)[:, 0]
    torch.testing.assert_close(acts[0], a.detach())
    torch.testing.assert_close(grads[0], torch.autograd.grad(y.sum(), a)[0])
    y2 = module(xr)[:, 0]
    torch.testing.assert_close(xgrad, torch.autograd.grad(y2.sum(), xr)[0])
    torch.testing.assert_close(scores, y.detach())
    acts2, grads2, _ = layer_gradients(model_fn, params, x, as_target(torch.tensor([[0, 1], [0, 1]]), x), ["conv"],
                                       chunk_size=1)
    torch.testing.assert_close(grads2[0][:, 0], grads[0])


def test_resolve_and_default_layers(tiny_input):
    module = make_tiny_cnn()
    model_fn, params = fxai.functional(module)
    assert default_layer(model_fn, params, tiny_input) == "layer4"
    assert resolve_layers(model_fn, None, params=params, x=tiny_input) == ["layer4"]
    with pytest.raises(ValueError, match="unknown layer 'nope'; available layers: conv1, bn1"):
        resolve_layers(model_fn, "nope")
    with pytest.raises(ValueError, match="listed twice"):
        resolve_layers(model_fn, ["conv1", "conv1"])
    with pytest.raises(TypeError, match="fxai.functional"):
        resolve_layers(lambda p, x: x, "conv1")
    calls = trace_modules(model_fn, params, tiny_input)
    assert calls["layer4.conv"] == 1 and "conv1" in calls
    assert leftover_hooks(module) == []


def test_split_model_layer():
    f = split(lambda p, x: x * p["w"], lambda p, a: a.flatten(1))
    p = {"w": torch.tensor(2.0)}
    x = torch.ones(1, 1, 2, 2)
    assert resolve_layers(f, None, params=p, x=x) == ["features"]
    assert default_layer(f, p, x) == "features"
    torch.testing.assert_close(f(p, x), 2 * x.flatten(1))
    with pytest.raises(TypeError, match="callables"):
        split(1, lambda p, a: a)


def test_tap_removed_after_exception(tiny_input):
    module = make_tiny_cnn()
    model_fn, params = fxai.functional(module)

    def bad(logits):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        layer_gradients(model_fn, params, tiny_input, as_target(bad, tiny_input), ["layer4"])
    assert leftover_hooks(module) == []
