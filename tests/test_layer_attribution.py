"""Layers and neurons as attribution targets: ``at_layer``, ``layer_conductance``, ``layer_output``, ``neuron``.

Oracles: Captum's LayerGradientXActivation (with and without the multiplication: LayerGradient),
LayerIntegratedGradients, LayerConductance, NeuronGradient and NeuronIntegratedGradients on torchvision's
resnet18 with random weights and on a small hand-made CNN; closed forms on a model with a residual path.
"""

import copy

import pytest
import torch
import torchvision
from conftest import ModuleSnapshot, make_tiny_cnn
from torch import nn

import fxai

captum_attr = pytest.importorskip("captum.attr")

STEPS = 4  # Captum builds its Riemann points in float32: k / 4 is exact there, so they agree to 1e-12


def _module(model, name):
    return dict(model.named_modules())[name]


@pytest.fixture(scope="module")
def resnet64():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def _targets(model, x):
    top1 = model(x).argmax(1)
    return {"int": (3, 3), "per-input": (torch.tensor([1, 7]), torch.tensor([1, 7])), "top-1": (None, top1)}


def _close(ours, ref, rtol):
    """Max abs difference relative to the reference's largest value."""
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item() / ref.abs().max().item()
    assert err <= rtol, err


# Captum multiplies its gradients by quadrature weights rounded to float32: IG-based sums agree to ~1e-8.
@pytest.mark.parametrize("layer,kind", [("layer2", "int"), ("layer3.0.conv1", "per-input"), ("layer4", "top-1"),
                                        ("layer3.0.conv1", "top-1")])
def test_layer_methods_match_captum_on_resnet18(resnet64, layer, kind):
    model, x = resnet64
    model_fn, params = fxai.functional(model)
    ours_t, ref_t = _targets(model, x)[kind]
    mod = _module(model, layer)
    snap = ModuleSnapshot(model)

    g = fxai.at_layer(fxai.gradient, layer)(model_fn, params, x, ours_t)
    _close(g, captum_attr.LayerGradientXActivation(model, mod, multiply_by_inputs=False).attribute(x, ref_t), 1e-12)
    gxa = fxai.at_layer(fxai.input_x_gradient, layer)(model_fn, params, x, ours_t)
    _close(gxa, captum_attr.LayerGradientXActivation(model, mod).attribute(x, ref_t), 1e-12)
    lig = fxai.at_layer(fxai.integrated_gradients, layer)(model_fn, params, x, ours_t, steps=STEPS, baseline=0.1)
    ref = captum_attr.LayerIntegratedGradients(model, mod).attribute(x, baselines=0.1, target=ref_t, n_steps=STEPS)
    _close(lig, ref, 1e-7)
    for rule in ("gausslegendre", "riemann_trapezoid"):
        cond = fxai.layer_conductance(model_fn, params, x, ours_t, layer=layer, steps=STEPS, method=rule)
        ref = captum_attr.LayerConductance(model, mod).attribute(x, target=ref_t, n_steps=STEPS, method=rule)
        _close(cond, ref, 1e-12)
    snap.assert_unchanged()


def test_float32_matches_captum_to_1e5():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model_fn, params = fxai.functional(model)
    mod = _module(model, "layer3.0.conv1")
    lig = fxai.at_layer(fxai.integrated_gradients, "layer3.0.conv1")(model_fn, params, x, 2, steps=STEPS)
    ref = captum_attr.LayerIntegratedGradients(model, mod).attribute(x, target=2, n_steps=STEPS)
    _close(lig, ref, 1e-5)
    cond = fxai.layer_conductance(model_fn, params, x, 2, layer="layer3.0.conv1", steps=STEPS, method="gausslegendre")
    _close(cond, captum_attr.LayerConductance(model, mod).attribute(x, target=2, n_steps=STEPS), 1e-5)


@pytest.mark.parametrize("layer,selector", [("layer2", (1, 0, 3)), ("layer3.0.conv1", (5, -1, 1)),
                                            ("layer4", (7, 0, 0)), ("layer3", (2, slice(None), slice(0, 2))),
                                            ("layer4", (3, ...))])
