"""LRP: each rule's matrix form on one layer, conservation, spelling invariance, BatchNorm folding,
and Zennit (test-only oracle) on VGG-16 and ResNet-18 with random weights for every rule and composite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import RELU_SPELLINGS, Conv4, ModuleSnapshot, active_modes
from torch import nn

import fxai
from fxai import lrp_rules as L

# ---------------------------------------------------------------- each rule's matrix form on one dense layer


def stab(z, eps=1e-6):
    return z + eps * (z.sign() + (z == 0).double())


def _one_layer(seed=0, n_in=6, n_out=4):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(n_out, generator=g, dtype=torch.float64) * 0.3)
    x = torch.randn(2, n_in, generator=g, dtype=torch.float64)
    return layer.eval(), x


def _expected(rule, W, b, x, c):
    """R_i for relevance z_c at output c, written as explicit sums over the weight matrix (no autograd)."""
    w, bc, z = W[c], b[c], x @ W[c] + b[c]  # w [in], x [B, in], z [B]
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    R = z[:, None]
    if isinstance(rule, L.Epsilon):
        return x * w * R / stab(z, rule.epsilon)[:, None]
    if isinstance(rule, L.ZPlus):
        contrib = xp * wp + xn * wn
        return contrib * R / stab(contrib.sum(1) + bc.clamp(min=0))[:, None]
    if isinstance(rule, L.AlphaBeta):
        pos, neg = xp * wp + xn * wn, xp * wn + xn * wp
        return (rule.alpha * pos * R / stab(pos.sum(1) + bc.clamp(min=0))[:, None]
                - rule.beta * neg * R / stab(neg.sum(1) + bc.clamp(max=0))[:, None])
    if isinstance(rule, L.Gamma):
        g = rule.gamma
        pos = xp * (w + g * wp) + xn * (w + g * wn)
        neg = xp * (w + g * wn) + xn * (w + g * wp)
        out = torch.where((z > 0)[:, None], pos * R / stab(pos.sum(1) + bc + g * bc.clamp(min=0))[:, None], 0.0)
        return out + torch.where((z < 0)[:, None], neg * R / stab(neg.sum(1) + bc + g * bc.clamp(max=0))[:, None], 0.0)
    if isinstance(rule, L.Flat):
        return (R / stab(torch.tensor(float(len(w)), dtype=x.dtype))).expand_as(x)
    if isinstance(rule, L.WSquare):
        return (w.square() / stab(w.square().sum()))[None] * R
    if isinstance(rule, L.ZBox):
        contrib = x * w - rule.low * wp - rule.high * wn
        return contrib * R / stab(contrib.sum(1))[:, None]
    raise AssertionError(rule)


ALL_RULES = [L.Epsilon(), L.Epsilon(0.25), L.ZPlus(), L.AlphaBeta(2.0, 1.0), L.AlphaBeta(1.0, 0.0), L.Gamma(0.25),
             L.Gamma(0.0), L.Flat(), L.WSquare(), L.ZBox(-3.0, 3.0)]


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_rule_matrix_form_on_one_dense_layer(rule):
    layer, x = _one_layer()
    model_fn, params = fxai.functional(layer)
    c = 2
    got = fxai.lrp(model_fn, params, x, c, composite={"linear": rule}, canonizers=())
    torch.testing.assert_close(got, _expected(rule, layer.weight, layer.bias, x, c), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", [L.Epsilon(), L.ZPlus(), L.AlphaBeta(), L.Gamma(0.5), L.Flat(), L.WSquare(),
                                  L.ZBox(-2.0, 2.0)], ids=repr)
def test_rule_on_a_convolution_equals_the_rule_on_its_matrix(rule):
    # A strided, padded convolution is a dense layer with the convolution's matrix (its Jacobian).
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double().eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64) * 0.3)
    model = nn.Sequential(conv, nn.Flatten()).eval()
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    W = torch.func.jacrev(lambda v: conv(v.view(1, 2, 5, 5)).flatten())(torch.zeros(50, dtype=torch.float64))
    b = conv.bias.repeat_interleave(9)
    c = 13  # channel 1, an inner position
    model_fn, params = fxai.functional(model)
    got = fxai.lrp(model_fn, params, x, c, composite={"conv": rule}, canonizers=())
    if isinstance(rule, (L.Flat, L.WSquare)):  # these count only the pixels a unit sees: use the sparse row
        row = W[c]
        seen = row != 0
        R = (x.flatten(1) @ row + b[c])[:, None]
        share = seen.double() / stab(seen.sum().double()) if isinstance(rule, L.Flat) \
            else row.square() / stab(row.square().sum())
        expected = share[None] * R
    else:
        expected = _expected(rule, W, b, x.flatten(1), c)
    torch.testing.assert_close(got.flatten(1), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- conservation and spelling


class ResidualNet(nn.Module):
    """Bias-free: conv, a reused ReLU module, max-pool, a residual block with F.relu and ``+=``, mean pooling,
    linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        out = F.relu(self.conv2(x))
        out = self.conv3(out)
        out += x
        out = self.relu(out)
        return self.fc(out.mean((2, 3)))


