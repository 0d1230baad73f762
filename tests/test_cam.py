"""The CAM family: closed forms, pytorch-grad-cam and Captum as oracles, real architectures, purity."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import Conv4, ModuleSnapshot, leftover_hooks, make_tiny_cnn

import fxai
from fxai import registry
from fxai._core.discovery import resolve_layers
from fxai._core.functional import split
from fxai.attribution.cam_driver import first_component
from fxai.postprocess import normalize

# The CAM family's layer methods from the registry, but the masked CAMs (one forward per channel; their own
# tests in test_perturbation.py).
# Randomised ones and Finer-CAM (its own target) are tested in test_cam_variants.py.
LAYER_METHODS = [m.fn for m in registry.METHODS.values()
                 if m.family == "cam" and m.layered and not m.randomised
                 and m.name not in ("score_cam", "ablation_cam", "is_cam", "finer_cam")]


def seeded(fn, seed=0, **kw):
    torch.manual_seed(seed)
    return fn(weights=None, **kw).eval()


@pytest.fixture(scope="module")
def resnet():
    return seeded(torchvision.models.resnet18)


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------- closed forms


def test_conv4_fixture(conv4_input):
    model_fn, params = fxai.functional(Conv4().eval())
    got = fxai.grad_cam(model_fn, params, conv4_input, 0, layer="conv", relu=False, upsample=False)
    torch.testing.assert_close(got, torch.tensor([[[11.25, 13.5], [20.25, 22.5]]]), rtol=0, atol=0)
    # channel weights (0.75, -0.5) are both non-zero: the ReLU changes nothing here, upsampling keeps the corners' order
    up = fxai.grad_cam(model_fn, params, conv4_input, 0, layer="conv")
    assert up.shape == (1, 4, 4) and up[0, 0, 0] == 11.25 and up[0, 3, 3] == 22.5


def test_split_model_matches_module(conv4_input):
    module = Conv4().eval()
    model_fn, params = fxai.functional(module)
    features = lambda p, x: torch.nn.functional.conv2d(x, p["conv.weight"], p["conv.bias"])  # noqa: E731
    head = lambda p, a: torch.relu(torch.relu(a).flatten(1) @ p["fc.weight"].T + p["fc.bias"])  # noqa: E731
    split_fn = split(features, head)
    for method in (fxai.grad_cam, fxai.hires_cam, fxai.layer_cam):
        want = method(model_fn, params, conv4_input, 0, layer="conv", upsample=False)
        torch.testing.assert_close(method(split_fn, params, conv4_input, 0, upsample=False), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one layer, 'features'"):
        fxai.grad_cam(split_fn, params, conv4_input, 0, layer="conv")


def test_grad_cam_is_cam_over_hw_for_gap_linear(resnet, image):
    model_fn, params = fxai.functional(resnet)
    target = torch.tensor([[3, 10], [7, 900]])
    c = fxai.cam(model_fn, params, image, target, layer="layer4", fc="fc", upsample=False)
    for method in (fxai.grad_cam, fxai.hires_cam):
        g = method(model_fn, params, image, target, layer="layer4", relu=False, upsample=False)
        torch.testing.assert_close(g, c / 4, rtol=1e-5, atol=1e-6)
    # CAM sums to the logit minus the bias (times h*w)
    logits = model_fn(params, image)
    torch.testing.assert_close(c.sum((-2, -1)) / 4, logits.gather(1, target) - params["fc.bias"][target],
                               rtol=1e-4, atol=1e-4)
    assert c.min() < 0  # no hidden ReLU
    torch.testing.assert_close(fxai.cam(model_fn, params, image, target, layer="layer4", chunk_size=1), c.new_tensor(
        fxai.postprocess.upsample(c, (64, 64))), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fxai.cam(model_fn, params, image, target[:, 1], upsample=False), c[:, 1])


def test_cam_errors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match="not fc\\(mean over positions"):
        fxai.cam(model_fn, params, tiny_input, 0, layer="conv3", fc="fc")  # layer4 sits between conv3 and pooling
    with pytest.raises(TypeError, match="class indices"):
        fxai.cam(model_fn, params, tiny_input, lambda logits: logits[:, 0], layer="layer4")
    with pytest.raises(ValueError, match="params has no 'head.weight'"):
        fxai.cam(model_fn, params, tiny_input, 0, layer="layer4", fc="head")
    with pytest.raises(ValueError, match="channels"):
        fxai.cam(model_fn, params, tiny_input, 0, layer="conv2", fc="fc")
    torch.testing.assert_close(fxai.cam(model_fn, params, tiny_input, 0, layer="layer4", upsample=False),
                               64 * fxai.grad_cam(model_fn, params, tiny_input, 0, layer="layer4", relu=False,
                                                  upsample=False), rtol=1e-4, atol=1e-4)


def test_first_component_sign_and_rank_one():
    torch.manual_seed(0)
    u, v = torch.randn(5, 1, 1), torch.randn(1, 3, 4)
    t = u * v + 10  # rank one around a per-channel offset: the component is v (up to centring and scale)
    proj = first_component(t)
    centred = (v - v.mean()).squeeze(0)
    cos = (proj * centred).sum() / (proj.norm() * centred.norm())
    assert abs(abs(float(cos)) - 1) < 1e-5
    assert float((proj * t.sum(0)).sum()) >= 0


def test_layer_cam_multi_layer_fusion(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    layers = ["relu2", "layer4"]  # 16x16 and 8x8
    got = fxai.layer_cam(model_fn, params, tiny_input, 1, layer=layers)
    parts = []
    for name in layers:
        m = fxai.layer_cam(model_fn, params, tiny_input, 1, layer=name, upsample=False)
        m = torch.tanh(2 * m / m.flatten(1).amax(1)[:, None, None])
        parts.append(fxai.postprocess.upsample(m, (16, 16)))
    torch.testing.assert_close(got, torch.maximum(*parts), rtol=1e-5, atol=1e-6)
    summed = fxai.grad_cam(model_fn, params, tiny_input, 1, layer=layers)
    single = [fxai.grad_cam(model_fn, params, tiny_input, 1, layer=n) for n in layers]
    torch.testing.assert_close(summed, single[0] + single[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="different resolutions"):
        fxai.grad_cam(model_fn, params, tiny_input, 1, layer=layers, upsample=False)


# ---------------------------------------------------------------- pytorch-grad-cam


def _pgc_sign_rule(projection):
    """Their SVD projection with fxai's documented sign rule (correlate with the channel sum)."""
    def project(batch):
        out = projection(batch)
        ref = np.asarray(batch).sum(1)
        signs = np.where((out * ref).reshape(len(out), -1).sum(1) < 0, -1.0, 1.0).astype(np.float32)
        return out * signs[:, None, None]
    return project