def test_neuron_methods_match_captum_on_resnet18(resnet64, layer, selector):
    model, x = resnet64
    model_fn, params = fxai.functional(model)
    mod = _module(model, layer)
    neurons = fxai.layer_output(model_fn, layer)
    target = fxai.neuron(neurons, params, x, selector)
    captum_selector = tuple(slice(None) if s is Ellipsis else s for s in selector)
    captum_selector += (slice(None),) * (3 - len(captum_selector))
    g = fxai.gradient(neurons, params, x, target)
    _close(g, captum_attr.NeuronGradient(model, mod).attribute(x.clone().requires_grad_(), captum_selector), 1e-12)
    ig = fxai.integrated_gradients(neurons, params, x, target, steps=STEPS)
    _close(ig, captum_attr.NeuronIntegratedGradients(model, mod).attribute(x, captum_selector, n_steps=STEPS), 1e-7)


def test_neuron_callable_selector_matches_captum(resnet64):
    model, x = resnet64
    model_fn, params = fxai.functional(model)
    neurons = fxai.layer_output(model_fn, "layer3")
    select = lambda a: a[:, 4].mean((1, 2))  # noqa: E731 - a channel's mean, as Captum's callable selector
    target = fxai.neuron(neurons, params, x, select)
    g = fxai.gradient(neurons, params, x, target)
    ref = captum_attr.NeuronGradient(model, _module(model, "layer3")).attribute(x.clone().requires_grad_(), select)
    _close(g, ref, 1e-12)


@pytest.mark.parametrize("layer", ["conv2", "layer4"])
def test_hand_made_cnn_matches_captum(layer):
    model = make_tiny_cnn().double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model_fn, params = fxai.functional(model)
    # conv2 is followed by ReLU(inplace=True), on which Captum's layer hooks fail ("a leaf Variable that requires
    # grad is being used in an in-place operation"); fxai runs the model as it is, Captum a copy without in-place
    model = copy.deepcopy(model)
    model.relu2.inplace = False
    mod = _module(model, layer)
    target = torch.tensor([0, 4, 2])
    base = torch.rand(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))  # one each
    lig = fxai.at_layer(fxai.integrated_gradients, layer)(model_fn, params, x, target, steps=STEPS, baseline=base)
    ref = captum_attr.LayerIntegratedGradients(model, mod).attribute(x, baselines=base, target=target, n_steps=STEPS)
    _close(lig, ref, 1e-7)
    gxa = fxai.at_layer(fxai.input_x_gradient, layer)(model_fn, params, x, target)
    _close(gxa, captum_attr.LayerGradientXActivation(model, mod).attribute(x, target), 1e-12)
    cond = fxai.layer_conductance(model_fn, params, x, target, layer=layer, steps=STEPS, method="riemann_trapezoid")
    ref = captum_attr.LayerConductance(model, mod).attribute(x, target=target, n_steps=STEPS,
                                                             method="riemann_trapezoid")
    _close(cond, ref, 1e-12)
    neurons = fxai.layer_output(model_fn, layer)
    ng = fxai.gradient(neurons, params, x, fxai.neuron(neurons, params, x, (1, 2, 3)))
    _close(ng, captum_attr.NeuronGradient(model, mod).attribute(x.clone().requires_grad_(), (1, 2, 3)), 1e-12)


