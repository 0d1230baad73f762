"""DeepLIFT and DeepLiftShap: closed forms, every spelling, the paper's examples, Captum where Captum is right."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ModuleSnapshot, active_modes, leftover_hooks, make_tiny_cnn
from torch import nn

import fxai
from fxai._core import keys
from fxai.rules import ops as O
from fxai.rules.engine import RouteError


def close(got, expected, rtol=1e-5):
    expected = torch.as_tensor(expected, dtype=got.dtype)
    torch.testing.assert_close(got, expected, rtol=rtol,
                               atol=rtol * float(expected.detach().abs().max().clamp(min=1e-12)))


class Scalar(nn.Module):
    """A model of ``x [B, n]`` giving one score ``fn(x)`` (class 0) and its negative (class 1)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        o = self.fn(self, x)
        return torch.stack([o, -o], 1)


def run(fn, x, baseline=0.0, target=0, module=None, **kw):
    model_fn, params = fxai.functional(module or Scalar(fn))
    return fxai.deeplift(model_fn, params, x, target, baseline=baseline, **kw)


# ---------------------------------------------------------------- the paper's and the closed forms


def test_two_relus():
    got = run(lambda m, x: 2 * F.relu(x[:, 0]) + 2 * F.relu(x[:, 1] - 1.5), torch.tensor([[1.0, 2.0]]))
    close(got, [[2.0, 1.0]], rtol=0)


class Cancel(nn.Module):
    """``o = x1 - relu(x1 - x2)`` with the hidden unit as an ``nn.Linear`` (RevealCancel splits its terms)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.lin.bias.zero_()

    def forward(self, x):
        o = x[:, 0] - F.relu(self.lin(x))[:, 0]
        return torch.stack([o, -o], 1)


@pytest.mark.parametrize("rule, expected", [("rescale", [[0.0, 1.0]]), ("reveal_cancel", [[0.5, 0.5]])])
def test_paper_cancellation_example(rule, expected):
    got, err = run(None, torch.tensor([[3.0, 1.0]]), module=Cancel(), rule=rule, return_error=True)
    close(got, expected, rtol=1e-6)
    assert float(err.abs()) < 1e-6


def test_linear_model_is_input_times_gradient_from_the_baseline(linear_model):
    model_fn, params = fxai.functional(linear_model.double())
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    base = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    w = linear_model.fc.weight.detach()[torch.tensor([0, 2, 1, 2])].view(4, 2, 3, 3)
    for rule in ("rescale", "reveal_cancel"):
        got = fxai.deeplift(model_fn, params, x, torch.tensor([0, 2, 1, 2]), baseline=base, rule=rule)
        close(got, w * (x - base), rtol=1e-12)


# ---------------------------------------------------------------- every nonlinearity, every spelling

# (name, f, spellings as x -> f(x)): modules, functional calls, tensor methods, in place.
SPELLINGS = {
    "relu": (torch.relu, [nn.ReLU(), nn.ReLU(inplace=True), F.relu, lambda x: F.relu(x, inplace=True), F.relu_,
                          torch.relu, torch.relu_, lambda x: x.relu(), lambda x: x.relu_()]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), [nn.LeakyReLU(0.2), nn.LeakyReLU(0.2, inplace=True),
                                                    lambda x: F.leaky_relu(x, 0.2), lambda x: F.leaky_relu_(x, 0.2),
                                                    lambda x: F.leaky_relu(x, 0.2, True)]),
    "elu": (lambda x: F.elu(x, 0.7), [nn.ELU(0.7), nn.ELU(0.7, inplace=True), lambda x: F.elu(x, 0.7),
                                     lambda x: F.elu_(x, 0.7), lambda x: F.elu(x, 0.7, True)]),
    "sigmoid": (torch.sigmoid, [nn.Sigmoid(), torch.sigmoid, F.sigmoid, lambda x: x.sigmoid(),
                                lambda x: x.sigmoid_(), torch.sigmoid_]),
    "tanh": (torch.tanh, [nn.Tanh(), torch.tanh, F.tanh, lambda x: x.tanh(), lambda x: x.tanh_(), torch.tanh_]),
    "softplus": (lambda x: F.softplus(x, 2.0, 1.0), [nn.Softplus(2.0, 1.0), lambda x: F.softplus(x, 2.0, 1.0)]),
    "gelu": (F.gelu, [nn.GELU(), F.gelu]),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [nn.GELU("tanh"), lambda x: F.gelu(x, approximate="tanh")]),
    "silu": (F.silu, [nn.SiLU(), nn.SiLU(inplace=True), F.silu, lambda x: F.silu(x, inplace=True)]),
    "hardtanh": (lambda x: x.clamp(-0.5, 1.0), [nn.Hardtanh(-0.5, 1.0), nn.Hardtanh(-0.5, 1.0, inplace=True),
                                                 lambda x: F.hardtanh_(x, -0.5, 1.0)]),
    "relu6": (lambda x: x.clamp(0, 6), [nn.ReLU6(), nn.ReLU6(inplace=True), F.relu6]),
    "hardsigmoid": (F.hardsigmoid, [nn.Hardsigmoid(), nn.Hardsigmoid(inplace=True)]),
    "hardswish": (F.hardswish, [nn.Hardswish(), nn.Hardswish(inplace=True)]),
}
CASES = [(name, i) for name, (_, spellings) in SPELLINGS.items() for i in range(len(spellings))]


class OneHidden(nn.Module):
    """``y = w2 · act(W1 x + b1)``: DeepLIFT's Rescale multipliers are ``W1ᵀ (w2 ⊙ Δact / Δh)`` by hand."""

    def __init__(self, act):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
        self.b1 = nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
        self.act = act

    def forward(self, x):
        h = F.linear(x, self.w1, self.b1)
        o = (self.act(h) * 1.0) @ self.w2
        return torch.stack([o, -o], 1)