def _residual_net(seed=0):
    torch.manual_seed(seed)
    return ResidualNet().double().eval()


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1",
                                       "epsilon_alpha2_beta1_flat"])
def test_relevance_is_conserved_without_biases(composite):
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    comp = L.COMPOSITES[composite](epsilon=1e-12, stabilizer=1e-12)  # stabilisers absorb ~eps/z of relevance
    r, s = fxai.lrp(model_fn, params, x, torch.tensor([0, 1, 4]), composite=comp, return_scores=True)
    torch.testing.assert_close(s, model_fn(params, x).gather(1, torch.tensor([[0], [1], [4]]))[:, 0])
    torch.testing.assert_close(r.flatten(1).sum(1), s, rtol=1e-9, atol=0)
    default = fxai.lrp(model_fn, params, x, torch.tensor([0, 1, 4]), composite=composite)  # eps = 1e-6
    torch.testing.assert_close(default.flatten(1).sum(1), s, rtol=1e-3, atol=0)


def test_without_the_residual_rule_relevance_is_not_conserved():
    # the gradient through ``+`` copies relevance into both branches: the sum overshoots
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r, s = fxai.lrp(model_fn, params, x, 0, composite={"add": L.Gradient()}, return_scores=True)
    assert (r.flatten(1).sum(1) - s).abs().min() > 1e-3 * s.abs().max()


@pytest.mark.parametrize("spelling", list(RELU_SPELLINGS))
def test_every_relu_spelling_gives_the_same_map(spelling, conv4_input):
    ref_fn, ref_params = fxai.functional(Conv4("nn.ReLU"))
    model_fn, params = fxai.functional(Conv4(spelling))
    for comp in ("epsilon_plus_flat", {"conv": L.WSquare(), "linear": L.ZPlus()}):
        torch.testing.assert_close(fxai.lrp(model_fn, params, conv4_input, 0, composite=comp),
                                   fxai.lrp(ref_fn, ref_params, conv4_input, 0, composite=comp), rtol=0, atol=0)


def test_layer_names_override_kinds_and_first():
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    comp = L.Composite({"conv": L.ZPlus(), "first": L.Flat(), "conv1": L.Epsilon(), "fc": L.Epsilon()})
    by_name = fxai.lrp(model_fn, params, x, 0, composite=comp)
    by_kind = fxai.lrp(model_fn, params, x, 0, composite={"conv": L.ZPlus(), "first": L.Epsilon(),
                                                          "linear": L.Epsilon()})
    torch.testing.assert_close(by_name, by_kind, rtol=0, atol=0)
    assert comp.layer_rule("conv10", "conv", first=False) == L.ZPlus()  # a prefix ends at a dot


def test_k_targets_equal_single_calls():
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    many = fxai.lrp(model_fn, params, x, torch.tensor([[0, 3], [2, 1]]))
    for k in range(2):
        torch.testing.assert_close(many[:, k], fxai.lrp(model_fn, params, x, torch.tensor([[0, 3], [2, 1]])[:, k]))


