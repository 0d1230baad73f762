"""Structured model outputs: ``fxai.functional(module, output=...)`` picks the logits from tuples, dicts,
dataclasses, named tuples and HuggingFace ``ModelOutput``s, in every method and both layer taps."""

import collections
import dataclasses

import pytest
import torch
from conftest import ModuleSnapshot, active_modes, leftover_hooks, make_tiny_cnn
from torch import nn

import fxai


@dataclasses.dataclass
class Result:
    features: torch.Tensor
    logits: torch.Tensor


class Scores(collections.namedtuple("Scores", ["score", "aux"])):
    pass


class Wrapped(nn.Module):
    """The tiny CNN, its output (and its pooled features) returned in the form ``kind`` names."""

    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        self.net = make_tiny_cnn(seed)
        self.kind = kind

    def forward(self, x):
        logits = self.net(x)
        feats = x.mean((2, 3))
        if self.kind == "tuple":
            return feats, logits
        if self.kind == "list":
            return [logits, feats]
        if self.kind == "dict":
            return {"features": feats, "logits": logits}
        if self.kind == "seg_dict":
            return collections.OrderedDict(out=logits, aux=2 * logits)
        if self.kind == "scores":
            return {"scores": logits, "features": feats}
        if self.kind == "dataclass":
            return Result(feats, logits)
        if self.kind == "namedtuple":
            return Scores(logits, feats)
        if self.kind == "model_output":
            from transformers.modeling_outputs import ImageClassifierOutput
            return ImageClassifierOutput(logits=logits, hidden_states=(feats,))
        raise AssertionError(self.kind)


CASES = [("tuple", 1), ("tuple", -1), ("list", 0), ("dict", None), ("dict", "logits"), ("seg_dict", None),
         ("seg_dict", "out"), ("scores", "scores"), ("dataclass", None), ("dataclass", "logits"),
         ("namedtuple", "score"), ("namedtuple", 0), ("model_output", None), ("model_output", "logits"),
         ("model_output", 0), ("tuple", lambda out: out[1])]