@pytest.mark.parametrize("name, i", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_rescale_on_every_spelling(name, i):
    f, spellings = SPELLINGS[name]
    model = OneHidden(spellings[i])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64) * 4
    base = torch.randn(3, 4, generator=g, dtype=torch.float64)
    got, err = run(None, x, baseline=base, module=model, return_error=True)
    with torch.no_grad():
        h, h0 = F.linear(x, model.w1, model.b1), F.linear(base, model.w1, model.b1)
        m = (f(h) - f(h0)) / (h - h0) * model.w2
        expected = (m @ model.w1) * (x - base)
    close(got, expected, rtol=1e-10)
    assert err.abs().max() < 1e-10
    assert active_modes() == []


@pytest.mark.parametrize("op", O.ELEMENTWISE, ids=[op.name for op in O.ELEMENTWISE])
def test_derivatives_match_autograd(op):
    z = torch.linspace(-6, 6, 97, dtype=torch.float64) + 0.01  # off the kinks, where conventions differ
    options = {"approximate": "tanh"} if op.name == "gelu" else {}
    for opts in ({}, options):
        auto = torch.func.vmap(torch.func.grad(lambda t: op.compute(t, **opts)))(z)
        close(op.derivative(z, **opts), auto, rtol=1e-7 if op.name == "hardsigmoid" else 1e-12)  # torch: 1/6 in float32


def test_gradient_where_the_difference_vanishes():
    # h = x1 - x2 is 0 at the input and the baseline: the sigmoid's multiplier is its derivative 1/4.
    model = OneHidden(torch.sigmoid)
    with torch.no_grad():
        model.w1.zero_()
        model.w1[0, 0], model.w1[0, 1] = 1.0, -1.0
        model.b1.zero_()
        model.w2.zero_()
        model.w2[0] = 1.0
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    close(run(None, x, module=model), [[0.25, -0.25, 0.0, 0.0]], rtol=1e-12)


# ---------------------------------------------------------------- max-pooling, products, softmax


def pool_model(kernel, stride, spelling="module"):
    pool = nn.MaxPool2d(kernel, stride)
    spell = {"module": pool, "functional": lambda x: F.max_pool2d(x, kernel, stride),
             "torch": lambda x: torch.max_pool2d(x, kernel, stride),
             "indices": lambda x: F.max_pool2d(x, kernel, stride, return_indices=True)[0]}[spelling]
    return Scalar(lambda m, x: spell(x).flatten(1).sum(1))