class Bypass(nn.Module):
    """``out = V relu(W x) + U x``: the layer ``inner`` (``W x``) is bypassed by ``U x``."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inner = nn.Linear(4, 3, bias=False)
        self.head = nn.Linear(3, 2, bias=False)
        self.skip = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            for m in (self.inner, self.head, self.skip):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.head(torch.relu(self.inner(x))) + self.skip(x)


def test_closed_forms_with_a_bypassed_layer():
    model = Bypass().double().eval()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a = model.inner(x)
    V = model.head.weight
    # gradient at the layer: V[c] ⊙ relu'(a); the bypass U x contributes nothing
    g = fxai.at_layer(fxai.gradient, "inner")(model_fn, params, x, 1)
    torch.testing.assert_close(g, V[1] * (a > 0), rtol=0, atol=1e-15)
    # IG at the layer from a(0) = 0: V relu(α a) = α V relu(a) is linear in α, so IG = V ⊙ relu(a) exactly, and its
    # completeness holds in layer space: f(x) - f(x with a <- 0), the bypass U x cancelling
    lig, err = fxai.at_layer(fxai.integrated_gradients, "inner")(model_fn, params, x, 1, steps=4, return_error=True)
    torch.testing.assert_close(lig, V[1] * torch.relu(a), rtol=0, atol=1e-12)
    torch.testing.assert_close(err, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # conductance along the input path x_α = α x: a(x_α) = α a, each of the 4 cells adds V ⊙ relu(a) / 4, except
    # the first, whose gradient is taken at α = 0 where relu'(0) = 0
    cond = fxai.layer_conductance(model_fn, params, x, 1, layer="inner", steps=4)
    torch.testing.assert_close(cond, V[1] * torch.relu(a) * 3 / 4, rtol=0, atol=1e-12)


def test_conductance_completeness_on_a_layer_every_path_crosses():
    model = make_tiny_cnn().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    model_fn, params = fxai.functional(model)
    change = (model_fn(params, x) - model_fn(params, torch.zeros_like(x)))[:, 1].abs().min()
    coarse = fxai.layer_conductance(model_fn, params, x, 1, layer="conv3", steps=4, return_error=True)[1]
    fine = fxai.layer_conductance(model_fn, params, x, 1, layer="conv3", steps=256, return_error=True)[1]
    assert fine.abs().max() < coarse.abs().max() / 10  # a first-order sum: the error falls like 1 / steps
    assert fine.abs().max() < 5e-4 * change


def test_targets_k_at_once_top1_and_callables(resnet64):
    model, x = resnet64
    model_fn, params = fxai.functional(model)
    lig = fxai.at_layer(fxai.integrated_gradients, "layer3")
    both = lig(model_fn, params, x, torch.tensor([[1, 4], [7, 0]]), steps=4)
    assert both.shape == (2, 2, 256, 2, 2)
    torch.testing.assert_close(both[:, 1], lig(model_fn, params, x, torch.tensor([4, 0]), steps=4), rtol=0, atol=1e-13)
    cond = fxai.layer_conductance(model_fn, params, x, torch.tensor([[1, 4], [7, 0]]), layer="layer3", steps=4)
    torch.testing.assert_close(cond[:, 0], fxai.layer_conductance(model_fn, params, x, torch.tensor([1, 7]),
                                                                  layer="layer3", steps=4), rtol=0, atol=1e-13)
    top1 = model(x).argmax(1)
    torch.testing.assert_close(lig(model_fn, params, x, None, steps=4), lig(model_fn, params, x, top1, steps=4))
    by_fn = lig(model_fn, params, x, lambda logits: logits[:, 5], steps=4)
    torch.testing.assert_close(by_fn, lig(model_fn, params, x, 5, steps=4), rtol=0, atol=1e-13)
    neurons = fxai.layer_output(model_fn, "layer3")
    many = fxai.neuron(neurons, params, x, torch.tensor([[[0, 0, 1], [3, 1, 1]], [[2, 1, 0], [0, 0, 0]]]))
    torch.testing.assert_close(many, torch.tensor([[1, 15], [10, 0]]))
    assert fxai.gradient(neurons, params, x, many).shape == (2, 2, 3, 32, 32)


def test_batch_equals_single_calls_and_noise_in_layer_space(resnet64):
    model, x = resnet64
    model_fn, params = fxai.functional(model)
    sg = fxai.at_layer(fxai.smoothgrad(fxai.gradient, samples=3, sigma=0.1), "layer3.0.conv1")
    batch = sg(model_fn, params, x, 2, key=7)
    assert torch.equal(batch, sg(model_fn, params, x, 2, key=7))
    plain = fxai.at_layer(fxai.gradient, "layer3.0.conv1")(model_fn, params, x, 2)
    assert not torch.allclose(batch, plain)  # the noise reached the layer space
    lig = fxai.at_layer(fxai.integrated_gradients, "layer3.0.conv1")
    torch.testing.assert_close(lig(model_fn, params, x, 2, steps=3)[1:], lig(model_fn, params, x[1:], 2, steps=3),
                               rtol=0, atol=1e-13)
    # a method without structured inputs runs once per input, with the same numbers
    def one_tensor_ig(model_fn, params, x, target=None, *, baseline=0.0, steps=50, chunk_size=None):
        return fxai.integrated_gradients(model_fn, params, x, target, baseline=baseline, steps=steps,
                                         chunk_size=chunk_size)
    looped = fxai.at_layer(one_tensor_ig, "layer3.0.conv1")
    torch.testing.assert_close(looped(model_fn, params, x, 2, steps=3, baseline=0.2),
                               lig(model_fn, params, x, 2, steps=3, baseline=0.2), rtol=0, atol=1e-13)
    # through a transform, the baseline still maps to the layer: with no noise, SmoothGrad of IG is IG
    quiet = fxai.at_layer(fxai.smoothgrad(fxai.integrated_gradients, samples=2, sigma=0.0), "layer2")
    lig = fxai.at_layer(fxai.integrated_gradients, "layer2")
    torch.testing.assert_close(quiet(model_fn, params, x, 2, key=0, baseline=0.1, steps=4),
                               lig(model_fn, params, x, 2, baseline=0.1, steps=4), rtol=0, atol=1e-13)
    chunked = fxai.at_layer(fxai.integrated_gradients, "layer2")(model_fn, params, x, 2, steps=5, chunk_size=2)
    whole = fxai.at_layer(fxai.integrated_gradients, "layer2")(model_fn, params, x, 2, steps=5)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-13)


def test_expected_gradients_references_map_to_the_layer():
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    refs = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    eg = fxai.at_layer(fxai.expected_gradients, "conv3")(model_fn, params, x, 1, references=refs, samples=4, key=0)
    assert eg.shape == (2, 16, 8, 8)
    # one reference: EG is IG with random path points; its sum over units matches f(x) - f(ref) on average only,
    # but the map vanishes wherever the activation equals the reference's
    a, a0 = (fxai.layer_output(model_fn, "conv3")(params, t).view(-1, 16, 8, 8) for t in (x, refs))
    assert torch.all(eg[(a == a0).expand_as(eg)] == 0)


def test_differentiable_wrt_params():
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    key = "fc.weight"

    def loss(w):
        p = {**params, key: w}
        return fxai.at_layer(fxai.gradient, "layer4")(model_fn, p, x, 1).square().sum()

    grad = torch.func.grad(loss)(params[key])
    eps = 1e-6
    bump = torch.zeros_like(params[key])
    bump[1, 3] = eps
    numeric = (loss(params[key] + bump) - loss(params[key] - bump)) / (2 * eps)
    torch.testing.assert_close(grad[1, 3], numeric, rtol=1e-6, atol=1e-9)


def test_errors_name_the_argument():
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        fxai.layer_output(model_fn, "nope")
    with pytest.raises(TypeError, match="layer must be one dotted layer name"):
        fxai.layer_output(model_fn, ["conv2"])
    with pytest.raises(TypeError, match="method must be an attribution method"):
        fxai.at_layer("gradient", "conv2")
    with pytest.raises(TypeError, match="baseline: gradient takes no baseline"):
        fxai.at_layer(fxai.gradient, "conv2")(model_fn, params, x, 1, baseline=0.0)
    with pytest.raises(ValueError, match="unknown layer"):
        fxai.layer_conductance(model_fn, params, x, 1, layer="conv9")
    neurons = fxai.layer_output(model_fn, "conv3")
    with pytest.raises(ValueError, match=r"out of range for the activation's shape \[16, 8, 8\]"):
        fxai.neuron(neurons, params, x, (16, 0, 0))
    with pytest.raises(ValueError, match="D = 3"):
        fxai.neuron(neurons, params, x, (1, 2))
    with pytest.raises(ValueError, match="out of range"):
        fxai.neuron(neurons, params, x, (1, slice(None), 9))
    with pytest.raises(ValueError, match="B = 2"):
        fxai.neuron(neurons, params, x, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer positions"):
        fxai.neuron(neurons, params, x, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="neurons must be a model made by fxai.layer_output"):
        fxai.neuron(model_fn, params, x, (0, 0, 0))
    with pytest.raises(ValueError, match="out of range for a model with 1024 outputs"):
        fxai.gradient(neurons, params, x, 1024)


class Untraceable(nn.Module):
    """Data-dependent control flow: FX cannot trace it, so the hook tap serves."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.tanh(self.inner(x))
        if bool(x.sum() > -1e9):  # always true, but data-dependent
            h = h * 2
        return self.head(h)


