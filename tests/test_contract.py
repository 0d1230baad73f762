"""The contract every public method keeps, driven by ``fxai.registry``: every method, and every transform
applied to the input × gradient.

Each method runs on the tiny CNN with its registry row's ``quick`` settings.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ModuleSnapshot, active_modes, leftover_hooks, make_tiny_cnn, make_tiny_vit

import fxai
from fxai import registry

LAYER = "layer4"
B = 3

# Every method, and every transform applied to a method whose maps vary with the input.
ROWS = {**registry.METHODS,
        **{f"{t.name}(input_x_gradient)": registry.applied(t, registry.METHODS["input_x_gradient"], **t.quick)
           for t in registry.TRANSFORMS.values()}}


def make_model(info, **kw):
    """The tiny CNN; a tiny ViT for the methods that read a transformer's attention."""
    return make_tiny_vit(**kw) if info.family == "transformer" else make_tiny_cnn(**kw)


def _references(x):
    return torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(42))


def options_for(info, x, key=0):
    return registry.options(info, size=x.shape[-2:], layer=LAYER, key=key, references=_references(x), quick=True)


def call(info, model_fn, params, x, target, **extra):
    return info.fn(model_fn, params, x, target, **{**options_for(info, x), **extra})


def expected_shape(info, x, k=None):
    lead = (x.shape[0],) if k is None else (x.shape[0], k)
    return lead + (tuple(x.shape[1:]) if info.kind == "pixel" else tuple(x.shape[2:]))


@pytest.fixture(params=list(ROWS), ids=list(ROWS))
def info(request):
    return ROWS[request.param]


TARGETS = torch.tensor([0, 4, 2])
_OUTPUTS: dict = {}
_OUTPUTS64: dict = {}


@pytest.fixture
def setup(info, tiny_input):
    """A fresh tiny CNN, its functional form, and the method's map for TARGETS (computed once per method)."""
    model = make_model(info)
    model_fn, params = fxai.functional(model)
    if info.name not in _OUTPUTS:
        _OUTPUTS[info.name] = call(info, model_fn, params, tiny_input, TARGETS)
    return model, model_fn, params, _OUTPUTS[info.name]


def assert_maps_close(got, expected, rtol=1e-5):
    """Close up to float reordering: ``rtol`` per element plus ``rtol`` of the map's largest value."""
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def test_shape_dtype_finite(info, setup, tiny_input):
    _, _, _, out = setup
    assert out.shape == expected_shape(info, tiny_input)
    assert out.dtype == tiny_input.dtype
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_k_targets_equal_single_targets(info, setup64):
    # Column k of a [B, K] target's maps is the map of target column k (one forward shared by the K).
    model_fn, params, x, _ = setup64
    targets = torch.tensor([[0, 1, 3], [2, 3, 2], [4, 0, 1]])
    out = call(info, model_fn, params, x, targets)
    assert out.shape == expected_shape(info, x, 3)
    for k in range(3):
        assert_maps_close(out[:, k], call(info, model_fn, params, x, targets[:, k]), rtol=1e-9)


# Batch and chunk checks run in float64, where any logic error stands out of rounding noise.

@pytest.fixture
def setup64(info, setup, tiny_input):
    model, _, _, _ = setup
    model_fn, params = fxai.functional(model.double())
    x = tiny_input.double()
    if info.name not in _OUTPUTS64:
        _OUTPUTS64[info.name] = call(info, model_fn, params, x, TARGETS)
    assert _OUTPUTS64[info.name].dtype == torch.float64
    return model_fn, params, x, _OUTPUTS64[info.name]


def test_batch_equals_single_calls(info, setup64):
    if info.randomised:
        pytest.skip("a randomised method draws per batch; covered by the key and chunk tests")
    model_fn, params, x, out = setup64
    for i in range(B):
        assert_maps_close(call(info, model_fn, params, x[i:i + 1], TARGETS[i:i + 1]), out[i:i + 1], rtol=1e-9)


def test_chunked_equals_unchunked(info, setup64):
    model_fn, params, x, out = setup64
    assert_maps_close(call(info, model_fn, params, x, TARGETS, chunk_size=2), out, rtol=1e-9)


