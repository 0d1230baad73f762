"""Exact derivatives of DeepLIFT, DeepLiftShap and LRP maps: w.r.t. the input, the params and the baseline, by
``torch.func.grad`` and by autograd, against central differences in float64.

A map is a function of ``x`` through the multipliers (or relevance rules), which read the values of each op's
input; its derivative must differentiate those values through the model's true Jacobian. Every rule appears:
Rescale on each activation kind, in place and in a reused module, RevealCancel, max-pooling with overlapping
windows, the product rule, softmax; LRP's ε, z⁺, αβ, γ, flat, w², z^B, the pooling and residual-addition rules
and the folded BatchNorm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxai
from fxai.rules.lrp import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, epsilon_gamma_box


class DeepNet(nn.Module):
    """Every DeepLIFT rule: tanh, BatchNorm + in-place ReLU, overlapping max-pooling, one ReLU module called twice,
    ELU, GELU, a product of two activations (sigmoid × softplus), a linear head and a softmax."""

    def __init__(self, softmax: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.softmax = softmax
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.uniform_(-0.2, 0.2, generator=g)
            self.bn.running_var.uniform_(0.5, 1.5, generator=g)
        self.eval()

    def forward(self, x):
        h = torch.tanh(x)
        h = F.relu(self.bn(self.conv1(h)), inplace=True)
        h = F.max_pool2d(h, 3, stride=2, padding=1)  # overlapping windows
        h = self.relu(self.conv2(h)) + 0.3 * F.elu(self.conv2(h)) + F.gelu(h)
        h = torch.sigmoid(self.conv3(h)) * F.softplus(self.relu(h - 0.1))  # the same ReLU module again
        logits = self.fc(h.flatten(1))
        return torch.softmax(logits, 1) if self.softmax else logits


class LrpNet(nn.Module):
    """A small residual CNN for LRP: conv, BatchNorm (folded), ReLU, a residual addition, average pooling, linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn1.running_mean.uniform_(-0.2, 0.2, generator=g)
            self.bn1.running_var.uniform_(0.5, 1.5, generator=g)
        self.eval()

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = h + F.relu(self.conv3(F.relu(self.conv2(h))))  # residual block
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _x(seed=0, shape=(2, 2, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_derivative(map_of, arg: torch.Tensor, *, seed: int = 5, rtol: float = 1e-5):
    """``torch.func.grad`` and autograd of ``<w, map_of(arg)>`` agree with each other and with central differences
    along two random directions."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(map_of(arg).shape, generator=gen, dtype=arg.dtype)

    def loss(a):
        return (map_of(a) * weights).sum()

    g = torch.func.grad(loss)(arg)
    leaf = arg.clone().requires_grad_()
    (auto,) = torch.autograd.grad(loss(leaf), leaf)
    torch.testing.assert_close(auto, g, rtol=1e-9, atol=1e-12)
    h = 1e-6
    for _ in range(2):
        v = torch.randn(arg.shape, generator=gen, dtype=arg.dtype)
        numeric = (loss(arg + h * v) - loss(arg - h * v)) / (2 * h)
        assert abs(float(numeric)) > 1e-4, "the map does not depend on the argument along this direction"
        torch.testing.assert_close((g * v).sum(), numeric, rtol=rtol, atol=0.0)


# ---------------------------------------------------------------- DeepLIFT


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_deeplift_derivative_wrt_input(rule, softmax):
    model_fn, params = fxai.functional(DeepNet(softmax).double())
    base = 0.1 * _x(9)[:1]
    check_derivative(lambda x: fxai.deeplift(model_fn, params, x, torch.tensor([0, 2]), baseline=base, rule=rule),
                     _x())


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_deeplift_derivative_wrt_params_and_baseline(rule):
    model_fn, params = fxai.functional(DeepNet().double())
    x, base = _x(), 0.1 * _x(9)
    for name in ("conv1.weight", "conv2.weight", "bn.weight", "fc.weight"):
        check_derivative(lambda w: fxai.deeplift(model_fn, {**params, name: w}, x, 1, baseline=base, rule=rule),
                         params[name])
    check_derivative(lambda b: fxai.deeplift(model_fn, params, x, 1, baseline=b, rule=rule), base)


def test_deeplift_shap_derivative_wrt_input_and_references():
    model_fn, params = fxai.functional(DeepNet().double())
    refs = 0.3 * _x(7, (3, 2, 8, 8))
    check_derivative(lambda x: fxai.deeplift_shap(model_fn, params, x, 1, references=refs, chunk_size=4), _x())
    check_derivative(lambda r: fxai.deeplift_shap(model_fn, params, _x(), 1, references=r), refs)


def test_deeplift_derivative_of_the_completeness_error_is_zero():
    # sum(map) - (f(x) - f(x')) is 0 for every x, so its exact derivative is 0 (a derivative through the rules
    # instead of the plain forward is not)
    model_fn, params = fxai.functional(DeepNet().double())

    def error(x):
        return fxai.deeplift(model_fn, params, x, 0, return_error=True)[1].sum()

    g = torch.func.grad(error)(_x())
    assert float(g.abs().max()) < 1e-10


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_first_order_maps_unchanged_by_the_plain_forward(rule):
    # the map is the same on the first-order path (rules computed in the forward) and on the differentiable one
    # (a plain forward first); units that both passes leave at 0 (after the ReLU) take the max-pool's fallback
    model_fn, params = fxai.functional(DeepNet().double())
    x = _x()
    plain = fxai.deeplift(model_fn, params, x, 1, rule=rule)
    tracked = fxai.deeplift(model_fn, params, x.clone().requires_grad_(), 1, rule=rule)
    torch.testing.assert_close(tracked.detach(), plain, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- LRP

COMPOSITES = {
    "epsilon_plus_flat": "epsilon_plus_flat",
    "epsilon_alpha2_beta1": "epsilon_alpha2_beta1",
    "epsilon_gamma_box": epsilon_gamma_box(low=-3.0, high=3.0),
    "epsilon_wsquare": {"first": WSquare(), "conv": Epsilon(0.01), "linear": Epsilon(0.01)},
    "mixed": {"first": ZBox(-3.0, 3.0), "conv2": Gamma(0.5), "conv3": AlphaBeta(1.0, 0.0), "linear": ZPlus()},
    "flat_first": {"first": Flat(), "conv": Epsilon(0.1)},
}


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_lrp_derivative_wrt_input(name):
    model_fn, params = fxai.functional(LrpNet().double())
    check_derivative(lambda x: fxai.lrp(model_fn, params, x, torch.tensor([0, 2]), composite=COMPOSITES[name]),
                     _x())


@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_derivative_wrt_params(name):
    model_fn, params = fxai.functional(LrpNet().double())
    x = _x()
    for p in ("conv1.weight", "bn1.weight", "conv3.weight", "fc.weight"):
        check_derivative(lambda w: fxai.lrp(model_fn, {**params, p: w}, x, 1, composite=COMPOSITES[name]),
                         params[p])


def test_lrp_first_order_maps_unchanged_by_the_plain_forward():
    model_fn, params = fxai.functional(LrpNet().double())
    x = _x()
    plain = fxai.lrp(model_fn, params, x, 1)
    tracked = fxai.lrp(model_fn, params, x.clone().requires_grad_(), 1)
    torch.testing.assert_close(tracked.detach(), plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opts", [dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True),
                                  dict(kernel_size=3, stride=1, dilation=2, padding=1), dict(kernel_size=2)],
                         ids=["overlap-pad", "rect-ceil", "dilated", "plain"])
def test_first_order_max_pool_rule_equals_the_differentiable_one(opts):
    # the first-order max-pool rule (routing computed in the forward, native unpooling) against the
    # differentiable one, with a shared and a per-input baseline
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.LazyLinear(2)

        def forward(self, x):
            return self.fc(F.max_pool2d(F.relu(self.conv(x)), **opts).flatten(1))

    torch.manual_seed(0)
    model = Pool().double()
    model(torch.zeros(1, 2, 9, 9, dtype=torch.float64))
    model_fn, params = fxai.functional(model.eval())
    x = _x(1, (3, 2, 9, 9))
    for base in (0.0, _x(2, (3, 2, 9, 9))):
        first, err = fxai.deeplift(model_fn, params, x, 1, baseline=base, return_error=True)
        tracked = fxai.deeplift(model_fn, params, x.clone().requires_grad_(), 1, baseline=base)
        torch.testing.assert_close(first, tracked.detach(), rtol=1e-12, atol=1e-14)
        assert float(err.abs().max()) < 1e-12