PGC = {
    "GradCAM": (fxai.grad_cam, {}),
    "HiResCAM": (fxai.hires_cam, {"relu": True}),
    "GradCAMPlusPlus": (fxai.grad_cam_plus_plus, {}),
    "XGradCAM": (fxai.xgrad_cam, {}),
    "LayerCAM": (fxai.layer_cam, {}),
    "EigenCAM": (fxai.eigen_cam, {"relu": True}),
    "EigenGradCAM": (fxai.eigen_grad_cam, {"relu": True}),
    "FullGrad": (fxai.full_grad, {}),
}


@pytest.mark.parametrize("name", list(PGC))
def test_matches_pytorch_grad_cam(name, resnet, image, monkeypatch):
    import pytorch_grad_cam
    from pytorch_grad_cam import eigen_cam, eigen_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    monkeypatch.setattr(eigen_cam, "get_2d_projection", _pgc_sign_rule(eigen_cam.get_2d_projection))
    monkeypatch.setattr(eigen_grad_cam, "get_2d_projection", _pgc_sign_rule(eigen_grad_cam.get_2d_projection))
    method, options = PGC[name]
    oracle_model = copy.deepcopy(resnet)  # pytorch-grad-cam writes .grad on the module
    targets = [ClassifierOutputTarget(5), ClassifierOutputTarget(321)]
    with getattr(pytorch_grad_cam, name)(model=oracle_model, target_layers=[oracle_model.layer4]) as oracle:
        want = torch.from_numpy(oracle(input_tensor=image.clone(), targets=targets))
    model_fn, params = fxai.functional(resnet)
    kwargs = {} if method is fxai.full_grad else {"layer": "layer4"}
    got = method(model_fn, params, image, torch.tensor([5, 321]), **kwargs, **options)
    torch.testing.assert_close(normalize(got), want, rtol=1e-5, atol=2e-5)