def test_same_key_same_map_other_key_other_map(info, setup, tiny_input):
    if not info.randomised:
        pytest.skip("not randomised")
    _, model_fn, params, out = setup
    torch.testing.assert_close(call(info, model_fn, params, tiny_input, TARGETS, key=torch.Generator().manual_seed(0)),
                               out, rtol=0, atol=0)
    if info.name != "smooth_grad_cam_plus_plus":  # its noise moves only the gradient at layer4: constant here (linear head)
        assert not torch.allclose(call(info, model_fn, params, tiny_input, TARGETS, key=1), out)
    opts = options_for(info, tiny_input)
    del opts["key"]
    with pytest.raises(TypeError, match="key"):
        info.fn(model_fn, params, tiny_input, TARGETS, **opts)


def test_differentiable_wrt_params(info, setup, tiny_input):
    model, model_fn, params, _ = setup
    tiny_input = tiny_input[:2]
    names = {k for k, _ in model.named_parameters()}
    fixed = {k: v for k, v in params.items() if k not in names}

    def loss(p):
        return call(info, model_fn, {**p, **fixed}, tiny_input, TARGETS[:2]).square().sum()

    grads = torch.func.grad(loss)({k: params[k] for k in names})
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0

    leaves = {k: params[k].clone().requires_grad_() for k in grads}
    auto = torch.autograd.grad(loss(leaves), list(leaves.values()), allow_unused=True)
    # Tolerance on the scale of the largest gradient: a tensor whose exact gradient is 0 (the bias of a map
    # made of score differences) holds only rounding noise, which the two routes round differently.
    scale = max(float(g.abs().max()) for g in grads.values())
    for g, a in zip(grads.values(), auto):
        torch.testing.assert_close(torch.zeros_like(g) if a is None else a, g, rtol=1e-4, atol=1e-4 * scale)


# Methods whose maps' derivatives are known to be inexact (an open limitation, measured here): none.
INEXACT_INPUT_DERIVATIVE: set = set()


def test_differentiable_wrt_input(info, tiny_input):
    if info.name in INEXACT_INPUT_DERIVATIVE:
        pytest.xfail("the map's derivative is not exact (see INEXACT_INPUT_DERIVATIVE)")
    # The gradient of a loss of the map w.r.t. x, against central differences along random directions
    # (float64): a method that detached x would fail. The model starts with tanh(x), so that even maps that
    # are piecewise constant in x on a ReLU network (gradients) vary with it.
    model_fn, params = fxai.functional(make_model(info, smooth_input=True).double())
    x = tiny_input[:2].double()
    rand = torch.Generator().manual_seed(3)
    weights = None

    def loss(x):
        nonlocal weights
        m = call(info, model_fn, params, x, TARGETS[:2])
        if weights is None:
            weights = torch.randn(m.shape, generator=rand, dtype=m.dtype)
        return (m * weights).sum()

    g = torch.func.grad(loss)(x)
    assert g.shape == x.shape and torch.isfinite(g).all()
    h = 1e-6
    for _ in range(2):
        v = torch.randn(x.shape, generator=rand, dtype=x.dtype)
        numeric = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        assert abs(float(numeric)) > 1e-6, "the map does not depend on x along this direction"
        torch.testing.assert_close((g * v).sum(), numeric, rtol=1e-3, atol=1e-7)  # a kink may lie within h


def test_module_and_params_untouched(info, setup, tiny_input):
    model, model_fn, params, _ = setup
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    model.conv1.bias.requires_grad_(False)
    snap = ModuleSnapshot(model)
    before = {k: v.clone() for k, v in params.items()}
    call(info, model_fn, params, tiny_input, None)
    snap.assert_unchanged()
    for k, v in before.items():
        assert torch.equal(params[k], v) and not params[k].requires_grad, k


class _WritesIntoItsInput(torch.nn.Module):
    """The tiny CNN behind ``x.mul_(0.5)``: a model that writes into its input."""

    def __init__(self, net=None):
        super().__init__()
        self.net = make_tiny_cnn() if net is None else net

    def forward(self, x):
        return self.net(x.mul_(0.5))


def test_input_untouched_by_a_model_that_writes_into_it(info, tiny_input):
    model_fn, params = fxai.functional(_WritesIntoItsInput(make_model(info)))
    x = tiny_input.clone()
    opts = {**options_for(info, x), **({"layer": "net.layer4"} if info.layered else {})}
    for target in (TARGETS, None):
        info.fn(model_fn, params, x, target, **opts)
        assert torch.equal(x, tiny_input), f"{info.name} changed x (target {target})"


class Boom(Exception):
    pass


