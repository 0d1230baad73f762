"""Shared fixtures: small hand-made models with known answers, and purity checks.

- ``tiny_cnn``: a seeded 3×16×16 → 5-class CNN in eval mode with BatchNorm,
  Dropout, global average pooling and ReLUs written four different ways;
  ``"layer4"`` (post-ReLU, then only GAP and ``fc``) is its CAM layer, ``[B, 16, 8, 8]``.
- ``linear_model``: ``w·x + b`` on ``[B, 2, 3, 3]`` inputs, three classes.
- ``conv4_model(spelling)``: the 4×4 conv fixture of the design notes, with
  its two ReLUs written in the given spelling (see ``RELU_SPELLINGS``).
- ``ig_toy``: ``f(x1, x2) = relu(relu(x1) - 1 - relu(x2))`` as a 2-class model.

Tests marked ``slow`` are skipped unless selected with ``-m slow``. Tests run
torch on one thread (``FXAI_TEST_THREADS`` overrides): the models are tiny,
and on a busy machine idle-spinning intra-op threads make each call tens of
times slower.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def pytest_configure(config):
    torch.set_num_threads(int(os.environ.get("FXAI_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- models


class Block(nn.Module):
    """conv then ``Tensor.relu``: a layer whose output is a post-ReLU activation (a CAM layer)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()


class TinyCNN(nn.Module):
    """conv-BN-nn.ReLU, conv-nn.ReLU(inplace), strided conv-F.relu, block (conv-Tensor.relu), GAP, dropout, linear."""

    def __init__(self, classes: int = 5, smooth_input: bool = False):
        super().__init__()
        self.smooth_input = smooth_input  # tanh(x) first: input gradients then vary smoothly with x
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.layer4 = Block(16, 16)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        if self.smooth_input:
            x = torch.tanh(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = self.layer4(x)
        x = x.mean((2, 3))
        return self.fc(self.drop(x))


def make_tiny_cnn(seed: int = 0, classes: int = 5, smooth_input: bool = False) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(classes, smooth_input)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.1, 0.1)
        model.fc.weight.mul_(300.0)
        model.eval()
        # centre the logits over random inputs, so that the top-1 class differs across inputs
        probe = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(123))
        model.fc.bias.sub_(model(probe).mean(0))
    return model


class TinyViT(torchvision.models.VisionTransformer):
    """torchvision's ViT, small: 16×16 inputs, 4×4 patches (16 tokens and a class token), 2 layers of 2 heads,
    5 classes; ``fc``, ``conv1`` and ``drop`` name its head, patch embedding and a final identity, as in
    :class:`TinyCNN`."""

    def __init__(self, classes: int = 5, smooth_input: bool = False):
        super().__init__(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                         num_classes=classes)
        self.smooth_input = smooth_input
        self.drop = nn.Identity()

    fc = property(lambda self: self.heads.head)
    conv1 = property(lambda self: self.conv_proj)

    def forward(self, x):
        return self.drop(super().forward(torch.tanh(x) if self.smooth_input else x))


def make_tiny_vit(seed: int = 0, classes: int = 5, smooth_input: bool = False) -> TinyViT:
    """A seeded :class:`TinyViT` in eval mode; its head (zero in torchvision) re-initialised at random."""
    torch.manual_seed(seed)
    model = TinyViT(classes, smooth_input)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 1.0)
        model.heads.head.bias.normal_(0, 0.1)
    return model.eval()


RELU_SPELLINGS = {
    "nn.ReLU": lambda x, m: m.relu_module(x),
    "nn.ReLU(inplace)": lambda x, m: m.relu_inplace_module(x),
    "F.relu": lambda x, m: F.relu(x),
    "F.relu(inplace)": lambda x, m: F.relu(x, inplace=True),
    "F.relu_": lambda x, m: F.relu_(x),
    "torch.relu": lambda x, m: torch.relu(x),
    "torch.relu_": lambda x, m: torch.relu_(x),
    "Tensor.relu": lambda x, m: x.relu(),
    "Tensor.relu_": lambda x, m: x.relu_(),
}