def test_hook_tap_gives_the_same_numbers_and_leaves_nothing_behind():
    model = Untraceable().double().eval()
    model_fn, params = fxai.functional(model)
    assert model_fn.graph_tap(("inner",)) is None  # FX gave up: the hook tap runs
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    W = model.head.weight
    g = fxai.at_layer(fxai.gradient, "inner")(model_fn, params, x, 0)
    a = model.inner(x)
    torch.testing.assert_close(g, 2 * W[0] * (1 - torch.tanh(a) ** 2), rtol=0, atol=1e-14)
    neurons = fxai.layer_output(model_fn, "inner")
    torch.testing.assert_close(neurons(params, x), a, rtol=0, atol=1e-15)
    snap = ModuleSnapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        fxai.at_layer(fxai.gradient, "inner")(model_fn, params, x, 7)
    snap.assert_unchanged()


class TwoViews(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(12, 8), nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, view, extra, scale):
        return self.head(torch.tanh(self.a(view) + self.b(extra)) * scale[:, None])


def test_neurons_of_a_model_with_several_inputs():
    model = TwoViews().double().eval()
    model_fn, params = fxai.functional(model)
    g = torch.Generator().manual_seed(9)
    view, extra, scale = (torch.rand(4, n, dtype=torch.float64, generator=g) for n in (12, 6, 1))
    neurons = fxai.layer_output(model_fn, "b")
    g_view, g_extra, g_scale = fxai.gradient(neurons, params, (view, extra, fxai.fixed(scale[:, 0])), 5)
    torch.testing.assert_close(g_view, torch.zeros_like(view), rtol=0, atol=0)
    torch.testing.assert_close(g_extra, model.b.weight[5].expand(4, 6), rtol=0, atol=1e-15)
    assert g_scale is None