class Raiser(torch.nn.Module):
    def forward(self, x):
        raise Boom


def test_nothing_left_after_an_exception(info, setup, tiny_input):
    model, _, _, _ = setup
    model.drop = Raiser()  # raises in the forward, after the tapped layer, inside any rule or hook
    model_fn, params = fxai.functional(model)
    with pytest.raises(Boom):
        call(info, model_fn, params, tiny_input, TARGETS)
    assert leftover_hooks(model) == [] and active_modes() == []


@pytest.mark.parametrize("name", list(registry.ENTRIES))
def test_docstring(name):
    info = registry.ENTRIES[name]
    doc = info.fn.__doc__ or ""
    assert "Example" in doc and ">>>" in doc, f"{info.name}: docstring needs a runnable example"
    assert len(doc.split()) > 20


# ---------------------------------------------------------------- torch.compile


def _compiled_vs_eager(info, model, x, targets, backend="inductor"):
    model_fn, params = fxai.functional(model)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: call(info, model_fn, params, x, t), backend=backend)
    assert_maps_close(compiled(x, targets), call(info, model_fn, params, x, targets), rtol=1e-4)


@pytest.mark.parametrize("name", ["gradient", "guided_backprop"])
def test_compiled_equals_eager_fast(name, tiny_input):
    # Dynamo capture and AOT autograd (where rules and modes could break), without inductor's
    # code generation, which takes ~30 s cold; the inductor check of every method is marked slow.
    _compiled_vs_eager(ROWS[name], make_tiny_cnn(), tiny_input, TARGETS, backend="aot_eager")


@pytest.mark.slow
def test_compiled_equals_eager(info, setup, tiny_input):
    model, _, _, _ = setup
    _compiled_vs_eager(info, model, tiny_input, TARGETS)


@pytest.mark.parametrize("name", ["integrated_gradients", "guided_backprop", "grad_cam"])
def test_fxai_compiled_equals_eager_and_leaves_the_module_alone(name, tiny_input):
    info = ROWS[name]
    model = make_tiny_cnn()
    snap = ModuleSnapshot(model)
    model_fn, params = fxai.functional(model)
    opts = options_for(info, tiny_input)
    torch._dynamo.reset()
    fn = fxai.compiled(info.fn, model, backend="aot_eager", **opts)
    got = fn(tiny_input, TARGETS)
    assert got.is_contiguous()
    assert_maps_close(got, info.fn(model_fn, params, tiny_input, TARGETS, **opts), rtol=1e-4)
    snap.assert_unchanged()


@pytest.mark.slow
def test_fxai_compiled_with_inductor_freezing(tiny_input):
    model_fn, params = fxai.functional(make_tiny_cnn())
    torch._dynamo.reset()
    ig = fxai.compiled(fxai.integrated_gradients, make_tiny_cnn(), steps=4)
    assert_maps_close(ig(tiny_input, TARGETS), fxai.integrated_gradients(model_fn, params, tiny_input, TARGETS, steps=4),
                      rtol=1e-4)


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "input_x_gradient"])
def test_compiled_model_fn_as_model_fn(name, tiny_input):
    # torch.compile(model_fn) in place of model_fn: autograd runs its compiled backward for one target per
    # input, torch.func batches the K backward passes of a [B, K] target.
    info = ROWS[name]
    model_fn, params = fxai.functional(make_tiny_cnn())
    torch._dynamo.reset()
    compiled_fn = torch.compile(model_fn, backend="aot_eager")
    for target in (TARGETS, torch.tensor([[0, 1], [2, 3], [4, 0]])):
        assert_maps_close(call(info, compiled_fn, params, tiny_input, target),
                          call(info, model_fn, params, tiny_input, target), rtol=1e-5)


def test_fxai_compiled_passes_an_option_called_method(tiny_input):
    """``compiled``'s own parameters are positional-only, so IG's ``method=`` option reaches IG."""
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    torch._dynamo.reset()
    fn = fxai.compiled(fxai.integrated_gradients, model, backend="eager", steps=4, method="riemann_left")
    want = fxai.integrated_gradients(model_fn, params, tiny_input, TARGETS, steps=4, method="riemann_left")
    assert_maps_close(fn(tiny_input, TARGETS), want, rtol=1e-5)
    assert not torch.allclose(want, fxai.integrated_gradients(model_fn, params, tiny_input, TARGETS, steps=4))