@pytest.mark.parametrize("spelling", ["module", "functional", "torch", "indices"])
def test_max_pool_overlapping_windows_sum(spelling):
    # Two windows share their maximum 5: its contribution is 5 + 5 (Captum's unpool keeps one of the two).
    x = torch.tensor([[[[0.0, 5.0, 0.0, 0.0]]]])
    got, err = run(None, x, module=pool_model((1, 3), 1, spelling), return_error=True)
    close(got, [[[[0.0, 10.0, 0.0, 0.0]]]], rtol=0)
    assert float(err.abs()) == 0


def test_max_pool_reference_argmax():
    # y = 3 at index 2, y' = 4 at index 1: max(y, y') - y' = 0 goes to index 2, y - max = -1 to index 1.
    x = torch.tensor([[[[1.0, 0.0, 3.0]]]])
    base = torch.tensor([[[[2.0, 4.0, 0.0]]]])
    close(run(None, x, baseline=base, module=pool_model((1, 3), 1)), [[[[0.0, -1.0, 0.0]]]], rtol=0)


def test_max_pool_each_example_its_own_routes():
    g = torch.Generator().manual_seed(0)
    x, base = torch.randn(4, 2, 6, 6, generator=g), torch.randn(4, 2, 6, 6, generator=g)
    model = pool_model(3, 2)
    batch, err = run(None, x, baseline=base, module=model, return_error=True)
    assert err.abs().max() < 1e-5
    for i in range(4):
        close(run(None, x[i:i + 1], baseline=base[i:i + 1], module=model), batch[i:i + 1], rtol=1e-6)


PRODUCTS = [lambda a, b: a * b, torch.mul, lambda a, b: a.mul(b), lambda a, b: a.clone().mul_(b),
            lambda a, b: b.__rmul__(a)]


@pytest.mark.parametrize("i", range(len(PRODUCTS)))
def test_product_rule(i):
    prod = PRODUCTS[i]
    x = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    base = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    got = run(lambda m, x: prod(torch.tanh(x[:, 0]), x[:, 1]), x, baseline=base)
    a, a0 = math.tanh(3.0), math.tanh(1.0)
    # the tanh's Rescale multiplier times the product's (b + b')/2 on x1, (a + a')/2 on x2
    close(got, [[(-2.0 + 0.5) / 2 * (a - a0), (a + a0) / 2 * (-2.5)]], rtol=1e-12)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_rule(log):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x, base = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    sm = nn.LogSoftmax(1) if log else nn.Softmax(1)
    model_fn, params = fxai.functional(Scalar(lambda m, x: sm(x @ w.T)[:, 1]))
    got, err = fxai.deeplift(model_fn, params, x, 0, baseline=base, return_error=True)
    assert err.abs().max() < 1e-12
    f = torch.log_softmax if log else torch.softmax
    dz = (x - base) @ w.T
    shift = dz - dz.mean(1, keepdim=True)
    dy = f(x @ w.T, 1)[:, 1] - f(base @ w.T, 1)[:, 1]
    m = dy[:, None] * shift / shift.square().sum(1, keepdim=True)
    close(got, (m @ w) * (x - base), rtol=1e-12)
    # blind to a shift of every logit
    shifted, _ = fxai.functional(Scalar(lambda m, x: sm(x @ w.T + x.sum(1, keepdim=True))[:, 1]))
    close(fxai.deeplift(shifted, {}, x, 0, baseline=base).sum(1), dy, rtol=1e-12)


# ---------------------------------------------------------------- RevealCancel


