"""fxai.functional: a module becomes a pure function of (params, x) without being touched."""

import pytest
import torch
from conftest import ModuleSnapshot, make_tiny_cnn
from torch import nn

import fxai


def test_model_fn_equals_module(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    torch.testing.assert_close(model_fn(params, tiny_input), tiny_cnn(tiny_input), rtol=0, atol=0)


def test_params_hold_parameters_and_buffers_detached(tiny_cnn):
    _, params = fxai.functional(tiny_cnn)
    expected = {k for k, _ in tiny_cnn.named_parameters()} | {k for k, _ in tiny_cnn.named_buffers()}
    assert set(params) == expected - {"bn1.num_batches_tracked"}  # integer buffers stay with model_fn
    assert "bn1.running_mean" in params
    assert not any(p.requires_grad for p in params.values())
    for k, p in tiny_cnn.state_dict().items():
        if k in params:
            torch.testing.assert_close(params[k], p, rtol=0, atol=0)


def test_model_fn_uses_given_params_not_module(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    other = dict(params, **{"fc.bias": params["fc.bias"] + 1.0})
    torch.testing.assert_close(model_fn(other, tiny_input), tiny_cnn(tiny_input) + 1.0)


def test_module_not_mutated(tiny_input):
    module = make_tiny_cnn()
    module.fc.weight.grad = torch.ones_like(module.fc.weight)
    module.conv1.weight.requires_grad_(False)
    snap = ModuleSnapshot(module)
    model_fn, params = fxai.functional(module)
    model_fn(params, tiny_input)
    fxai.gradient(model_fn, params, tiny_input, 0)
    snap.assert_unchanged()


@pytest.mark.parametrize("layer", [nn.BatchNorm2d(3), nn.Dropout(0.1), nn.Dropout2d(0.1)])
def test_training_mode_refused(layer):
    module = nn.Sequential(nn.Conv2d(3, 3, 1), layer, nn.Flatten(), nn.LazyLinear(2)).train()
    with pytest.raises(ValueError, match=r"training mode.*eval\(\).*allow_training=True"):
        fxai.functional(module)
    assert module.training


def test_training_mode_allowed_on_request():
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).train()
    model_fn, params = fxai.functional(module, allow_training=True)
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = model_fn(params, x)
    expected = nn.functional.batch_norm(module[0](x), None, None, module[1].weight, module[1].bias, training=True)
    torch.testing.assert_close(out, module[3](expected.flatten(1)))


def test_training_mode_forward_leaves_module_buffers_alone():
    # A training-mode forward updates BatchNorm's running statistics; with allow_training=True those
    # writes must land in fxai's params, never in the user's module.
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    snap = ModuleSnapshot(module)
    model_fn, params = fxai.functional(module, allow_training=True)
    model_fn(params, torch.randn(5, 3, 4, 4) * 3 + 2)
    snap.assert_unchanged()


def test_training_module_without_stateful_layers_is_fine():
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).train()
    model_fn, params = fxai.functional(module)
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(model_fn(params, x), module(x))


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        fxai.functional(lambda x: x)


def test_functional_model_repr(tiny_cnn):
    model_fn, _ = fxai.functional(tiny_cnn)
    assert repr(model_fn) == "FunctionalModel(TinyCNN)"
    assert isinstance(model_fn, fxai.FunctionalModel) and model_fn.module is tiny_cnn