def test_smoothgrad_of_lrp_is_the_mean_over_noisy_copies():
    from fxai._core import keys
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = fxai.smoothgrad(fxai.lrp, samples=3, sigma=0.1)(model_fn, params, x, torch.tensor([0, 2]), key=5)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    noise = keys.normal(keys.generator(5), (3, *x.shape), x) * (0.1 * span)
    expected = torch.stack([fxai.lrp(model_fn, params, x + n, torch.tensor([0, 2])) for n in noise]).mean(0)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- canonizers


class ConvBN(nn.Module):
    """conv(no bias)-BN-ReLU, linear-BN1d, and a BN whose input is also used elsewhere (not foldable)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.bn3 = nn.BatchNorm1d(3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        y = self.conv2(x)
        x = self.bn2(y) + y
        return self.bn3(self.fc(x.mean((2, 3))))


def test_fold_batchnorm_keeps_the_function_and_the_params():
    torch.manual_seed(0)
    model = ConvBN().double()
    g = torch.Generator().manual_seed(1)
    for bn in (model.bn, model.bn2, model.bn3):
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
        bn.weight.data.uniform_(0.5, 2, generator=g)
        bn.bias.data.uniform_(-1, 1, generator=g)
    model.eval()
    snap = ModuleSnapshot(model)
    model_fn, params = fxai.functional(model)
    before = {k: v.clone() for k, v in params.items()}
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    folded = fxai.fold_batchnorm(model_fn, params, x)
    torch.testing.assert_close(model_fn(folded, x), model_fn(params, x), rtol=1e-12, atol=1e-12)
    assert set(folded) - set(params) == {"conv.bias"}
    for name in ("bn", "bn3"):  # folded: identity statistics
        assert torch.equal(folded[f"{name}.running_mean"], torch.zeros_like(params[f"{name}.running_mean"]))
    for k in params:  # bn2's input is also added to its output: left alone, as is conv2
        if k.startswith(("bn2.", "conv2.")):
            assert folded[k] is params[k]
    for k, v in before.items():
        assert torch.equal(params[k], v)
    snap.assert_unchanged()
    scale = params["bn.weight"] / (params["bn.running_var"] + 1e-5).sqrt()
    torch.testing.assert_close(folded["conv.weight"], params["conv.weight"] * scale[:, None, None, None])
    torch.testing.assert_close(folded["conv.bias"], params["bn.bias"] - params["bn.running_mean"] * scale)


# ---------------------------------------------------------------- errors and purity


def test_bad_options_get_clear_errors():
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="composite: unknown composite 'nope'"):
        fxai.lrp(model_fn, params, x, 0, composite="nope")
    with pytest.raises(ValueError, match="low=..., high=..."):
        fxai.lrp(model_fn, params, x, 0, composite="epsilon_gamma_box")
    with pytest.raises(TypeError, match=r"composite\['conv'\] must be an LRP rule"):
        fxai.lrp(model_fn, params, x, 0, composite={"conv": "epsilon"})
    with pytest.raises(TypeError, match=r"composite\['add'\] must be Norm\(\)"):
        fxai.lrp(model_fn, params, x, 0, composite={"add": L.Epsilon()})
    with pytest.raises(ValueError, match="'conv2.1' is neither a layer kind .* layers: conv1, conv2, conv3, fc"):
        fxai.lrp(model_fn, params, x, 0, composite={"conv2.1": L.Flat()})
    with pytest.raises(TypeError, match="composite must be a Composite"):
        fxai.lrp(model_fn, params, x, 0, composite=3)
    with pytest.raises(TypeError, match="canonizers must be a sequence of callables"):
        fxai.lrp(model_fn, params, x, 0, canonizers=fxai.fold_batchnorm)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        L.AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        fxai.lrp(model_fn, params, x, 0, chunk_size=0)
    assert active_modes() == []


def test_top1_target_is_the_argmax_class():
    model_fn, params = fxai.functional(_residual_net())
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    top = model_fn(params, x).argmax(1)
    torch.testing.assert_close(fxai.lrp(model_fn, params, x), fxai.lrp(model_fn, params, x, top), rtol=0, atol=0)


@pytest.mark.slow
def test_fxai_compiled_lrp_equals_eager():
    from conftest import make_tiny_cnn
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 4, 2])
    torch._dynamo.reset()
    got = fxai.compiled(fxai.lrp, model, backend="aot_eager")(x, t)
    expected = fxai.lrp(model_fn, params, x, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.slow
def test_compiled_equals_eager():
    model_fn, params = fxai.functional(_residual_net().float())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fxai.lrp(model_fn, params, x, torch.tensor([1, 3])), backend="aot_eager")
    torch.testing.assert_close(compiled(x), fxai.lrp(model_fn, params, x, torch.tensor([1, 3])), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Zennit as the oracle on torchvision models

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient as ZGradient  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat,  # noqa: E402
                               LayerMapComposite, NameMapComposite, layer_map_base)
from zennit import rules as ZR  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Convolution  # noqa: E402


def _random_bn(model):
    # BatchNorm with non-trivial statistics and eps = 0: Zennit's folding leaves x / sqrt(1 + eps) behind, fxai's
    # the identity; with eps = 0 both are exactly the model.
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


def _vgg16_bn():
    # VGG-16's 13 convolutions, BatchNorms, ReLUs, max-pools and 3-layer classifier, with the classifier's
    # hidden width cut from 4096 to 64 so that the test stays small in float64.
    model = torchvision.models.vgg16_bn(num_classes=10)
    model.classifier[0], model.classifier[3], model.classifier[6] = nn.Linear(512 * 7 * 7, 64), nn.Linear(64, 64), \
        nn.Linear(64, 10)
    return model


# float64: in float32 a rounding-size difference in the folded weights can flip a max-pool's winner
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), ResNetCanonizer, 2),
    "vgg16_bn": (_vgg16_bn, VGGCanonizer, 1),
}


@pytest.fixture(scope="module", params=list(MODELS))
def tv_model(request):
    ctor, canonizer, batch = MODELS[request.param]
    torch.manual_seed(0)
    model = _random_bn(ctor()).double()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return request.param, model, canonizer, x


def _zennit(model, x, target, composite):
    with ZGradient(model=model, composite=composite) as attributor:
        # relevance starts at the target's score, as in fxai
        _, rel = attributor(x, lambda out: F.one_hot(target, out.shape[1]).to(out) * out)
    return rel


def _assert_agrees(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


TARGETS = torch.tensor([3, 7])


def _slow_on_vgg(model_name, request, default=False):
    if model_name == "vgg16_bn" and not default and "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("slow on VGG-16 (float64): run with -m slow; VGG-16's default composite runs by default")


@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_composites_agree_with_zennit(tv_model, name, request):
    model_name, model, canonizer, x = tv_model
    _slow_on_vgg(model_name, request, default=name == "epsilon_plus_flat")
    zc = {"epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=[canonizer()]),
          "epsilon_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=[canonizer()]),
          "epsilon_gamma_box": lambda: EpsilonGammaBox(low=0.0, high=1.0, canonizers=[canonizer()])}[name]()
    fc = L.epsilon_gamma_box(low=0.0, high=1.0) if name == "epsilon_gamma_box" else name
    model_fn, params = fxai.functional(model)
    expected = _zennit(model, x, TARGETS[:len(x)], zc)
    got, scores = fxai.lrp(model_fn, params, x, TARGETS[:len(x)], composite=fc, return_scores=True)
    _assert_agrees(got, expected)
    torch.testing.assert_close(scores, model(x).gather(1, TARGETS[:len(x), None])[:, 0], rtol=1e-9, atol=1e-12)


ZENNIT_RULES = {
    "epsilon": (L.Epsilon(0.01), lambda: ZR.Epsilon(0.01)),
    "zplus": (L.ZPlus(), lambda: ZR.ZPlus()),
    "alpha2beta1": (L.AlphaBeta(2.0, 1.0), lambda: ZR.AlphaBeta(2.0, 1.0)),
    "alpha1beta0": (L.AlphaBeta(1.0, 0.0), lambda: ZR.AlphaBeta(1.0, 0.0)),
    "gamma": (L.Gamma(0.25), lambda: ZR.Gamma(0.25)),
    "flat": (L.Flat(), lambda: ZR.Flat()),
    # fxai's w² has no bias (Montavon et al. 2017); Zennit squares the bias too unless it is zeroed
    "wsquare": (L.WSquare(), lambda: ZR.WSquare(zero_params=["bias"])),
    "zbox": (L.ZBox(-1.0, 2.0), lambda: ZR.ZBox(-1.0, 2.0)),
}


@pytest.mark.parametrize("rule", list(ZENNIT_RULES))
def test_every_rule_on_every_convolution_agrees_with_zennit(tv_model, rule, request):
    name, model, canonizer, x = tv_model
    _slow_on_vgg(name, request)
    ours, theirs = ZENNIT_RULES[rule]
    zc = LayerMapComposite(layer_map=layer_map_base() + [(Convolution, theirs()), (nn.Linear, ZR.Epsilon())],
                           canonizers=[canonizer()])
    model_fn, params = fxai.functional(model)
    got = fxai.lrp(model_fn, params, x, TARGETS[:len(x)], composite={"conv": ours, "linear": L.Epsilon()})
    _assert_agrees(got, _zennit(model, x, TARGETS[:len(x)], zc))


def test_rules_by_layer_name_agree_with_zennit(tv_model, request):
    name, model, canonizer, x = tv_model
    _slow_on_vgg(name, request)
    names = ("conv1", "layer4", "fc") if name == "resnet18" else ("features.0", "features.40", "classifier.6")
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    under = lambda p: [n for n in convs if n == p or n.startswith(p + ".")]  # noqa: E731
    zc = NameMapComposite(name_map=[(tuple(under(names[0])), ZR.Flat()), (tuple(under(names[1])), ZR.Gamma(0.5)),
                                    (tuple(under(names[2])), ZR.Epsilon(0.1))],
                          canonizers=[canonizer()])
    # Zennit's name map leaves other layers (and pooling, additions, activations) to the gradient
    comp = {names[0]: L.Flat(), names[1]: L.Gamma(0.5), names[2]: L.Epsilon(0.1), "conv": L.Gradient(),
            "linear": L.Gradient(), "pool": L.Gradient(), "add": L.Gradient(), "activation": L.Gradient(),
            "batchnorm": L.Gradient()}
    model_fn, params = fxai.functional(model)
    t = TARGETS[:len(x)]
    _assert_agrees(fxai.lrp(model_fn, params, x, t, composite=comp), _zennit(model, x, t, zc))


# ---------------------------------------------------------------- conservation on torchvision architectures


def _bias_free(model):
    """Random BatchNorm scales and variances with zero means and shifts, and zero dense biases: after folding, no
    layer has a bias, so every rule conserves relevance up to its stabiliser."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.bias.data.zero_()
    return model.eval().double()


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_relevance_is_conserved_on_resnet_and_densenet(arch):
    torch.manual_seed(0)
    model = _bias_free(getattr(torchvision.models, arch)(num_classes=10))
    model_fn, params = fxai.functional(model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r, s = fxai.lrp(model_fn, params, x, 3, composite=L.epsilon_plus_flat(epsilon=1e-12, stabilizer=1e-12),
                    return_scores=True)
    torch.testing.assert_close(s, model(x)[:, 3], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r.flatten(1).sum(1), s, rtol=1e-8, atol=0)


def test_captum_lrp_breaks_conservation_on_a_resnet_where_fxai_keeps_it():
    # Captum's LRP has no rule for the residual ``+=`` (the gradient copies relevance into both branches) and
    # treats each BatchNorm as an epsilon layer; fxai splits additions by contribution and folds BatchNorm.
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule
    torch.manual_seed(0)
    model = _bias_free(torchvision.models.resnet18(num_classes=10)).float()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model_fn, params = fxai.functional(model)
    r, s = fxai.lrp(model_fn, params, x, 3, composite="epsilon_plus", return_scores=True)
    assert abs(float(r.sum() - s.sum())) < 1e-3 * abs(float(s.sum()))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.rule = Alpha1_Beta0_Rule()
        elif isinstance(m, nn.Linear):
            m.rule = EpsilonRule(1e-6)
    theirs = LRP(model).attribute(x, target=3).detach()
    assert abs(float(theirs.sum() - s.sum())) > 0.5 * abs(float(s.sum()))