def test_cut_graphs_tail_only_where_nothing_bypasses_the_layer(resnet64):
    from fxai._core.layers import tapped
    from fxai._core.tails import tail, upto
    from fxai.attribution.layer_space import _head

    model, x = resnet64
    model_fn, params = fxai.functional(model)
    assert tail(model_fn, "layer3.0.conv1") is None and tail(model_fn, "layer4.1.bn2") is None  # residual branches
    tap = tapped(model_fn, ["layer2"])
    _, (act,) = tap(params, x)
    before = act.clone()
    torch.testing.assert_close(tail(model_fn, "layer2")(params, act), model(x), rtol=0, atol=1e-13)
    assert torch.equal(act, before)
    torch.testing.assert_close(upto(model_fn, "layer2")(params, x), act, rtol=0, atol=0)
    # the tail and the whole forward with the layer's output replaced give the same attributions
    by_tail = fxai.at_layer(fxai.integrated_gradients, "layer2")(model_fn, params, x, 3, steps=3)
    whole = fxai.integrated_gradients(_head(tap), params, (act, fxai.fixed(x), fxai.fixed(act)), 3, steps=3,
                                      baseline=(tap(params, torch.zeros_like(x))[1][0], None, None))[0]
    torch.testing.assert_close(by_tail, whole, rtol=0, atol=1e-13)


def test_split_model_layer_is_its_features():
    w = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    features = lambda p, x: torch.tanh(x @ p["w"])  # noqa: E731
    head = lambda p, a: a @ p["v"]  # noqa: E731
    params = {"w": w, "v": torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(11))}
    model_fn = fxai.split(features, head)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    a = features(params, x)
    torch.testing.assert_close(fxai.at_layer(fxai.input_x_gradient, None)(model_fn, params, x, 1),
                               a * params["v"][:, 1], rtol=0, atol=1e-15)
    torch.testing.assert_close(fxai.layer_output(model_fn, "features")(params, x), a, rtol=0, atol=0)


class TupleOut(nn.Module):
    """``(V relu(W x), W x)``: logits first, then an auxiliary output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.inner = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        a = self.inner(x)
        return self.head(torch.relu(a)), a


def test_a_model_returning_a_tuple_through_the_tail():
    from fxai._core.tails import tail

    model = TupleOut().double().eval()
    model_fn, params = fxai.functional(model, output=0)
    assert tail(model_fn, "inner") is not None
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    a = model.inner(x)
    g = fxai.at_layer(fxai.gradient, "inner")(model_fn, params, x, 1)
    torch.testing.assert_close(g, model.head.weight[1] * (a > 0), rtol=0, atol=1e-15)
    cond = fxai.layer_conductance(model_fn, params, x, 1, layer="inner", steps=4)
    assert cond.shape == (3, 3)