def test_reveal_cancel_by_hand():
    model = OneHidden(nn.ReLU())
    g = torch.Generator().manual_seed(2)
    x, base = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    got, err = run(None, x, baseline=base, module=model, rule="reveal_cancel", return_error=True)
    assert err.abs().max() < 1e-12
    w1, w2 = model.w1.detach(), model.w2.detach()
    terms = w1[None] * (x - base)[:, None, :]  # [B, hidden, inputs]
    pos, neg = terms.clamp(min=0).sum(-1), terms.clamp(max=0).sum(-1)
    h0 = F.linear(base, w1, model.b1.detach())
    up = 0.5 * (F.relu(h0 + pos) - F.relu(h0)) + 0.5 * (F.relu(h0 + pos + neg) - F.relu(h0 + neg))
    down = 0.5 * (F.relu(h0 + neg) - F.relu(h0)) + 0.5 * (F.relu(h0 + pos + neg) - F.relu(h0 + pos))
    m = torch.where(terms > 0, (w2 * up / pos)[..., None], (w2 * down / neg)[..., None])
    close(got, (m * terms).sum(1), rtol=1e-12)


class ConvBN(nn.Module):
    def __init__(self, bn: bool, inplace: bool = False):
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1).double()
        self.bn = nn.BatchNorm2d(3).double().eval() if bn else nn.Identity()
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(3, 2, 3, 3, generator=g))
            if bn:
                self.bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3]))
                self.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
                self.bn.running_mean.copy_(torch.tensor([0.2, 0.0, -0.1]))
                self.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        self.fc = nn.Linear(3 * 16, 2).double()

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("inplace", [False, True])
def test_reveal_cancel_through_batch_norm_equals_the_folded_conv(inplace):
    model = ConvBN(True, inplace)
    folded = ConvBN(False, inplace)
    with torch.no_grad():  # BatchNorm folded into the convolution
        s = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
        folded.conv.weight.copy_(model.conv.weight * s.view(-1, 1, 1, 1))
        folded.conv.bias.copy_((model.conv.bias - model.bn.running_mean) * s + model.bn.bias)
        folded.fc.load_state_dict(model.fc.state_dict())
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    maps = [fxai.deeplift(*fxai.functional(m), x, 1, rule="reveal_cancel") for m in (model, folded)]
    close(maps[0], maps[1], rtol=1e-10)
    assert not torch.allclose(maps[0], fxai.deeplift(*fxai.functional(model), x, 1))  # not Rescale


# ---------------------------------------------------------------- reuse, routes, purity


class TwoLayer(nn.Module):
    """linear, ReLU, linear, ReLU, linear; ``shared``: one ``nn.ReLU`` module called twice (as in a ResNet block)."""

    def __init__(self, shared: bool):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.r1 = nn.ReLU()
        self.r2 = self.r1 if shared else nn.ReLU()

    def forward(self, x):
        return self.l3(self.r2(self.l2(self.r1(self.l1(x)))))


def test_reused_module_gets_two_multipliers_and_captum_does_not():
    from captum.attr import DeepLift
    x, base = torch.randn(3, 4) * 3, torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    shared, separate = TwoLayer(True).eval(), TwoLayer(False).eval()
    ours, err = fxai.deeplift(*fxai.functional(shared), x, t, baseline=base, return_error=True)
    oracle = DeepLift(separate, eps=1e-10).attribute(x, base, target=t)
    close(ours, oracle, rtol=1e-5)
    assert err.abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="more than once"):  # Captum's hooks keep one input per module
        DeepLift(shared, eps=1e-10).attribute(x, base, target=t)


class Branchy(nn.Module):
    def forward(self, x):
        h = torch.relu(x) if x.sum() > 0 else torch.sigmoid(x)
        return h.sum(1, keepdim=True).expand(-1, 2)


def test_different_routes_raise():
    model_fn, params = fxai.functional(Branchy())
    with pytest.raises(RouteError, match="different routes"):
        fxai.deeplift(model_fn, params, torch.ones(1, 3), 0, baseline=-1.0)
    assert active_modes() == []


def test_bad_options():
    model_fn, params = fxai.functional(make_tiny_cnn())
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="rule"):
        fxai.deeplift(model_fn, params, x, 0, rule="gradient")
    with pytest.raises(ValueError, match="eps"):
        fxai.deeplift(model_fn, params, x, 0, eps=-1.0)
    with pytest.raises(ValueError, match="baseline"):
        fxai.deeplift(model_fn, params, x, 0, baseline=torch.zeros(3, 3, 16, 16))
    with pytest.raises(TypeError, match="baseline"):
        fxai.deeplift(model_fn, params, x, 0, baseline="zeros")
    with pytest.raises(ValueError, match="references"):
        fxai.deeplift_shap(model_fn, params, x, 0, references=torch.zeros(3, 3, 8, 8))
    with pytest.raises(TypeError, match="key"):
        fxai.deeplift_shap(model_fn, params, x, 0, references=torch.zeros(3, 3, 16, 16), samples=2)
    with pytest.raises(ValueError, match="samples"):
        fxai.deeplift_shap(model_fn, params, x, 0, references=torch.zeros(3, 3, 16, 16), samples=4, key=0)


