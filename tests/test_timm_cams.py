"""timm's ViT (class and register tokens), Swin (channels last) and ConvNeXt with the CAM family: the default
layer, the token/channels-last grids, and Grad-CAM against pytorch-grad-cam with its documented reshapes."""

import copy

import pytest
import torch

from conftest import grad_cam_by_autograd
from torch import nn

import fxai
from fxai._core.discovery import resolve_layers
from fxai._core.grids import to_grid
from fxai.postprocess import normalize


class IndexedBias(nn.Module):
    """A bias permuted by an integer buffer inside forward (as timm's Swin reads its relative position bias)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("index", torch.tensor([[3, 2], [1, 0]]))
        self.shift = nn.Parameter(torch.arange(4.0))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.conv(x) + self.shift[self.index.view(-1)][None, :, None, None]
        return self.fc(torch.relu(a).mean((2, 3)))

# name, tiny config, input side, the default layer, the reshape pytorch-grad-cam documents for it
MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32, "blocks.1.norm1",
            lambda t: t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)),
    "vit_reg": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, reg_tokens=4), 32, "blocks.1.norm1",
                lambda t: t[:, 5:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 1),
                                                  window_size=4), 32, "norm", lambda t: t.permute(0, 3, 1, 2)),
    "convnext": ("convnext_atto", dict(dims=(8, 8, 16, 16), depths=(1, 1, 1, 1)), 64, "norm_pre", None),
}


def test_buffers_read_in_forward_are_not_frozen_by_the_layer_tap():
    """FX evaluates ``self.index.view(-1)`` while tracing, on fxai's placeholder of the buffer; such a graph is not
    used (the hook tap serves), so the layer methods see the real buffer."""
    module = IndexedBias().eval()
    model_fn, params = fxai.functional(module)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert model_fn.graph_tap(("conv",)) is None
    want = grad_cam_by_autograd(module, x, torch.tensor([1, 1]), "conv")
    for _ in range(2):
        torch.testing.assert_close(fxai.grad_cam(model_fn, params, x, 1, layer="conv", upsample=False), want,
                                   rtol=1e-5, atol=1e-6)


def _model(kind):
    timm = pytest.importorskip("timm")
    name, cfg, side, _, _ = MODELS[kind]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **cfg).eval()
    return model, torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", list(MODELS))
def test_grad_cam_against_pytorch_grad_cam(kind):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model, x = _model(kind)
    _, _, _, layer, reshape = MODELS[kind]
    model_fn, params = fxai.functional(model)
    assert resolve_layers(model_fn, None, params=params, x=x) == [layer]
    got = fxai.grad_cam(model_fn, params, x, 3)
    torch.testing.assert_close(fxai.grad_cam(model_fn, params, x, 3, layer=layer, reshape=reshape), got,
                               rtol=0, atol=0)
    oracle_model = copy.deepcopy(model)
    with GradCAM(model=oracle_model, target_layers=[oracle_model.get_submodule(layer)],
                 reshape_transform=reshape) as oracle:
        want = torch.from_numpy(oracle(input_tensor=x.clone(), targets=[ClassifierOutputTarget(3)] * 2))
    assert float(got.amax()) > 0
    torch.testing.assert_close(normalize(got), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["vit_reg", "swin"])
def test_the_cam_family_runs(kind):
    model, x = _model(kind)
    model_fn, params = fxai.functional(model)
    for method in (fxai.grad_cam_plus_plus, fxai.xgrad_cam, fxai.layer_cam, fxai.hires_cam, fxai.eigen_cam,
                   fxai.score_cam):
        out = method(model_fn, params, x[:1], 2)
        assert out.shape == (1, *x.shape[-2:]) and out.isfinite().all(), method.__name__


def test_token_grids_with_leading_tokens():
    patches = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    want = patches.view(2, 4, 4, 3).permute(0, 3, 1, 2)
    for lead in (0, 1, 2, 5, 17, 4):  # none, class, class + distillation, class + 4/16 registers, 4 registers
        tokens = torch.cat([torch.full((2, lead, 3), -1.0), patches], 1)
        torch.testing.assert_close(to_grid(tokens, size=(32, 32)), want, rtol=0, atol=0, msg=f"{lead} leading")
    # the shape alone decides: 9 + 16 tokens are a 5×5 grid; ViT-B/16 at 224 with a class token and 8 registers
    # (9 + 196) is read right, and reshape= settles any other case
    assert to_grid(torch.zeros(2, 9 + 16, 3), size=(32, 32)).shape == (2, 3, 5, 5)
    assert to_grid(torch.zeros(2, 9 + 196, 3), size=(224, 224)).shape == (2, 3, 14, 14)
    # non-square inputs keep their aspect: 1 class token and a 2×3 grid for 64×96
    torch.testing.assert_close(to_grid(torch.cat([torch.zeros(2, 1, 3), patches[:, :6]], 1), size=(64, 96)),
                               patches[:, :6].view(2, 2, 3, 3).permute(0, 3, 1, 2), rtol=0, atol=0)
