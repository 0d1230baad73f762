"""Score-CAM, Ablation-CAM, RISE and occlusion: oracles, closed forms and the stacking contract."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxai

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---------------------------------------------------------------- models

class SmallNet(nn.Module):
    """conv -> ReLU -> conv (stride 2) -> ReLU ("feat") -> global average pool -> linear."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.feat = nn.Sequential(nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(self.feat(torch.relu(self.conv(x))).mean((2, 3)))


class TokenNet(nn.Module):
    """Patch embedding to tokens [B, 1 + hw, D] with a class token ("tokens"), mean over all tokens, linear."""

    def __init__(self, dim=6, classes=4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.tokens = nn.Identity()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.tokens(torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1))
        return self.fc(tokens.mean(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = SmallNet().double().eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    return net, model_fn, params, x


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _minmax_gc(cam, size):
    """pytorch-grad-cam's post-processing of a raw low-resolution map: min-max, cv2 resize, min-max."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(cam, size))


# ---------------------------------------------------------------- Score-CAM

def test_score_cam_matches_pytorch_grad_cam(resnet):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model_fn, params = fxai.functional(resnet)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 40, 40)
    classes = [3, 7]
    opts = dict(layer="layer2", score="logit", channel_softmax=True, align_corners=True)
    low = fxai.score_cam(model_fn, params, x, torch.tensor(classes), upsample=False, chunk_size=100, **opts)
    full = fxai.postprocess.upsample(low, (40, 40))  # what upsample=True returns
    with ScoreCAM(resnet, [resnet.layer2]) as oracle:
        oracle.batch_size = 128
        ref = oracle(x, [ClassifierOutputTarget(c) for c in classes])
    assert low.shape == (2, 5, 5) and full.shape == (2, 40, 40)
    np.testing.assert_allclose(_minmax_gc(low.numpy(), (40, 40)), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fxai.postprocess.normalize(full, "minmax").numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("score,channel_softmax,align_corners",
                         [("softmax", False, False), ("logit", True, False), ("logit", False, True)])
def test_score_cam_equals_a_loop_over_channels(small, score, channel_softmax, align_corners):
    net, model_fn, params, x = small
    target = torch.tensor([0, 3, 1])
    ours = fxai.score_cam(model_fn, params, x, target, layer="feat", score=score,
                          channel_softmax=channel_softmax, align_corners=align_corners, upsample=False)
    with torch.no_grad():
        act = net.feat(torch.relu(net.conv(x)))
        weights = []
        for k in range(act.shape[1]):
            up = F.interpolate(act[:, k:k + 1], size=(12, 12), mode="bilinear", align_corners=align_corners)
            lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
            mask = torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))  # constant channel: 0
            out = net(x * mask)
            out = out.softmax(-1) if score == "softmax" else out
            weights.append(out.gather(1, target[:, None])[:, 0])
        weights = torch.stack(weights, 1)
        if channel_softmax:
            weights = weights.softmax(1)
        expected = (weights[:, :, None, None] * act).sum(1).clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    full = fxai.score_cam(model_fn, params, x, target, layer="feat", score=score, channel_softmax=channel_softmax,
                          align_corners=align_corners)
    torch.testing.assert_close(full, F.interpolate(expected[:, None], size=(12, 12), mode="bilinear")[:, 0],
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- Ablation-CAM

def test_ablation_cam_matches_pytorch_grad_cam(resnet):
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = copy.deepcopy(resnet).double()
    model_fn, params = fxai.functional(net)
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    low = fxai.ablation_cam(model_fn, params, x, 5, layer="layer2", upsample=False, chunk_size=100)
    with AblationCAM(net, [net.layer2], batch_size=128) as oracle:
        ref = oracle(x, [ClassifierOutputTarget(5)])
    # pytorch-grad-cam rounds the scores to float32 before taking their differences
    np.testing.assert_allclose(_minmax_gc(low.numpy(), (32, 32)), ref, rtol=0, atol=5e-6)


def test_ablation_cam_gap_linear_closed_form(small):
    # on GAP + linear, zeroing channel k lowers y_c by W[c, k] * mean(A_k)
    net, model_fn, params, x = small
    target = torch.tensor([[0, 2], [4, 1], [3, 3]])
    ours = fxai.ablation_cam(model_fn, params, x, target, layer="feat", upsample=False, chunk_size=5)
    with torch.no_grad():
        act = net.feat(torch.relu(net.conv(x)))
        y = net(x).gather(1, target)
        w = net.fc.weight[target]
        weights = w * act.mean((2, 3))[:, None, :] / y[..., None]
        expected = torch.einsum("bkc,bchw->bkhw", weights, act).clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert all(not m._forward_hooks for m in net.modules())


def test_ablation_cam_token_layer_keeps_class_token():
    torch.manual_seed(3)
    net = TokenNet().double().eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    ours = fxai.ablation_cam(model_fn, params, x, 1, layer="tokens", upsample=False)
    with torch.no_grad():
        patches = net.embed(x)
        tokens = patches.shape[2] * patches.shape[3] + 1
        y = net(x)[:, 1]
        weights = net.fc.weight[1][None, :] * patches.sum((2, 3)) / tokens / y[:, None]
        expected = (weights[:, :, None, None] * patches).sum(1).clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    sc = fxai.score_cam(model_fn, params, x, 1, layer="tokens", upsample=False)
    assert sc.shape == (2, 4, 4)


# ---------------------------------------------------------------- contract of the layer methods

@pytest.mark.parametrize("method", [fxai.score_cam, fxai.ablation_cam])
def test_layer_methods_targets_batch_chunks(small, method):
    _, model_fn, params, x = small
    multi = torch.tensor([[0, 2], [4, 1], [3, 3]])
    both = method(model_fn, params, x, multi, layer="feat")
    assert both.shape == (3, 2, 12, 12)
    one = method(model_fn, params, x, multi[:, 0], layer="feat")
    for b in range(3):
        torch.testing.assert_close(one[b:b + 1], method(model_fn, params, x[b:b + 1], int(multi[b, 0]), layer="feat"),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(method(model_fn, params, x, multi, layer="feat", chunk_size=4), both,
                               rtol=1e-12, atol=1e-12)
    top1 = method(model_fn, params, x, None, layer="feat", chunk_size=5)
    torch.testing.assert_close(top1, method(model_fn, params, x, model_fn(params, x).argmax(1), layer="feat"),
                               rtol=1e-12, atol=1e-12)
    pick = lambda logits: logits[:, 2] - logits[:, 0]  # noqa: E731
    torch.testing.assert_close(method(model_fn, params, x, pick, layer="feat", chunk_size=4),
                               method(model_fn, params, x, pick, layer="feat"), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- occlusion

def test_occlusion_hand_computed():
    # f(x) = sum(x), 2x2 windows at stride 1 on arange(16): window (r, c) drops 16r + 4c + 10
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)
    model_fn = lambda p, x: x.flatten(1).sum(1, keepdim=True)  # noqa: E731
    expected = torch.tensor([[10, 12, 16, 18], [18, 20, 24, 26], [34, 36, 40, 42], [42, 44, 48, 50]],
                            dtype=torch.float64)
    ours = fxai.occlusion(model_fn, {}, x, 0, window=2, stride=1)
    torch.testing.assert_close(ours[0, 0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window,stride", [((3, 8, 8), (3, 6, 6)), ((2, 8, 12), (1, 7, 9))])
def test_occlusion_matches_captum(resnet, window, stride):
    from captum.attr import Occlusion

    net = copy.deepcopy(resnet).double()
    model_fn, params = fxai.functional(net)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([3, 5])
    ours = fxai.occlusion(model_fn, params, x, target, window=window, stride=stride, baseline=0.25, chunk_size=100)
    ref = Occlusion(net).attribute(x, sliding_window_shapes=window, strides=stride, target=target, baselines=0.25,
                                   perturbations_per_eval=64)
    # Captum returns float32 (it divides by the window counts after .float())
    torch.testing.assert_close(ours.float(), ref, rtol=1e-6, atol=1e-9)


def test_occlusion_targets_batch_chunks_baseline(small):
    _, model_fn, params, x = small
    multi = torch.tensor([[0, 2], [4, 1], [3, 3]])
    base = torch.rand(1, 3, 1, 12, dtype=torch.float64)
    kw = dict(window=(5, 4), stride=(3, 2), baseline=base)
    both = fxai.occlusion(model_fn, params, x, multi, **kw)
    assert both.shape == (3, 2, 3, 12, 12)
    for b in range(3):
        torch.testing.assert_close(both[b:b + 1], fxai.occlusion(model_fn, params, x[b:b + 1], multi[b:b + 1], **kw),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fxai.occlusion(model_fn, params, x, multi, chunk_size=7, **kw), both,
                               rtol=1e-12, atol=1e-12)
    # a 2-D window occludes all channels at once: the same as a (C, h, w) window
    torch.testing.assert_close(fxai.occlusion(model_fn, params, x, multi, window=(3, 5, 4), stride=(1, 3, 2),
                                              baseline=base), both, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- RISE

def _linear_model():
    return lambda p, x: (x * p["w"]).flatten(1).sum(1, keepdim=True) + p["b"]


def test_rise_peaks_at_the_pixel_the_model_reads():
    x = torch.ones(1, 1, 32, 32)
    model_fn = lambda p, x: x[:, :, 20, 11]  # noqa: E731
    amap = fxai.rise(model_fn, {}, x, 0, num_masks=1000, cell_size=8, score="logit", key=0)
    assert amap.shape == (1, 32, 32)
    assert divmod(int(amap[0].argmax()), 32) == (20, 11)


def test_rise_is_unbiased_on_a_linear_model():
    # Enumerate every mask (2^9 grids x 36 shifts) for the exact mean and variance of
    # f(x * M) M(l) / p, then check each pixel of a 4000-mask estimate within 4.5 standard errors.
    size, s, p, n = 16, 3, 0.3, 4000
    cell = math.ceil(size / s)
    grids = torch.tensor(list(itertools.product([0.0, 1.0], repeat=s * s)), dtype=torch.float64).view(-1, 1, s, s)
    kept = grids.sum((1, 2, 3))
    prob = p ** kept * (1 - p) ** (s * s - kept) / cell ** 2
    up = F.interpolate(grids, size=((s + 1) * cell,) * 2, mode="bilinear", align_corners=False)[:, 0]
    masks = torch.stack([up[:, a:a + size, b:b + size] for a in range(cell) for b in range(cell)], 1)
    torch.manual_seed(5)
    params = {"w": torch.randn(3, size, size, dtype=torch.float64), "b": torch.tensor(0.7, dtype=torch.float64)}
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    f = (masks * (params["w"] * x[0]).sum(0)).sum((-2, -1)) + params["b"]
    terms = f[..., None, None] * masks / p
    mean = torch.einsum("g,gshw->hw", prob, terms)
    var = torch.einsum("g,gshw->hw", prob, terms ** 2) - mean ** 2
    est = fxai.rise(_linear_model(), params, x, 0, num_masks=n, cell_size=s, p=p, score="logit", key=0)
    z = (est[0] - mean) / (var / n).sqrt()
    assert z.abs().max() < 4.5
    # the check can fail: dividing by 1 - p instead of p is far outside
    assert ((est[0] * p / (1 - p) - mean) / (var / n).sqrt()).abs().max() > 4.5


def test_rise_keys_and_chunks(small):
    _, model_fn, params, x = small
    kw = dict(num_masks=50, cell_size=3)
    ref = fxai.rise(model_fn, params, x, 2, key=7, **kw)
    for chunk in (4, 11, 64):
        torch.testing.assert_close(fxai.rise(model_fn, params, x, 2, key=7, chunk_size=chunk, **kw), ref,
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fxai.rise(model_fn, params, x, 2, key=torch.Generator().manual_seed(7), **kw), ref,
                               rtol=0, atol=0)
    assert (fxai.rise(model_fn, params, x, 2, key=8, **kw) - ref).abs().max() > 1e-3


def test_rise_targets_batch_and_scores(small):
    _, model_fn, params, x = small
    kw = dict(num_masks=40, cell_size=4, key=1)
    multi = torch.tensor([[0, 2], [4, 1], [3, 3]])
    both = fxai.rise(model_fn, params, x, multi, chunk_size=10, **kw)
    assert both.shape == (3, 2, 12, 12)
    for b in range(3):
        torch.testing.assert_close(both[b:b + 1], fxai.rise(model_fn, params, x[b:b + 1], multi[b:b + 1], **kw),
                                   rtol=1e-12, atol=1e-12)
    softmax = lambda logits: logits.softmax(-1)[:, 4]  # noqa: E731
    torch.testing.assert_close(fxai.rise(model_fn, params, x, 4, **kw),
                               fxai.rise(model_fn, params, x, softmax, score="logit", **kw), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- gradients and errors

def test_maps_are_differentiable_wrt_params(small):
    _, model_fn, params, x = small
    calls = [lambda p: fxai.score_cam(model_fn, p, x, 1, layer="feat"),
             lambda p: fxai.ablation_cam(model_fn, p, x, 1, layer="feat"),
             lambda p: fxai.rise(model_fn, p, x, 1, num_masks=8, key=0),
             lambda p: fxai.occlusion(model_fn, p, x, 1, window=4, stride=4)]
    for call in calls:
        grads = torch.func.grad(lambda p: call(p).sum())(params)
        assert torch.isfinite(grads["fc.weight"]).all() and grads["fc.weight"].abs().sum() > 0


@pytest.mark.parametrize("call,error,match", [
    (lambda f, p, x: fxai.rise(f, p, x, 0, num_masks=0, key=0), ValueError, "num_masks"),
    (lambda f, p, x: fxai.rise(f, p, x, 0, cell_size=1.5, key=0), ValueError, "cell_size"),
    (lambda f, p, x: fxai.rise(f, p, x, 0, p=0.0, key=0), ValueError, r"p must be .*\(0, 1\]"),
    (lambda f, p, x: fxai.rise(f, p, x, 0, p=1.5, key=0), ValueError, r"p must be .*\(0, 1\]"),
    (lambda f, p, x: fxai.rise(f, p, x, 0), TypeError, "key is required"),
    (lambda f, p, x: fxai.rise(f, p, x, 0, key=0, score="prob"), ValueError, "score"),
    (lambda f, p, x: fxai.occlusion(f, p, x, 0, window=(13, 4), stride=2), ValueError, "larger than the input"),
    (lambda f, p, x: fxai.occlusion(f, p, x, 0, window=(4, 4, 4), stride=2), ValueError, "larger than the input"),
    (lambda f, p, x: fxai.occlusion(f, p, x, 0, window=4, stride=5), ValueError, "stride"),
    (lambda f, p, x: fxai.occlusion(f, p, x, 0, window=(4, 4, 4, 4), stride=1), ValueError, "window"),
    (lambda f, p, x: fxai.occlusion(f, p, x, 0, window=4, stride=0), ValueError, "stride"),
    (lambda f, p, x: fxai.score_cam(f, p, x, 0, layer="nope"), ValueError, "unknown layer"),
    (lambda f, p, x: fxai.score_cam(f, p, x, 0, layer="feat", mask_norm="output"), ValueError, "mask_norm"),
    (lambda f, p, x: fxai.score_cam(f, p, x, 0, layer="feat", score="probs"), ValueError, "score"),
    (lambda f, p, x: fxai.ablation_cam(f, p, x, 0, layer="feat", ablation_value="min"), TypeError, "ablation_value"),
    (lambda f, p, x: fxai.ablation_cam(f, p, x[0], 0, layer="feat"), ValueError, "4 dimensions"),
])
def test_bad_arguments(small, call, error, match):
    _, model_fn, params, x = small
    with pytest.raises(error, match=match):
        call(model_fn, params, x)
