"""Layer access: grids from token / channels-last activations, default layers, split models, FX and hook taps."""

import pytest
import torch
from conftest import Conv4, leftover_hooks, make_tiny_cnn, grad_cam_by_autograd

import fxai
from fxai._core.discovery import default_layer, resolve_layers, trace_modules
from fxai._core.functional import split
from fxai._core.layers import layer_and_input_gradients, layer_gradients, tapped
from fxai._core.grids import to_grid
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
        to_grid(torch.zeros(2, 15, 3))  # no count of leading tokens leaves a grid
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
    with pytest.raises(ValueError, match="unknown layer 'nope'; the model's top-level layers: conv1, bn1"):
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


# ---------------------------------------------------------------- taps: FX rewrite and hook fallback


class DataDependent(torch.nn.Module):
    """A model FX cannot trace (a branch on a tensor's value), so layer methods use the scoped hook tap."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv(x)
        if a.sum() > -1e9:
            a = torch.relu(a)
        return self.fc(a.mean((2, 3)))


_grad_cam_by_autograd = grad_cam_by_autograd


@pytest.mark.parametrize("make, layer, traced", [(make_tiny_cnn, "layer4", True), (DataDependent, "conv", False)])
def test_fx_tap_and_hook_tap_give_autograd_grad_cam(make, layer, traced, tiny_input):
    module = make().eval()
    model_fn, params = fxai.functional(module)
    target = torch.tensor([0, 1, 2])
    got = fxai.grad_cam(model_fn, params, tiny_input, target, layer=layer, upsample=False)
    assert (model_fn.graph_tap((layer,)) is not None) == traced
    torch.testing.assert_close(got, _grad_cam_by_autograd(module, tiny_input, target, layer))
    assert leftover_hooks(module) == []


def test_hook_tap_equals_fx_tap(tiny_input):
    from fxai._core.taps import module_tap

    model_fn, params = fxai.functional(make_tiny_cnn())
    deltas = (torch.randn(3, 8, 16, 16), torch.randn(3, 16, 8, 8))
    layers = ["relu1", "layer4"]
    fx_logits, fx_acts = module_tap(model_fn, layers)(params, tiny_input, deltas)
    model_fn._taps[tuple(layers)] = None  # what a model FX cannot trace gets
    hook_logits, hook_acts = module_tap(model_fn, layers)(params, tiny_input, deltas)
    torch.testing.assert_close(fx_logits, hook_logits, rtol=0, atol=0)
    for a, b in zip(fx_acts, hook_acts):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("fx", [True, False])
def test_in_place_op_after_the_layer_leaves_its_activation_alone(fx):
    # torchvision's ResNet applies ReLU(inplace=True) to bn1's output: the activation read at bn1 must stay
    # pre-ReLU (negative entries kept), with and without deltas.
    import torchvision

    module = torchvision.models.resnet18(num_classes=3).eval()
    model_fn, params = fxai.functional(module)
    if not fx:
        model_fn._taps[("bn1",)] = None
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = module.bn1(module.conv1(x)).detach()
    assert (expected < 0).any()
    _, (act,) = tapped(model_fn, ["bn1"])(params, x)
    torch.testing.assert_close(act, expected)
    _, (act,) = tapped(model_fn, ["bn1"])(params, x, (torch.zeros_like(expected),))
    torch.testing.assert_close(act, expected)
    cam = fxai.eigen_cam(model_fn, params, x, layer="bn1", upsample=False)
    assert cam.shape == (2, 16, 16)


def test_reused_layer_is_refused_by_both_taps():
    class Reuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    model_fn, params = fxai.functional(Reuse().eval())
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="runs more than once"):
        fxai.grad_cam(model_fn, params, x, 0, layer="conv")
    model_fn, params = fxai.functional(Reuse().eval())
    model_fn._taps[("conv",)] = None
    with pytest.raises(ValueError, match="runs more than once"):
        fxai.grad_cam(model_fn, params, x, 0, layer="conv")


def test_fx_tap_compiles_without_graph_breaks(tiny_input):
    # After one eager call has built the FX tap, the whole method is one graph (fullgraph=True).
    model_fn, params = fxai.functional(make_tiny_cnn())
    target = torch.tensor([0, 1, 2])
    eager = fxai.grad_cam(model_fn, params, tiny_input, target, layer="layer4")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fxai.grad_cam(model_fn, params, x, target, layer="layer4"), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(tiny_input), eager, rtol=1e-5, atol=1e-6)


def test_default_layer_of_token_models():
    """A ViT's default is the first norm of its last block (what docs/cam.md recommends); Swin keeps `permute`."""
    import torchvision

    with torch.device("meta"):                          # shapes only
        x = torch.zeros(1, 3, 224, 224)
        for build, expected in [(torchvision.models.vit_b_16, "encoder.layers.encoder_layer_11.ln_1"),
                                (torchvision.models.swin_t, "permute")]:
            model_fn, params = fxai.functional(build().eval())
            assert default_layer(model_fn, params, x) == expected
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8,
                                               mlp_dim=8, num_classes=3).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(vit.heads.head.weight)        # torchvision starts the head at zero: no gradient at all
    model_fn, params = fxai.functional(vit)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert default_layer(model_fn, params, x) == "encoder.layers.encoder_layer_1.ln_1"
    default = fxai.grad_cam(model_fn, params, x, torch.tensor([[0, 1, 2]] * 2))
    explicit = fxai.grad_cam(model_fn, params, x, torch.tensor([[0, 1, 2]] * 2),
                             layer="encoder.layers.encoder_layer_1.ln_1")
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert default.abs().sum() > 0