class Plain(nn.Module):
    """The same network returning its logits tensor (same parameter names)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = make_tiny_cnn(seed)

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def plain():
    return fxai.functional(Plain())


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind, output", CASES, ids=lambda v: v.__name__ if callable(v) else repr(v))
def test_picked_logits_equal_the_plain_model(kind, output, plain, x):
    if kind == "model_output":
        pytest.importorskip("transformers")
    model_fn, params = fxai.functional(Wrapped(kind), output=output)
    ref_fn, ref_params = plain
    torch.testing.assert_close(model_fn(params, x), ref_fn(ref_params, x), rtol=0, atol=0)
    # the picking runs inside vmap and grad
    got = torch.func.vmap(lambda r: model_fn(params, r[None])[0])(x)
    torch.testing.assert_close(got, torch.func.vmap(lambda r: ref_fn(ref_params, r[None])[0])(x), rtol=0, atol=0)
    torch.testing.assert_close(fxai.gradient(model_fn, params, x, 2), fxai.gradient(ref_fn, ref_params, x, 2),
                               rtol=0, atol=0)


@pytest.mark.parametrize("kind, output", [("tuple", 1), ("dict", None), ("dataclass", None)])
def test_every_family_sees_the_logits(kind, output, plain, x):
    model_fn, params = fxai.functional(Wrapped(kind), output=output)
    ref_fn, ref_params = plain
    calls = [
        lambda f, p: fxai.integrated_gradients(f, p, x, None, steps=4),
        lambda f, p: fxai.smoothgrad(fxai.gradient, samples=3, sigma=0.1)(f, p, x, 1, key=0),
        lambda f, p: fxai.grad_cam(f, p, x, torch.tensor([[0, 3], [1, 4]]), layer="net.layer4"),  # FX tap
        lambda f, p: fxai.score_cam(f, p, x, 1, layer="net.layer4"),
        lambda f, p: fxai.occlusion(f, p, x, 2, window=(8, 8), stride=(8, 8)),
        lambda f, p: fxai.guided_backprop(f, p, x, 0),  # a torch-function mode around the picking
        lambda f, p: fxai.deeplift(f, p, x, 4),
        lambda f, p: fxai.metrics.deletion(f, p, x, 2, fxai.gradient(f, p, x, 2), steps=4),
    ]
    for call in calls:
        torch.testing.assert_close(call(model_fn, params), call(ref_fn, ref_params), rtol=0, atol=0)


def test_hook_tap_picks_too(x):
    """A root hook keeps FX away: the scoped-hook tap runs, and it picks the logits the same way."""
    module = Wrapped("dict")
    hooked = Wrapped("dict")
    hooked.register_forward_hook(lambda m, a, out: None)
    model_fn, params = fxai.functional(module)
    hook_fn, hook_params = fxai.functional(hooked)
    assert model_fn.graph_tap(("net.layer4",)) is not None and hook_fn.graph_tap(("net.layer4",)) is None
    want = fxai.grad_cam(model_fn, params, x, 3, layer="net.layer4")
    torch.testing.assert_close(fxai.grad_cam(hook_fn, hook_params, x, 3, layer="net.layer4"), want, rtol=0, atol=0)
    torch.testing.assert_close(fxai.grad_cam(hook_fn, hook_params, x, 3), want, rtol=0, atol=0)  # default layer


def test_tuple_model_against_captum(x):
    """Captum on the module with its tuple output reduced by the forward function it is given."""
    from captum.attr import IntegratedGradients, Saliency
    module = Wrapped("tuple")
    model_fn, params = fxai.functional(module, output=1)
    forward = lambda inp: module(inp)[1]  # noqa: E731
    want = Saliency(forward).attribute(x.clone(), target=3, abs=False)
    torch.testing.assert_close(fxai.gradient(model_fn, params, x, 3), want, rtol=1e-6, atol=1e-7)
    want = IntegratedGradients(forward).attribute(x.clone(), target=3, n_steps=16, method="gausslegendre")
    got = fxai.integrated_gradients(model_fn, params, x, 3, steps=16, method="gausslegendre")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_grad_wrt_params_through_a_dict(plain, x):
    model_fn, params = fxai.functional(Wrapped("dict"))
    ref_fn, ref_params = plain
    got = torch.func.grad(lambda p: fxai.gradient(model_fn, p, x, 1).square().sum())(params)
    want = torch.func.grad(lambda p: fxai.gradient(ref_fn, p, x, 1).square().sum())(ref_params)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7)


def test_module_untouched_and_nothing_left_behind(x):
    module = Wrapped("dict")
    snap = ModuleSnapshot(module)
    model_fn, params = fxai.functional(module, output="missing")
    with pytest.raises(KeyError):
        fxai.grad_cam(model_fn, params, x, 1, layer="net.layer4")
    with pytest.raises(KeyError):
        fxai.guided_backprop(model_fn, params, x, 1)
    snap.assert_unchanged()
    assert not leftover_hooks(module) and not active_modes()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("output", [1.5, True, b"logits", ("logits",), torch.tensor(0)])
def test_output_option_type_checked_at_functional_time(output):
    with pytest.raises(TypeError, match=r"output=\.\.\.\): expected None, a key .* an index .* a callable"):
        fxai.functional(Wrapped("dict"), output=output)


@pytest.mark.parametrize("kind, output, error, match", [
    ("tuple", None, TypeError, r"returned tuple of length 2 \(tensor \(2, 3\), tensor \(2, 5\)\).*pass output=0"),
    ("scores", None, TypeError, r"returned dict with keys \['scores', 'features'\].*pass output='scores'"),
    ("namedtuple", None, TypeError, r"Scores with fields \['score', 'aux'\].*output='score'"),
    ("dict", "logit", KeyError, r"dict with keys \['features', 'logits'\], which has no 'logit'; the keys present "
                                r"are \['features', 'logits'\]"),
    ("dataclass", "scores", KeyError, r"Result with fields \['features', 'logits'\].*no 'scores'; its fields are"),
    ("tuple", 2, IndexError, r"output=2\): the module returned tuple of length 2.*out of range"),
    ("dict", 0, TypeError, r"output=0\): an index needs a tuple or list output; the module returned dict with keys"),
    ("dict", "features", ValueError, r"returned shape \(2, 3\)|classes"),
    ("tuple", lambda out: out, TypeError, r"picked tuple of length 2 .* the logits must be a tensor"),
])
def test_unreadable_output_errors(kind, output, error, match, x):
    model_fn, params = fxai.functional(Wrapped(kind), output=output)
    if kind == "dict" and output == "features":  # a tensor, but not [B, classes] logits: the methods say so
        fxai.gradient(model_fn, params, x, 1)  # a [B, 3] output still has a class 1
        with pytest.raises(ValueError, match="out of range"):
            fxai.gradient(model_fn, params, x, 4)
        return
    with pytest.raises(error, match=match):
        model_fn(params, x)
    with pytest.raises(error, match=match):
        fxai.gradient(model_fn, params, x, 1)


def test_other_objects_ask_for_a_callable(x):
    class Box:
        def __init__(self, t):
            self.t = t

    class Model(nn.Module):
        def forward(self, inp):
            return Box(inp.flatten(1))

    model_fn, params = fxai.functional(Model())
    with pytest.raises(TypeError, match=r"returned Box, not a tensor of logits.*pass output=callable"):
        model_fn(params, x)
    model_fn, params = fxai.functional(Model(), output=lambda b: b.t)
    torch.testing.assert_close(model_fn(params, x), x.flatten(1), rtol=0, atol=0)
    model_fn, params = fxai.functional(Model(), output="t")  # an attribute of any object
    torch.testing.assert_close(model_fn(params, x), x.flatten(1), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind, output", [("tuple", 1), ("model_output", None)])
def test_compiled_picks_the_logits(kind, output, plain, x):
    if kind == "model_output":
        pytest.importorskip("transformers")
    run = fxai.compiled(fxai.grad_cam, Wrapped(kind), output=output, backend="aot_eager", layer="net.layer4")
    ref_fn, ref_params = plain
    torch.testing.assert_close(run(x, 3), fxai.grad_cam(ref_fn, ref_params, x, 3, layer="net.layer4"),
                               rtol=1e-5, atol=1e-6)
    model_fn, params = fxai.functional(Wrapped(kind), output=output)
    compiled_fn = torch.compile(model_fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled_fn(params, x), ref_fn(ref_params, x), rtol=1e-6, atol=1e-6)
