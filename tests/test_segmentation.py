"""Segmentation targets: a closed form on a per-pixel linear model, per-input masks through stacked rows, and
torchvision's FCN and DeepLabV3 (random weights) against pytorch-grad-cam and plain autograd."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import ModuleSnapshot, leftover_hooks
from torch import nn

import fxai
from fxai.postprocess import normalize


@pytest.fixture(scope="module")
def pixel_linear():
    """``z[c, h, w] = W[c] · x[:, h, w] + b[c]``: a 1×1 convolution, 3 → 4 classes."""
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 1).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(1))


def _masks():
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 6, 5, generator=g) > 0.5


def test_closed_form_gradient_and_ig(pixel_linear, x):
    """d/dx of sum_hw m_hw z_c,hw is m_hw W_c at every pixel; IG from 0 is x times that (linear model)."""
    model_fn, params = fxai.functional(pixel_linear)
    masks = _masks()
    w = pixel_linear.weight[2, :, 0, 0].detach()
    want = masks[:, None].float() * w[None, :, None, None]
    for mask, rows in ((masks, slice(None)), (masks[1], slice(1, 2))):  # per input [B, H, W]; shared [H, W]
        target = fxai.segmentation_target(2, mask)
        torch.testing.assert_close(fxai.gradient(model_fn, params, x[rows], target), want[rows], rtol=0, atol=1e-7)
        got = fxai.integrated_gradients(model_fn, params, x[rows], target, steps=3)
        torch.testing.assert_close(got, x[rows] * want[rows], rtol=1e-6, atol=1e-6)
    # the score itself: the masked sum of the category's logits
    logits = model_fn(params, x)
    scores = fxai.segmentation_target(2, masks)(logits)
    torch.testing.assert_close(scores, (logits[:, 2] * masks).sum((1, 2)), rtol=0, atol=0)


def test_per_input_masks_line_up_with_stacked_rows(pixel_linear, x):
    """Path steps, noise samples and chunks stack copies of the batch: each row is scored with its own mask."""
    model_fn, params = fxai.functional(pixel_linear)
    masks = _masks()
    tanh_fn = lambda p, v: model_fn(p, torch.tanh(v))  # noqa: E731 - a model whose gradient varies with x
    both = fxai.segmentation_target(1, masks)
    together = fxai.integrated_gradients(tanh_fn, params, x, both, steps=6)
    for b in range(2):
        alone = fxai.integrated_gradients(tanh_fn, params, x[b:b + 1], fxai.segmentation_target(1, masks[b]), steps=6)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-6, atol=1e-7)
    # closed form of the gradient of tanh_fn: m_hw (W_c * (1 - tanh(x)^2))
    w = pixel_linear.weight[1, :, 0, 0].detach()[None, :, None, None]
    torch.testing.assert_close(fxai.gradient(tanh_fn, params, x, both),
                               masks[:, None] * w * (1 - torch.tanh(x) ** 2), rtol=1e-6, atol=1e-7)
    sg = fxai.smoothgrad(fxai.integrated_gradients, samples=3, sigma=0.3)
    torch.testing.assert_close(sg(tanh_fn, params, x, both, key=5, steps=4, chunk_size=2),
                               sg(tanh_fn, params, x, both, key=5, steps=4), rtol=1e-6, atol=1e-7)
    # a shared mask may be chunked one row at a time; a per-input one by whole batches
    shared = fxai.segmentation_target(1, masks[0])
    assert shared.rows_per_group == 1 and not hasattr(both, "rows_per_group")
    torch.testing.assert_close(fxai.integrated_gradients(tanh_fn, params, x, shared, steps=5, chunk_size=1),
                               fxai.integrated_gradients(tanh_fn, params, x, shared, steps=5), rtol=1e-6, atol=1e-7)


def test_validation(pixel_linear, x):
    model_fn, params = fxai.functional(pixel_linear)
    with pytest.raises(TypeError, match="category must be a non-negative int"):
        fxai.segmentation_target(-1, torch.ones(6, 5))
    with pytest.raises(TypeError, match="category must be a non-negative int"):
        fxai.segmentation_target(1.0, torch.ones(6, 5))
    with pytest.raises(TypeError, match="mask must be a tensor or numpy array"):
        fxai.segmentation_target(1, [[1, 0]])
    with pytest.raises(ValueError, match=r"mask must be \[H, W\] \(shared\) or \[B, H, W\].*got shape \(5,\)"):
        fxai.segmentation_target(1, torch.ones(5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fxai.segmentation_target(1, torch.full((6, 5), float("nan")))
    with pytest.raises(ValueError, match=r"category 4 is out of range for a model with 4 classes"):
        fxai.gradient(model_fn, params, x, fxai.segmentation_target(4, torch.ones(6, 5)))
    with pytest.raises(ValueError, match=r"the mask is \(5, 6\) but the model's output is \(6, 5\) pixels"):
        fxai.gradient(model_fn, params, x, fxai.segmentation_target(1, torch.ones(5, 6)))
    with pytest.raises(ValueError, match=r"holds 3 masks, but the batch holds 2 inputs"):
        fxai.gradient(model_fn, params, x, fxai.segmentation_target(1, torch.ones(3, 6, 5)))
    flat_fn, flat_params = fxai.functional(nn.Sequential(pixel_linear, nn.Flatten()))
    with pytest.raises(ValueError, match=r"needs per-pixel logits \[N, classes, H, W\], got \(\d+, 120\)"):
        fxai.gradient(flat_fn, flat_params, x, fxai.segmentation_target(1, torch.ones(6, 5)))
    mask = np.ones((6, 5), dtype=np.float32)  # numpy masks, as pytorch-grad-cam takes them; kept as a copy
    target = fxai.segmentation_target(1, mask)
    mask[:] = 0
    assert float(target.mask.sum()) == 30.0 and "segmentation_target(1, mask (6, 5))" == repr(target)


# ---------------------------------------------------------------- torchvision's segmentation models


class OutOnly(nn.Module):
    """pytorch-grad-cam's documented wrapper for torchvision's segmentation models: the ``"out"`` tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _segmenter(name: str):
    torch.manual_seed(0)
    return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None).eval()