class Conv4(nn.Module):
    """The 4×4 conv fixture: conv 1→2 (3×3, ones, bias -50/-75), ReLU, flatten, linear 8→4, ReLU."""

    def __init__(self, spelling: str = "nn.ReLU"):
        super().__init__()
        self.spelling = spelling
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 4)
        self.relu_module = nn.ReLU()
        self.relu_inplace_module = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 1, 1, 1, 1, -1, -1, -1]]).expand(4, 8))
            self.fc.bias.zero_()

    def forward(self, x):
        relu = RELU_SPELLINGS[self.spelling]
        h = relu(self.conv(x), self)
        return relu(self.fc(h.flatten(1)), self)


class Linear(nn.Module):
    """``w·x + b`` for three classes on ``[B, 2, 3, 3]`` inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(18, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


class IGToy(nn.Module):
    """``f(x1, x2) = relu(relu(x1) - 1 - relu(x2))`` (Sundararajan et al. 2017) as class 0, ``-f`` as class 1."""

    def forward(self, x):
        f = F.relu(F.relu(x[:, 0]) - 1 - F.relu(x[:, 1]))
        return torch.stack([f, -f], dim=1)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def tiny_cnn():
    return make_tiny_cnn()


@pytest.fixture
def tiny_input():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # top-1 classes 0, 4, 2


@pytest.fixture
def linear_model():
    return Linear().eval()


@pytest.fixture
def ig_toy():
    return IGToy().eval()


@pytest.fixture
def conv4_input():
    return torch.arange(16.0).view(1, 1, 4, 4)


# ---------------------------------------------------------------- purity checks

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


def leftover_hooks(module: nn.Module) -> list[str]:
    """Names of every hook registered on ``module``'s submodules or globally."""
    found = [f"{name or '<root>'}.{attr}" for name, m in module.named_modules()
             for attr in _HOOK_DICTS if getattr(m, attr, None)]
    from torch.nn.modules import module as mod
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_module_registration_hooks"):
        if getattr(mod, attr, None):
            found.append(attr)
    return found


def active_modes() -> list:
    """Torch-function and dispatch modes currently active."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return list(_get_current_function_mode_stack()) + list(_get_current_dispatch_mode_stack())


class ModuleSnapshot:
    """Everything about a module a method must not change: values, requires_grad, training flags, .grad."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
        self.requires_grad = {k: p.requires_grad for k, p in module.named_parameters()}
        self.grads = {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}
        self.training = {k: m.training for k, m in module.named_modules()}
        self.structure = copy.copy(dict(module.named_modules()))

    def assert_unchanged(self):
        m = self.module
        now = m.state_dict(keep_vars=True)
        assert now.keys() == self.state.keys()
        for k, v in self.state.items():
            assert torch.equal(now[k].detach(), v), f"{k} changed"
        assert {k: p.requires_grad for k, p in m.named_parameters()} == self.requires_grad
        for k, p in m.named_parameters():
            before = self.grads[k]
            assert (p.grad is None) == (before is None) and (before is None or torch.equal(p.grad, before)), \
                f"{k}.grad changed"
        assert {k: mm.training for k, mm in m.named_modules()} == self.training
        assert dict(m.named_modules()) == self.structure
        assert leftover_hooks(m) == []
        assert active_modes() == []


def grad_cam_by_autograd(module, x, target, layer, *, relu: bool = True):
    """Grad-CAM by plain autograd on ``module(x)`` (hooks and all) at ``layer``, not upsampled: an oracle."""
    store = {}
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        score = module(x).gather(1, target[:, None]).sum()
    finally:
        handle.remove()
    a = store["a"]
    g = torch.autograd.grad(score, a)[0]
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    return (cam.clamp(min=0) if relu else cam).detach()
