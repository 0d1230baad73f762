"""The later CAMs (element-wise Grad-CAM, Shapley-CAM, KPCA-CAM, Seg-Eigen-CAM, Refine-CAM, Finer-CAM,
Smooth Grad-CAM++, SS-CAM, IS-CAM) and Score-/Ablation-CAM over several layers, with eigen and augmentation
smoothing: pytorch-grad-cam 1.5.7 and TorchCAM 0.5 as oracles, closed forms."""

import contextlib
import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxai
from fxai.postprocess import normalize
from fxai.postprocess import upsample as up


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def smooth_net():
    """A CNN with GELUs after the explained layer ``"3"``: its Hessian there is not zero."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(8, 8, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)).eval()


def _signed(projection):
    """pytorch-grad-cam's projection with fxai's sign rule (correlate with the channel sum)."""
    def project(batch, *args, **kwargs):
        out = projection(batch, *args, **kwargs)
        ref = np.asarray(batch).sum(1)
        return out * np.where((out * ref).reshape(len(out), -1).sum(1) < 0, -1.0, 1.0).astype(np.float32)[:, None, None]
    return project


def _pgc(cls, model, layers, x, classes, **call):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    oracle_model = copy.deepcopy(model)  # pytorch-grad-cam writes .grad on the module
    targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
    init = call.pop("init", {})
    oracle = cls(model=oracle_model, target_layers=[oracle_model.get_submodule(n) for n in layers], **init)
    oracle.batch_size = 512
    with oracle if hasattr(oracle, "__enter__") else contextlib.nullcontext():  # RefineCAM has no context
        return torch.from_numpy(oracle(input_tensor=x.clone(), targets=targets, **call))


# ---------------------------------------------------------------- pytorch-grad-cam


@pytest.mark.parametrize("name,method,options", [
    ("GradCAMElementWise", fxai.grad_cam_element_wise, {}),
    ("SegEigenCAM", fxai.seg_eigen_cam, {"relu": True}),
    ("ShapleyCAM", fxai.shapley_cam, {}),
])
def test_matches_pytorch_grad_cam(name, method, options, resnet, image):
    import pytorch_grad_cam
    want = _pgc(getattr(pytorch_grad_cam, name), resnet, ["layer4"], image, [5, 321])
    model_fn, params = fxai.functional(resnet)
    got = method(model_fn, params, image, torch.tensor([5, 321]), layer="layer4", **options)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)


def test_element_wise_eigen_smooth_matches_pytorch_grad_cam(resnet, image, monkeypatch):
    from pytorch_grad_cam import GradCAMElementWise, grad_cam_elementwise
    monkeypatch.setattr(grad_cam_elementwise, "get_2d_projection", _signed(grad_cam_elementwise.get_2d_projection))
    want = _pgc(GradCAMElementWise, resnet, ["layer4"], image, [5, 321], eigen_smooth=True)
    model_fn, params = fxai.functional(resnet)
    got = fxai.grad_cam_element_wise(model_fn, params, image, torch.tensor([5, 321]), layer="layer4", eigen_smooth=True)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine", "linear"])
def test_kpca_cam_matches_pytorch_grad_cam(kernel, resnet, image, monkeypatch):
    from pytorch_grad_cam import KPCA_CAM, kpca_cam
    monkeypatch.setattr(kpca_cam, "get_2d_projection_kernel", _signed(kpca_cam.get_2d_projection_kernel))
    want = _pgc(KPCA_CAM, resnet, ["layer4"], image, [5, 321], init={"kernel": kernel})
    model_fn, params = fxai.functional(resnet)
    got = fxai.kpca_cam(model_fn, params, image, layer="layer4", kernel=kernel, relu=True)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)


def test_refine_cam_matches_pytorch_grad_cam_and_is_the_product(resnet, image):
    from pytorch_grad_cam import RefineCAM
    want = _pgc(RefineCAM, resnet, ["layer3", "layer4"], image, [5, 321])
    model_fn, params = fxai.functional(resnet)
    got = fxai.refine_cam(model_fn, params, image, torch.tensor([5, 321]), layer=["layer3", "layer4"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    parts = [normalize(fxai.grad_cam_plus_plus(model_fn, params, image, torch.tensor([5, 321]), layer=n))
             for n in ("layer3", "layer4")]
    torch.testing.assert_close(got, normalize(parts[0] * parts[1]), rtol=0, atol=1e-6)


def test_shapley_cam_hessian_term_on_a_smooth_net():
    from pytorch_grad_cam import ShapleyCAM
    net = smooth_net()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    want = _pgc(ShapleyCAM, net, ["3"], x, [1, 4])
    model_fn, params = fxai.functional(net)
    got = fxai.shapley_cam(model_fn, params, x, torch.tensor([1, 4]), layer="3", upsample=False)
    grad = fxai.grad_cam(model_fn, params, x, torch.tensor([1, 4]), layer="3", upsample=False)
    assert (normalize(got) - normalize(grad)).abs().max() > 1e-2  # the Hessian term matters here
    torch.testing.assert_close(normalize(up(got, (16, 16))), want, rtol=0, atol=1e-5)
    # w = mean(G - H A / 2), with H A by double backward
    xs = x.clone()
    with torch.enable_grad():
        act = net[:4](xs)
        logits = net[4:](act)
        g = torch.autograd.grad(logits.gather(1, torch.tensor([[1], [4]])).sum(), act, create_graph=True)[0]
        hvp = torch.autograd.grad(g, act, grad_outputs=act.detach())[0]
    w = (g - 0.5 * hvp).detach().mean((2, 3), keepdim=True)
    torch.testing.assert_close(got, (w * act.detach()).sum(1).clamp(min=0), rtol=1e-5, atol=1e-6)
    many = fxai.shapley_cam(model_fn, params, x, torch.tensor([[1, 2], [4, 0]]), layer="3", upsample=False)
    torch.testing.assert_close(many[:, 0], got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", [None, 3])
def test_finer_cam_matches_pytorch_grad_cam(target, resnet, image):
    from pytorch_grad_cam import FinerCAM
    oracle_model = copy.deepcopy(resnet)
    with FinerCAM(oracle_model, [oracle_model.layer4]) as oracle:
        want = torch.from_numpy(oracle(image.clone(), targets=None, target_idx=target, alpha=0.8))
    model_fn, params = fxai.functional(resnet)
    got = fxai.finer_cam(model_fn, params, image, target, layer="layer4", alpha=0.8)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)
    many = fxai.finer_cam(model_fn, params, image, torch.tensor([[3, 7], [3, 9]]), layer="layer4", alpha=0.8)
    if target is not None:
        torch.testing.assert_close(many[:, 0], got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="comparison"):
        fxai.finer_cam(model_fn, params, image, 3, layer="layer4", comparison=(-1,))


# ---------------------------------------------------------------- several layers, eigen and aug smoothing


@pytest.mark.parametrize("name,method,options", [
    ("ScoreCAM", fxai.score_cam, {"score": "logit", "channel_softmax": True, "align_corners": True}),
    ("AblationCAM", fxai.ablation_cam, {}),
])
def test_masked_cams_several_layers_and_eigen_smooth(name, method, options, tiny_cnn, tiny_input, monkeypatch):
    import pytorch_grad_cam
    from pytorch_grad_cam import base_cam
    monkeypatch.setattr(base_cam, "get_2d_projection", _signed(base_cam.get_2d_projection))
    cls = getattr(pytorch_grad_cam, name)
    model_fn, params = fxai.functional(tiny_cnn)
    classes = torch.tensor([0, 4, 2])
    layers = ["conv3", "layer4"]
    lows = [method(model_fn, params, tiny_input, classes, layer=n, upsample=False, **options) for n in layers]
    # pytorch-grad-cam: per layer min-max, resize; mean over layers; min-max
    want = _pgc(cls, tiny_cnn, layers, tiny_input, classes.tolist())
    torch.testing.assert_close(normalize(sum(up(normalize(m), (16, 16)) for m in lows) / 2), want, rtol=0, atol=1e-5)
    # fxai: the sum of the layers' maps
    both = method(model_fn, params, tiny_input, classes, layer=layers, **options)
    torch.testing.assert_close(both, sum(up(m, (16, 16)) for m in lows), rtol=1e-5, atol=1e-6)
    want = _pgc(cls, tiny_cnn, ["layer4"], tiny_input, classes.tolist(), eigen_smooth=True)
    got = method(model_fn, params, tiny_input, classes, layer="layer4", eigen_smooth=True, **options)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)


def test_masked_cam_aug_smooth_is_mean_over_copies(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    top1 = model_fn(params, tiny_input).argmax(1)
    got = fxai.ablation_cam(model_fn, params, tiny_input, layer="layer4", aug_smooth=True, chunk_size=7)
    maps = []
    for flip in (False, True):
        for f in (0.9, 1.0, 1.1):
            v = (tiny_input.flip(-1) if flip else tiny_input) * f
            m = fxai.ablation_cam(model_fn, params, v, top1, layer="layer4")
            maps.append(m.flip(-1) if flip else m)
    torch.testing.assert_close(got, torch.stack(maps).mean(0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- TorchCAM


def _torchcam(cls, model, layer, x, classes, **init):
    oracle_model = copy.deepcopy(model)
    with cls(oracle_model, layer, batch_size=512, input_shape=tuple(x.shape[1:]), **init) as extractor:
        if hasattr(extractor, "_distrib"):
            gen = torch.Generator().manual_seed(11)
            std = extractor.std

            class Noise:  # the noise fxai draws from key=11, in TorchCAM's order
                def sample(self, size):
                    return torch.randn(size, generator=gen) * std

            extractor._distrib = Noise()
        with torch.no_grad():
            oracle_model(x.clone())
        return extractor(class_idx=classes)[0]


@pytest.mark.parametrize("name", ["ScoreCAM", "SSCAM", "ISCAM"])
def test_matches_torchcam(name, tiny_cnn, tiny_input):
    from torchcam import methods
    classes = [0, 4, 2]
    init = {"ScoreCAM": {}, "SSCAM": {"num_samples": 3, "std": 0.5}, "ISCAM": {"num_samples": 4}}[name]
    want = _torchcam(getattr(methods, name), tiny_cnn, "layer4", tiny_input, classes, **init)
    model_fn, params = fxai.functional(tiny_cnn)
    common = dict(layer="layer4", upsample=False, mask_norm="layer")
    if name == "ScoreCAM":
        got = fxai.score_cam(model_fn, params, tiny_input, torch.tensor(classes), score="logit", channel_softmax=True,
                             **common)
    elif name == "SSCAM":
        got = fxai.ss_cam(model_fn, params, tiny_input, torch.tensor(classes), samples=3, std=0.5, key=11, **common)
    else:
        got = fxai.is_cam(model_fn, params, tiny_input, torch.tensor(classes), samples=4, **common)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)


def test_ss_and_is_cam_closed_forms(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    t = torch.tensor([[0, 1], [4, 4], [2, 3]])
    score = fxai.score_cam(model_fn, params, tiny_input, t, layer="layer4", score="logit", channel_softmax=True)
    # no noise: every sample is Score-CAM's masked input; one step of IS-CAM has coefficient 1
    torch.testing.assert_close(fxai.ss_cam(model_fn, params, tiny_input, t, layer="layer4", samples=2, std=0.0, key=0),
                               score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fxai.is_cam(model_fn, params, tiny_input, t, layer="layer4", samples=1), score,
                               rtol=1e-5, atol=1e-6)
    a = fxai.ss_cam(model_fn, params, tiny_input, t, layer="layer4", samples=2, key=3)
    torch.testing.assert_close(fxai.ss_cam(model_fn, params, tiny_input, t, layer="layer4", samples=2, key=3,
                                           chunk_size=5), a, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, fxai.ss_cam(model_fn, params, tiny_input, t, layer="layer4", samples=2, key=4))


def test_smooth_grad_cam_plus_plus():
    net = smooth_net()
    model_fn, params = fxai.functional(net)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 4])
    plain = fxai.grad_cam_plus_plus(model_fn, params, x, t, layer="3", upsample=False)
    torch.testing.assert_close(fxai.smooth_grad_cam_plus_plus(model_fn, params, x, t, layer="3", upsample=False,
                                                              std=0.0, key=0), plain, rtol=1e-6, atol=1e-7)
    got = fxai.smooth_grad_cam_plus_plus(model_fn, params, x, t, layer="3", upsample=False, samples=3, key=5)
    noise = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(5)) * 0.3
    gs = []
    for n in noise:
        xs = x + n
        act = net[:4](xs).detach().requires_grad_()
        gs.append(torch.autograd.grad(net[4:](act).gather(1, t[:, None]).sum(), act)[0])
    g = torch.stack(gs)
    a = net[:4](x).detach()
    g1, g2, g3 = g.mean(0), (g ** 2).mean(0), (g ** 3).mean(0)
    alpha = torch.where(g2 != 0, g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-6), torch.zeros_like(g2))
    w = (alpha * g1.clamp(min=0)).sum((2, 3), keepdim=True)
    torch.testing.assert_close(got, (w * a).sum(1).clamp(min=0), rtol=1e-5, atol=1e-6)
    assert (normalize(got) - normalize(plain)).abs().max() > 1e-3


def test_full_grad_eigen_smooth_matches_pytorch_grad_cam(resnet, image, monkeypatch):
    from pytorch_grad_cam import FullGrad, fullgrad_cam
    monkeypatch.setattr(fullgrad_cam, "get_2d_projection", _signed(fullgrad_cam.get_2d_projection))
    want = _pgc(FullGrad, resnet, [], image, [5, 321], eigen_smooth=True)
    model_fn, params = fxai.functional(resnet)
    got = fxai.full_grad(model_fn, params, image, torch.tensor([5, 321]), eigen_smooth=True)
    torch.testing.assert_close(normalize(got), want, rtol=0, atol=1e-5)
    many = fxai.full_grad(model_fn, params, image, torch.tensor([[5, 1], [321, 2]]), eigen_smooth=True)
    torch.testing.assert_close(many[:, 0], got, rtol=1e-5, atol=1e-6)