def _largest_class_masks(logits):
    """Per input, the category that covers the most pixels and its mask (a non-empty target, as in practice)."""
    labels = logits.argmax(1)
    category = int(labels.flatten().mode().values)
    return category, labels == category


@pytest.mark.parametrize("name, layer, size", [("fcn_resnet50", "backbone.layer4", (1, 64)),
                                               ("deeplabv3_mobilenet_v3_large", "backbone.16", (2, 48))])
def test_torchvision_segmenter_against_pytorch_grad_cam(name, layer, size):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    module = _segmenter(name)
    snap = ModuleSnapshot(module)
    batch, side = size
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(3))
    model_fn, params = fxai.functional(module)  # output=None picks "out"
    explicit_fn, _ = fxai.functional(module, output="out")
    with torch.no_grad():
        logits = module(x)["out"]
    torch.testing.assert_close(model_fn(params, x), logits, rtol=1e-5, atol=1e-5)
    category, masks = _largest_class_masks(logits)
    target = fxai.segmentation_target(category, masks)

    # the gradient against plain autograd on the module
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad((module(leaf)["out"][:, category] * masks).sum(), leaf)
    got = fxai.gradient(model_fn, params, x, target)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(fxai.gradient(explicit_fn, params, x, target), got, rtol=0, atol=0)

    # Grad-CAM on a backbone layer against pytorch-grad-cam's GradCAM + SemanticSegmentationTarget (min-max scaled)
    cam = fxai.grad_cam(model_fn, params, x, target, layer=layer)
    oracle_model = OutOnly(copy.deepcopy(module))
    oracle_layer = oracle_model.model.get_submodule(layer)
    with GradCAM(model=oracle_model, target_layers=[oracle_layer]) as oracle:
        targets = [SemanticSegmentationTarget(category, m.float().numpy()) for m in masks]
        want = torch.from_numpy(oracle(input_tensor=x.clone(), targets=targets))
    assert float(cam.amax()) > 0 and cam.shape == (batch, side, side)
    torch.testing.assert_close(normalize(cam), want, rtol=1e-4, atol=2e-4)
    snap.assert_unchanged()
    assert not leftover_hooks(module)