def test_eigen_smooth_matches_pytorch_grad_cam(resnet, image, monkeypatch):
    from pytorch_grad_cam import GradCAM, base_cam
    monkeypatch.setattr(base_cam, "get_2d_projection", _pgc_sign_rule(base_cam.get_2d_projection))
    oracle_model = copy.deepcopy(resnet)
    with GradCAM(model=oracle_model, target_layers=[oracle_model.layer4]) as oracle:
        want = torch.from_numpy(oracle(input_tensor=image.clone(), targets=None, eigen_smooth=True))
    model_fn, params = fxai.functional(resnet)
    got = fxai.grad_cam(model_fn, params, image, layer="layer4", eigen_smooth=True)
    torch.testing.assert_close(normalize(got), want, rtol=1e-5, atol=2e-5)


def test_aug_smooth_is_mean_over_flips_and_factors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    top1 = model_fn(params, tiny_input).argmax(1)
    got = fxai.grad_cam_plus_plus(model_fn, params, tiny_input, layer="layer4", aug_smooth=True, chunk_size=5)
    maps = []
    for flip in (False, True):
        for f in (0.9, 1.0, 1.1):
            v = (tiny_input.flip(-1) if flip else tiny_input) * f
            m = fxai.grad_cam_plus_plus(model_fn, params, v, top1, layer="layer4")
            maps.append(m.flip(-1) if flip else m)
    torch.testing.assert_close(got, torch.stack(maps).mean(0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Captum


def test_matches_captum_layer_grad_cam(resnet, image):
    from captum.attr import LayerGradCam
    model_fn, params = fxai.functional(resnet)
    oracle_model = copy.deepcopy(resnet)
    target = torch.tensor([5, 321])
    want = LayerGradCam(oracle_model, oracle_model.layer4).attribute(image, target, relu_attributions=False)
    got = fxai.grad_cam(model_fn, params, image, target, layer="layer4", relu=False, upsample=False)
    assert got.min() < 0
    torch.testing.assert_close(got, want[:, 0], rtol=1e-5, atol=1e-6)


def test_matches_captum_guided_grad_cam(resnet, image):
    from captum.attr import GuidedGradCam
    model_fn, params = fxai.functional(resnet)
    oracle_model = copy.deepcopy(resnet)
    target = torch.tensor([5, 321])
    want = GuidedGradCam(oracle_model, oracle_model.layer4).attribute(image.clone(), target)
    got = fxai.guided_grad_cam(model_fn, params, image, target, layer="layer4", upsample="nearest")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- architectures

ARCHS = {
    "resnet18": (torchvision.models.resnet18, "layer4"),
    "vgg11": (torchvision.models.vgg11, "features"),
    "densenet121": (torchvision.models.densenet121, "features"),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, "features"),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, "features"),
    "convnext_tiny": (torchvision.models.convnext_tiny, "features"),
}


GAP_LINEAR = {"resnet18", "efficientnet_b0"}  # the heads CAM applies to
# One method per code path (layer gradients, forward-only activations, biased layers, ReLU rule, head weights);
# the other gradient methods differ only in how they weigh the same tensors (checked on resnet18 above).
FAST = [fxai.grad_cam, fxai.eigen_cam, fxai.full_grad, fxai.guided_grad_cam, fxai.cam]


