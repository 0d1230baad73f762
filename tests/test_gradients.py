"""Vanilla gradient and input × gradient: closed forms, autograd agreement, chunking, differentiability."""

import pytest
import torch

import fxai


def test_linear_gradient_is_w(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(4, 2, 3, 3)
    w = linear_model.fc.weight.detach()
    targets = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(fxai.gradient(model_fn, params, x, targets), w[targets].view_as(x), rtol=0, atol=0)


def test_linear_input_x_gradient_is_w_times_x(linear_model):
    model_fn, params = fxai.functional(linear_model)
    x = torch.randn(4, 2, 3, 3)
    w = linear_model.fc.weight.detach()
    torch.testing.assert_close(fxai.input_x_gradient(model_fn, params, x, 1), w[1].view(1, 2, 3, 3) * x,
                               rtol=0, atol=0)
    ixg = fxai.input_x_gradient(model_fn, params, x, torch.tensor([[0, 1, 2]]).expand(4, 3))
    torch.testing.assert_close(ixg, w.view(1, 3, 2, 3, 3) * x[:, None], rtol=0, atol=0)


def test_gradient_equals_autograd(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    targets = torch.tensor([1, 4, 0])
    x = tiny_input.clone().requires_grad_()
    tiny_cnn(x).gather(1, targets[:, None]).sum().backward()
    torch.testing.assert_close(fxai.gradient(model_fn, params, tiny_input, targets), x.grad, rtol=1e-6, atol=1e-7)


def test_gradient_float64(tiny_cnn, tiny_input):
    module = tiny_cnn.double()
    model_fn, params = fxai.functional(module)
    g = fxai.gradient(model_fn, params, tiny_input.double(), 2)
    assert g.dtype == torch.float64
    x = tiny_input.double().requires_grad_()
    module(x)[:, 2].sum().backward()
    torch.testing.assert_close(g, x.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", [fxai.gradient, fxai.input_x_gradient])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunked_equals_unchunked(method, chunk_size, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    for target in (torch.tensor([1, 4, 0]), torch.tensor([[1, 2], [0, 0], [3, 4]]), None):
        torch.testing.assert_close(method(model_fn, params, tiny_input, target, chunk_size=chunk_size),
                                   method(model_fn, params, tiny_input, target), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
def test_bad_chunk_size(chunk_size, tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match="chunk_size must be a positive int or None"):
        fxai.gradient(model_fn, params, tiny_input, 0, chunk_size=chunk_size)


def test_gradient_differentiable_wrt_input():
    # f = softplus(w·x): d/dx sum(grad f) is analytic, a second-order check on the input path.
    def model_fn(p, x):
        return torch.nn.functional.softplus(x.flatten(1) @ p["w"])[:, None]

    w = torch.randn(18, dtype=torch.float64)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    hess = torch.func.jacrev(lambda x: fxai.gradient(model_fn, {"w": w}, x, 0).sum())(x)
    s = torch.sigmoid(x.flatten(1) @ w)
    torch.testing.assert_close(hess, ((s * (1 - s))[:, None] * w.sum() * w).view_as(x))


def test_keyword_only_options(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(TypeError):
        fxai.gradient(model_fn, params, tiny_input, 0, 2)


def test_maps_are_plain_tensors_unless_asked_to_be_differentiable(tiny_cnn, tiny_input):
    # Outside torch.func, the backward runs on torch.autograd; its results keep a graph only when an input or a
    # parameter requires grad, and an outer torch.no_grad() does not stop the attribution itself.
    model_fn, params = fxai.functional(tiny_cnn)
    g = fxai.gradient(model_fn, params, tiny_input, 1)
    assert not g.requires_grad and g.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(fxai.gradient(model_fn, params, tiny_input, 1), g)
    x = tiny_input.clone().requires_grad_()
    assert fxai.gradient(model_fn, params, x, 1).requires_grad
    cam = fxai.grad_cam(model_fn, params, x, 1, layer="layer4")
    assert cam.requires_grad and torch.autograd.grad(cam.sum(), x)[0].abs().sum() > 0


def test_a_model_writing_into_its_input(linear_model):
    class InPlace(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.mul_(2.0))

    model_fn, params = fxai.functional(InPlace(linear_model).eval())
    x = torch.randn(2, 2, 3, 3)
    before = x.clone()
    g = fxai.gradient(model_fn, params, x, 1)
    torch.testing.assert_close(g, 2 * params["inner.fc.weight"][1].view(2, 3, 3).expand(2, -1, -1, -1))
    assert torch.equal(x, before)
