"""An unknown name gets the names closest to what was typed, then what exists: layers, methods, metrics, composites."""

import pytest
import torch
import torchvision

import fxai
from fxai._core.checks import closest


@pytest.fixture(scope="module")
def resnet():
    return fxai.functional(torchvision.models.resnet18(num_classes=4).eval())


@pytest.mark.parametrize("typed, first", [("layer5", "layer4"), ("layer4.2", "layer4.1"), ("fc1", "fc"),
                                          ("Layer4", "layer4")])
def test_unknown_layer_suggests_the_likely_name_and_lists_the_children(resnet, typed, first):
    model_fn, params = resnet
    with pytest.raises(ValueError) as err:
        fxai.grad_cam(model_fn, params, torch.rand(1, 3, 32, 32), layer=typed)
    text = str(err.value)
    assert text.startswith(f"layer: unknown layer {typed!r}; did you mean {first!r}")
    # every top-level child is named (none cut before layer4), and the count of layers is given
    assert "top-level layers: conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc" in text
    assert f"({len(dict(model_fn.module.named_modules())) - 1} layers in all" in text


def test_unknown_method_metric_and_composite_suggest(resnet):
    with pytest.raises(ValueError, match="unknown method 'intgrad'; did you mean .*'integrated_gradients'"):
        fxai.registry.method("intgrad")
    with pytest.raises(ValueError, match="unknown method 'smoothgrad2'; did you mean 'smoothgrad' or 'smoothgrad_sq'"):
        fxai.registry.method("smoothgrad2")
    with pytest.raises(ValueError, match=r"unknown metric 'delet'; did you mean 'deletion'\? available metrics \("):
        fxai.metrics.registry.metric("delet")
    model_fn, params = resnet
    with pytest.raises(ValueError, match="unknown composite 'epsilon_plus_flt'; did you mean 'epsilon_plus_flat'"):
        fxai.lrp(model_fn, params, torch.rand(1, 3, 32, 32), composite="epsilon_plus_flt")


def test_closest_ranks_close_matches_then_abbreviations():
    names = ["gradient", "input_x_gradient", "integrated_gradients", "grad_cam"]
    assert closest("integrated_gradient", names)[0] == "integrated_gradients"
    assert "integrated_gradients" in closest("intgrad", names)
    assert closest("zzz", names) == []