def _sweep(arch, methods):
    ctor, expected_layer = ARCHS[arch]
    module = seeded(ctor)
    snapshot = ModuleSnapshot(module)
    model_fn, params = fxai.functional(module)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # CAM layers of at least 2×2
    assert resolve_layers(model_fn, None, params=params, x=x) == [expected_layer]
    for method in methods:
        if method is fxai.cam and arch not in GAP_LINEAR:
            continue
        out = method(model_fn, params, x, 1)
        want = (1, 3, 64, 64) if method is fxai.guided_grad_cam else (1, 64, 64)
        assert out.shape == want and out.isfinite().all(), method.__name__
    if arch == "vgg11":
        with pytest.raises(ValueError, match="cam needs"):
            fxai.cam(model_fn, params, x, 1)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_methods_run_on_architecture(arch):
    _sweep(arch, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_method_runs_on_architecture(arch):
    _sweep(arch, LAYER_METHODS + [fxai.full_grad])


def _vit_tokens(t):
    return t[:, 1:, :].reshape(t.shape[0], 2, 2, t.shape[2]).permute(0, 3, 1, 2)


def test_vit_tokens_to_grid_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = "encoder.layers.encoder_layer_1.ln_1"
    model_fn, params = fxai.functional(vit)
    got = fxai.grad_cam(model_fn, params, x, 3, layer=layer)
    explicit = fxai.grad_cam(model_fn, params, x, 3, layer=layer, reshape=_vit_tokens)
    torch.testing.assert_close(got, explicit, rtol=0, atol=0)
    oracle_model = copy.deepcopy(vit)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with GradCAM(model=oracle_model, target_layers=[oracle_model.encoder.layers.encoder_layer_1.ln_1],
                 reshape_transform=_vit_tokens) as oracle:
        want = torch.from_numpy(oracle(input_tensor=x.clone(), targets=[ClassifierOutputTarget(3)] * 2))
    torch.testing.assert_close(normalize(got), want, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(fxai.grad_cam(model_fn, params, x, 3), got, rtol=0, atol=0)  # the default layer
    for method in LAYER_METHODS:
        if method not in (fxai.cam, fxai.shapley_cam):  # torch has no second derivative of its CPU attention kernel
            out = method(model_fn, params, x, 3, layer=layer)
            assert out.shape[-2:] == (32, 32) and out.isfinite().all(), method.__name__


def test_swin_channels_last_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                              window_size=[2, 2], num_classes=10).eval()  # swin_t's layout, small
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model_fn, params = fxai.functional(swin)
    got = fxai.grad_cam(model_fn, params, x, 3, layer="features")  # [B, 4, 4, 32]: channels last
    oracle_model = copy.deepcopy(swin)
    with GradCAM(model=oracle_model, target_layers=[oracle_model.features],
                 reshape_transform=lambda t: t.permute(0, 3, 1, 2)) as oracle:
        want = torch.from_numpy(oracle(input_tensor=x.clone(), targets=[ClassifierOutputTarget(3)]))
    torch.testing.assert_close(normalize(got), want, rtol=1e-5, atol=2e-5)
    assert resolve_layers(model_fn, None, params=params, x=x) == ["permute"]
    torch.testing.assert_close(fxai.grad_cam(model_fn, params, x, 3),
                               fxai.grad_cam(model_fn, params, x, 3, layer="permute"), rtol=0, atol=0)


@pytest.mark.slow
def test_swin_t_runs():
    swin = seeded(torchvision.models.swin_t)
    model_fn, params = fxai.functional(swin)
    out = fxai.grad_cam(model_fn, params, torch.randn(1, 3, 64, 64), 3)
    assert out.shape == (1, 64, 64) and out.isfinite().all()


# ---------------------------------------------------------------- targets, chunks, gradients, purity


@pytest.mark.parametrize("method", [m for m in LAYER_METHODS if m is not fxai.cam] + [fxai.full_grad])
def test_k_targets_chunked(method, tiny_cnn, tiny_input):
    # Column k against target column k: the registry's contract test.
    model_fn, params = fxai.functional(tiny_cnn)
    kw = {} if method is fxai.full_grad else {"layer": "layer4"}
    target = torch.tensor([[0, 4], [1, 2], [3, 3]])
    many = method(model_fn, params, tiny_input, target, **kw)
    torch.testing.assert_close(method(model_fn, params, tiny_input, target, chunk_size=2, **kw), many,
                               rtol=1e-5, atol=1e-6)


def test_differentiable_wrt_params(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)

    def loss(p):
        return fxai.grad_cam(model_fn, p, tiny_input, 0, layer="conv3").square().mean()

    floats = {k: v for k, v in params.items() if k.endswith(("weight", "bias"))}
    grads = torch.func.grad(lambda f: loss({**params, **f}))(floats)
    assert all(g.isfinite().all() for g in grads.values())
    assert grads["conv3.weight"].abs().sum() > 0 and grads["fc.weight"].abs().sum() > 0


def test_training_moves_cam_mass():
    # A CAM-guided loss trained by SGD moves the positive Grad-CAM mass from the left half to the right half.
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    model_fn, params = fxai.functional(module)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[..., 4:] -= 1
    right = torch.zeros(8, 8)
    right[:, 4:] = 1

    def objective(p):
        m = fxai.grad_cam(model_fn, p, x, 0, layer="1", relu=False)
        return ((m * (1 - right)).sum((-2, -1)) - (m * right).sum((-2, -1))).mean()

    def masses(p):
        m = fxai.grad_cam(model_fn, p, x, 0, layer="1")
        return float((m * right).sum()), float((m * (1 - right)).sum())

    assert masses(params)[0] == 0 and masses(params)[1] > 0
    p = dict(params)
    for _ in range(10):
        g = torch.func.grad(objective)(p)
        assert all(v.isfinite().all() for v in g.values())
        p = {k: v - 0.5 * g[k] for k, v in p.items()}
    on_right, on_left = masses(p)
    assert on_right > 0 and on_left == 0


def test_no_hooks_left_and_module_unchanged(tiny_cnn, tiny_input):
    snapshot = ModuleSnapshot(tiny_cnn)
    model_fn, params = fxai.functional(tiny_cnn)
    before = {k: v.clone() for k, v in params.items()}
    for method in LAYER_METHODS + [fxai.full_grad]:
        kw = {} if method is fxai.full_grad else {"layer": "layer4"}
        if method is fxai.cam:
            continue
        method(model_fn, params, tiny_input, **kw)
        with pytest.raises(ValueError, match="out of range"):
            method(model_fn, params, tiny_input, 99, **kw)
        assert leftover_hooks(tiny_cnn) == []
    snapshot.assert_unchanged()
    assert all(torch.equal(params[k], v) for k, v in before.items())


def test_argument_errors(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'; did you mean 'conv3', 'conv2' or 'conv1'\? "
                                         r"the model's top-level layers: conv1, bn1"):
        fxai.grad_cam(model_fn, params, tiny_input, layer="conv9")
    with pytest.raises(ValueError, match="upsample must be one of"):
        fxai.grad_cam(model_fn, params, tiny_input, layer="layer4", upsample="area")
    with pytest.raises(TypeError, match="fxai.functional"):
        fxai.grad_cam(lambda p, x: x.flatten(1), params, tiny_input, layer="layer4")
    with pytest.raises(ValueError, match="4 dimensions"):
        fxai.grad_cam(model_fn, params, tiny_input[0], layer="layer4")


def test_reused_module_is_refused(resnet, image):
    model_fn, params = fxai.functional(resnet)
    with pytest.raises(ValueError, match="more than once"):
        fxai.grad_cam(model_fn, params, image, layer="layer4.1.relu")
    assert leftover_hooks(resnet) == []


def test_tiny_cnn_default_layer(tiny_input):
    model_fn, params = fxai.functional(make_tiny_cnn())
    torch.testing.assert_close(fxai.grad_cam(model_fn, params, tiny_input, 0),
                               fxai.grad_cam(model_fn, params, tiny_input, 0, layer="layer4"))