class WritesItsInput(nn.Module):
    def forward(self, x):
        torch.relu_(x)
        return x.flatten(1)[:, :3] * 2


def test_inputs_and_baseline_untouched():
    x, base = torch.randn(2, 1, 2, 2), torch.randn(1, 1, 2, 2)
    x0, b0 = x.clone(), base.clone()
    model = make_tiny_cnn()
    snap = ModuleSnapshot(model)
    got = fxai.deeplift(*fxai.functional(WritesItsInput()), x, 1, baseline=base)
    close(got.flatten(1)[:, 1], 2 * (F.relu(x0) - F.relu(b0)).flatten(1)[:, 1], rtol=1e-6)
    assert torch.equal(x, x0) and torch.equal(base, b0)
    fxai.deeplift_shap(*fxai.functional(model), torch.randn(2, 3, 16, 16), None, references=torch.randn(2, 3, 16, 16))
    snap.assert_unchanged()
    assert leftover_hooks(model) == []


# ---------------------------------------------------------------- DeepLiftShap, targets, transforms


def test_deeplift_shap_is_the_mean_over_references(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn.double())
    x, refs = tiny_input.double(), torch.randn(3, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([0, 4, 2])
    got, err = fxai.deeplift_shap(model_fn, params, x, t, references=refs, return_error=True)
    each = [fxai.deeplift(model_fn, params, x, t, baseline=refs[r:r + 1]) for r in range(3)]
    close(got, torch.stack(each).mean(0), rtol=1e-10)
    assert err.abs().max() < 1e-10
    close(fxai.deeplift_shap(model_fn, params, x, t, references=refs, chunk_size=4), got, rtol=1e-10)
    sampled = fxai.deeplift_shap(model_fn, params, x, t, references=refs, samples=2, key=5)
    pick = torch.randperm(3, generator=keys.generator(5))[:2]
    close(sampled, fxai.deeplift_shap(model_fn, params, x, t, references=refs[pick]), rtol=1e-10)


def test_k_targets_equal_single_targets(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    t = torch.tensor([[0, 3], [4, 1], [2, 2]])
    got, err = fxai.deeplift(model_fn, params, tiny_input, t, baseline=0.1, return_error=True)
    assert got.shape == (3, 2, 3, 16, 16) and err.shape == (3, 2) and err.abs().max() < 1e-4
    for k in range(2):
        close(got[:, k], fxai.deeplift(model_fn, params, tiny_input, t[:, k], baseline=0.1), rtol=1e-5)


def test_smoothgrad_of_deeplift(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    x = tiny_input[:2]
    got = fxai.smoothgrad(fxai.deeplift, samples=3, sigma=0.1)(model_fn, params, x, 1, key=0, baseline=0.5)
    span = (x.flatten(1).max(1).values - x.flatten(1).min(1).values).view(-1, 1, 1, 1)
    noise = keys.normal(0, (3, *x.shape), x) * (0.1 * span)
    expected = torch.stack([fxai.deeplift(model_fn, params, x + n, 1, baseline=0.5) for n in noise]).mean(0)
    close(got, expected, rtol=1e-5)


def test_compiles(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fxai.deeplift(model_fn, params, x, 2, baseline=0.2), backend="aot_eager")
    close(compiled(tiny_input), fxai.deeplift(model_fn, params, tiny_input, 2, baseline=0.2), rtol=1e-5)
    assert active_modes() == []


# ---------------------------------------------------------------- Captum, where Captum is right


class CaptumFriendly(nn.Module):
    """Every nonlinearity a distinct module Captum supports, no reuse, pooling by averages."""

    def __init__(self, pool=None):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.a1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.p1 = pool or nn.AvgPool2d(2)
        self.c2, self.a2 = nn.Conv2d(6, 8, 3, padding=1), nn.ELU()
        self.c3, self.a3 = nn.Conv2d(8, 8, 3), nn.LeakyReLU(0.1)
        self.f1, self.a4 = nn.Linear(8 * 2 * 2, 16), nn.Sigmoid()
        self.f2, self.a5 = nn.Linear(16, 16), nn.Tanh()
        self.f3, self.a6 = nn.Linear(16, 16), nn.Softplus()
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.p1(self.a1(self.c1(x)))
        h = self.a3(self.c3(self.a2(self.c2(h))))
        h = self.a6(self.f3(self.a5(self.f2(self.a4(self.f1(h.flatten(1)))))))
        return self.out(h)


def _pair(batch):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(batch, 3, 8, 8, generator=g, dtype=torch.float64))


def test_against_captum_deeplift_and_deeplift_shap():
    from captum.attr import DeepLift, DeepLiftShap
    model = CaptumFriendly().double().eval()
    model_fn, params = fxai.functional(model)
    x, base = _pair(3)
    ours = fxai.deeplift(model_fn, params, x, 2, baseline=base, eps=1e-10)
    close(ours, DeepLift(model, eps=1e-10).attribute(x, base, target=2), rtol=1e-9)
    refs = _pair(4)[1] * 2
    ours = fxai.deeplift_shap(model_fn, params, x, 1, references=refs, eps=1e-10)
    close(ours, DeepLiftShap(model).attribute(x, refs, target=1), rtol=1e-9)


def test_max_pool_complete_where_captum_is_not():
    from captum.attr import DeepLift
    model = CaptumFriendly(nn.MaxPool2d(2)).double().eval()
    x, base = _pair(1)
    _, err = fxai.deeplift(*fxai.functional(model), x, 2, baseline=base, return_error=True)
    _, delta = DeepLift(model, eps=1e-10).attribute(x, base, target=2, return_convergence_delta=True)
    assert float(err.abs()) < 1e-12 and float(delta.abs()) > 1e-5


def test_functional_relus_complete_where_captum_falls_back_to_the_gradient(tiny_cnn, tiny_input):
    # The tiny CNN's third and fourth ReLUs are F.relu and Tensor.relu: Captum's hooks do not see them.
    from captum.attr import DeepLift
    model = tiny_cnn.double()
    x = tiny_input.double()
    t = torch.tensor([0, 4, 2])
    _, err = fxai.deeplift(*fxai.functional(model), x, t, return_error=True)
    _, delta = DeepLift(model).attribute(x, torch.zeros_like(x), target=t, return_convergence_delta=True)
    assert err.abs().max() < 1e-10 and delta.abs().max() > 1e-3


def test_resnet_complete_where_captum_breaks():
    torchvision = pytest.importorskip("torchvision")
    from captum.attr import DeepLift
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).double().eval()
    model_fn, params = fxai.functional(model)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    scale = float((model_fn(params, x) - model_fn(params, torch.zeros_like(x)))[0, 1].abs())
    for rule in ("rescale", "reveal_cancel"):
        _, err = fxai.deeplift(model_fn, params, x, 1, rule=rule, return_error=True)
        assert float(err.abs()) < 1e-10 * scale
    with pytest.raises(RuntimeError, match="more than once"):  # each block calls its nn.ReLU twice
        DeepLift(model).attribute(x, torch.zeros_like(x), target=1)


@pytest.mark.parametrize("name", ["vgg11", "densenet121", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_complete(name):
    # float64, random weights; the error against the size of the contributions (these randomly
    # initialised networks barely change their output); VGG's 25088 x 4096 head swapped for a small
    # one to keep the test light
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=4)
    if name == "vgg11":
        model.classifier = nn.Sequential(nn.Linear(25088, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 4))
    model = model.double().eval()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = torch.randn(1, 3, 32, 32, dtype=torch.float64) * 0.1
    amap, err = fxai.deeplift(model_fn, params, x, 1, baseline=ref, return_error=True)
    assert (err.abs() < 1e-10 * amap.abs().flatten(1).sum(1)).all(), err


@pytest.mark.parametrize("fn", [fxai.deeplift, fxai.deeplift_shap])
def test_docstring_examples_run(fn):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model_fn, params = fxai.functional(torchvision.models.resnet18(num_classes=5).eval())
    namespace = {"fxai": fxai, "torch": torch, "model_fn": model_fn, "params": params, "x": torch.randn(2, 3, 32, 32)}
    lines = [line.strip()[4:] for line in fn.__doc__.splitlines() if line.strip().startswith(">>> ")]
    assert lines
    for line in lines:
        exec(line, namespace)


def test_reveal_cancel_differentiable_and_k_targets(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn.double())
    x = tiny_input[:2].double()
    names = {k for k, _ in tiny_cnn.named_parameters()}
    fixed = {k: v for k, v in params.items() if k not in names}
    free = {k: params[k] for k in names}

    def loss(p):
        return fxai.deeplift(model_fn, {**p, **fixed}, x, 1, rule="reveal_cancel", baseline=0.1).square().sum()

    grads = torch.func.grad(loss)(free)
    leaves = {k: v.clone().requires_grad_() for k, v in free.items()}
    auto = torch.autograd.grad(loss(leaves), list(leaves.values()), allow_unused=True)  # fc.bias: unused
    auto = [torch.zeros_like(g) if a is None else a for g, a in zip(grads.values(), auto)]
    for g, a in zip(grads.values(), auto):
        close(g, a, rtol=1e-9)
    assert sum(float(g.abs().sum()) for g in auto) > 0
    both = fxai.deeplift(model_fn, params, x, torch.tensor([[1, 3], [0, 2]]), rule="reveal_cancel", baseline=0.1)
    close(both[:, 1], fxai.deeplift(model_fn, params, x, torch.tensor([3, 2]), rule="reveal_cancel", baseline=0.1),
          rtol=1e-10)


def test_product_with_a_mask_is_linear():
    x = torch.tensor([[3.0, -2.0, 1.0]], dtype=torch.float64)
    got = run(lambda m, x: (torch.tanh(x) * (x > 0)).sum(1), x)
    close(got, [[math.tanh(3.0), 0.0, math.tanh(1.0)]], rtol=1e-12)


def test_first_order_path_equals_the_differentiable_one(tiny_cnn, tiny_input):
    # Plain calls take the first-order Rescale (multipliers computed in the forward, in-place ops not copied);
    # params that require grad take the twice-differentiable one.
    model_fn, params = fxai.functional(tiny_cnn.double())
    x = tiny_input.double()
    quick = fxai.deeplift(model_fn, params, x, 3, baseline=0.2)
    names = {k for k, _ in tiny_cnn.named_parameters()}
    graph = fxai.deeplift(model_fn, {k: v.clone().requires_grad_(k in names) for k, v in params.items()},
                          x, 3, baseline=0.2)
    assert graph.requires_grad and not quick.requires_grad
    close(quick, graph.detach(), rtol=1e-12)


class Residual(nn.Module):
    """linear, then ``h += x`` (or ``h[:] = h + x``) written into the linear layer's output, then ReLU."""

    def __init__(self, how):
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.out, self.how = nn.Linear(4, 4).double(), nn.Linear(4, 2).double(), how

    def forward(self, x):
        h = self.lin(x)
        if self.how == "iadd":
            h += x
        else:
            h[:] = h + x
        return self.out(torch.relu(h))


@pytest.mark.parametrize("how", ["iadd", "setitem"])
def test_reveal_cancel_forgets_parts_written_over(how):
    # The ReLU's input is no longer the linear layer's output: RevealCancel must not use the layer's parts.
    x, base = torch.randn(3, 4, dtype=torch.float64) * 2, torch.randn(3, 4, dtype=torch.float64)
    model_fn, params = fxai.functional(Residual(how))
    rc, err = fxai.deeplift(model_fn, params, x, 0, baseline=base, rule="reveal_cancel", return_error=True)
    assert err.abs().max() < 1e-12
    close(rc, fxai.deeplift(model_fn, params, x, 0, baseline=base), rtol=1e-12)  # Rescale there
