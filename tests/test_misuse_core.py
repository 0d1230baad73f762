"""The user's module under misuse: threads, hooks, Python state, integer buffers, repeated ``functional()``.

``model_fn`` runs on fxai's own structural copy of the module (one per thread,
tensors on ``meta``, all supplied by ``params``), so the user's module is never
touched, not even during a call; layer methods compute what ``module(x)``
computes, hooks included; ``torch.func.grad`` differentiates with respect to
all of ``params`` on BatchNorm models; taps made again and again are released.
"""

from __future__ import annotations

import copy
import gc
import linecache
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import ModuleSnapshot, TinyCNN, leftover_hooks, make_tiny_cnn, grad_cam_by_autograd
from torch import nn

import fxai

TARGETS = torch.tensor([0, 4, 2])


def _autograd_grad_cam(module, x, target, layer):
    return grad_cam_by_autograd(module, x, target, layer, relu=False)


def _autograd_input_gradient(module, x, target):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(module(x).gather(1, target[:, None]).sum(), x)[0]


def _grad_cam(model_fn, params, x, target, layer="layer4"):
    return fxai.grad_cam(model_fn, params, x, target, layer=layer, upsample=False, relu=False)


def _close(got, expected, rtol=1e-5):
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


# ---------------------------------------------------------------- item 1: the module is never touched


@pytest.mark.parametrize("method", ["gradient", "grad_cam_default_layer", "grad_cam_hook_tap"])
def test_module_untouched_during_the_call(method, tiny_input):
    # A hook of the user's, copied with the module, looks at the user's module while fxai runs:
    # its parameters must be the same nn.Parameter objects, on their device, at every moment.
    module = make_tiny_cnn()
    originals = dict(module.named_parameters())
    seen = []

    def look(m, args, out):
        for name, p in module.named_parameters():
            if p is not originals[name] or p.device.type != "cpu":
                seen.append(name)

    module.layer4.conv.register_forward_hook(look)
    model_fn, params = fxai.functional(module)
    if method == "gradient":
        fxai.gradient(model_fn, params, tiny_input, TARGETS)
    else:
        if method == "grad_cam_hook_tap":
            model_fn._taps[("layer4",)] = None
        fxai.grad_cam(model_fn, params, tiny_input, TARGETS)  # layer=None: a dry run on meta finds layer4
    assert seen == []
    assert all(p is originals[n] for n, p in module.named_parameters())


def _train(module, steps, seed):
    """Plain SGD in training mode (BatchNorm statistics, dropout) on seeded data: what the training thread does."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        y = torch.randint(5, (4,), generator=gen)
        module.train()
        torch.manual_seed(seed)  # dropout masks
        loss = F.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.eval()


@pytest.mark.parametrize("tap", ["fx", "hook"])
def test_threads_share_one_module(tap, tiny_input):
    threads, calls, steps = 4, 4, 12
    module = make_tiny_cnn()
    module.conv1.weight.requires_grad_(False)  # a frozen layer: its flag must survive too
    reference = copy.deepcopy(module)
    _train(reference, steps, seed=7)

    model_fn, params = fxai.functional(module)
    params = {k: v.clone() for k, v in params.items()}  # the explanations' weights stay fixed while the module trains
    if tap == "hook":
        model_fn._taps[("layer4",)] = None
    expected_grad = fxai.gradient(model_fn, params, tiny_input, TARGETS)
    expected_cam = fxai.grad_cam(model_fn, params, tiny_input, TARGETS)
    model_fn, _ = fxai.functional(module)  # a fresh one: taps are first built concurrently
    if tap == "hook":
        model_fn._taps[("layer4",)] = None
    kinds = {n: type(p) for n, p in module.named_parameters()}
    flags = {n: p.requires_grad for n, p in module.named_parameters()}

    errors, results = [], []
    start = threading.Barrier(threads + 1)

    def explain():
        try:
            start.wait()
            for i in range(calls):
                if i % 2:
                    results.append(("cam", fxai.grad_cam(model_fn, params, tiny_input, TARGETS)))
                else:
                    results.append(("grad", fxai.gradient(model_fn, params, tiny_input, TARGETS)))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def train():
        try:
            start.wait()
            _train(module, steps, seed=7)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: a window left open by a swap is hit
    try:
        workers = [threading.Thread(target=explain) for _ in range(threads)] + [threading.Thread(target=train)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)

    assert errors == []
    assert len(results) == threads * calls
    for kind, got in results:
        torch.testing.assert_close(got, expected_grad if kind == "grad" else expected_cam, rtol=0, atol=0)
    for n, p in module.named_parameters():
        assert type(p) is kinds[n] is nn.Parameter and p.requires_grad == flags[n] and p.device.type == "cpu", n
    for k, v in reference.state_dict().items():  # the training thread's result is the single-threaded one
        torch.testing.assert_close(module.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert leftover_hooks(module) == []


class _SpawnsWhileTraced(nn.Module):
    """While FX traces it, another thread calls an unrelated module (FX patches ``nn.Module.__call__`` globally)."""

    outputs = []  # on the class: what the other thread got, whichever copy of the module was traced
    other = nn.Linear(2, 1)  # not a submodule: someone else's module

    def __init__(self):
        super().__init__()
        self.net = make_tiny_cnn()

    def forward(self, x):
        if torch.fx._symbolic_trace.is_fx_tracing():
            def call():
                try:
                    self.outputs.append(self.other(torch.ones(1, 2)))
                except Exception as err:  # noqa: BLE001
                    self.outputs.append(err)
            t = threading.Thread(target=call)
            t.start()
            t.join()
        return self.net(x)


def test_other_threads_module_calls_pass_through_an_fx_trace(tiny_input):
    module = _SpawnsWhileTraced().eval()
    model_fn, params = fxai.functional(module)
    cam = _grad_cam(model_fn, params, tiny_input, TARGETS, layer="net.layer4")
    assert model_fn.graph_tap(("net.layer4",)) is not None
    (out,) = _SpawnsWhileTraced.outputs
    assert isinstance(out, torch.Tensor), out
    torch.testing.assert_close(out, _SpawnsWhileTraced.other(torch.ones(1, 2)))
    _close(cam, _autograd_grad_cam(module.net, tiny_input, TARGETS, "layer4"))


def test_model_fn_needs_every_param(tiny_cnn, tiny_input):
    model_fn, params = fxai.functional(tiny_cnn)
    partial = {k: v for k, v in params.items() if k != "fc.weight"}
    with pytest.raises(KeyError, match=r"params: missing 'fc.weight'"):
        model_fn(partial, tiny_input)
    with pytest.raises(TypeError, match="params must be the dict"):
        model_fn(list(params.values()), tiny_input)


# ---------------------------------------------------------------- item 2: hooks and Python state


def _normalising_hook(m, args):
    return ((args[0] - 0.5) / 0.25,)


def test_root_pre_hook_is_honoured_by_layer_methods(tiny_input):
    module = make_tiny_cnn()
    plain_cam = _autograd_grad_cam(module, tiny_input, TARGETS, "layer4")
    module.register_forward_pre_hook(_normalising_hook)
    expected = _autograd_grad_cam(module, tiny_input, TARGETS, "layer4")
    assert (expected - plain_cam).abs().max() > 0.1 * expected.abs().max()  # the hook matters
    model_fn, params = fxai.functional(module)
    _close(_grad_cam(model_fn, params, tiny_input, TARGETS), expected)
    _close(fxai.gradient(model_fn, params, tiny_input, TARGETS), _autograd_input_gradient(module, tiny_input, TARGETS))
    assert model_fn.graph_tap(("layer4",)) is None  # FX would drop the hook: the hook tap serves


def test_hook_on_a_traced_through_module_follows_its_state(tiny_input):
    # A forward hook on the custom block ``layer4`` (which FX traces through when tapping conv3) reads a
    # dict of the user's: a later change must reach layer methods as it reaches module(x).
    module = make_tiny_cnn()
    state = {"scale": 2.0}
    module.layer4.register_forward_hook(lambda m, args, out: out * state["scale"])
    model_fn, params = fxai.functional(module)
    for scale in (2.0, 3.0):
        state["scale"] = scale
        _close(_grad_cam(model_fn, params, tiny_input, TARGETS, layer="conv3"),
               _autograd_grad_cam(module, tiny_input, TARGETS, "conv3"))


def test_hook_on_a_leaf_keeps_the_fx_tap(tiny_input):
    module = make_tiny_cnn()
    module.conv3.register_forward_hook(lambda m, args, out: out * 1.5)
    model_fn, params = fxai.functional(module)
    _close(_grad_cam(model_fn, params, tiny_input, TARGETS), _autograd_grad_cam(module, tiny_input, TARGETS, "layer4"))
    assert model_fn.graph_tap(("layer4",)) is not None  # the graph calls conv3 as a module: its hook runs


def test_global_module_hook_is_honoured(tiny_input):
    module = make_tiny_cnn()
    model_fn, params = fxai.functional(module)
    _grad_cam(model_fn, params, tiny_input, TARGETS)  # the FX tap exists before the global hook does

    def double_logits(m, args, out):
        return out * 2 if isinstance(m, TinyCNN) else out

    handle = nn.modules.module.register_module_forward_hook(double_logits)
    try:
        expected = _autograd_grad_cam(module, tiny_input, TARGETS, "layer4")
        got = _grad_cam(model_fn, params, tiny_input, TARGETS)
    finally:
        handle.remove()
    _close(got, expected)
    _close(got, 2 * _grad_cam(model_fn, params, tiny_input, TARGETS))


class Tempered(nn.Module):
    """Logits divided by a Python attribute read in ``forward``."""

    def __init__(self):
        super().__init__()
        self.net = make_tiny_cnn()
        self.temperature = 1.0

    def forward(self, x):
        return self.net(x) / self.temperature


def test_python_state_is_the_module_as_it_was_at_functional(tiny_input):
    # model_fn is the module as it was when functional() was called, for every method alike; a module changed
    # afterwards takes a new functional().
    module = Tempered().eval()
    model_fn, params = fxai.functional(module)
    cam1, grad1 = (_grad_cam(model_fn, params, tiny_input, TARGETS, layer="net.layer4"),
                   fxai.gradient(model_fn, params, tiny_input, TARGETS))
    module.temperature = 4.0
    torch.testing.assert_close(fxai.gradient(model_fn, params, tiny_input, TARGETS), grad1, rtol=0, atol=0)
    torch.testing.assert_close(_grad_cam(model_fn, params, tiny_input, TARGETS, layer="net.layer4"), cam1,
                               rtol=0, atol=0)
    model_fn, params = fxai.functional(module)
    _close(fxai.gradient(model_fn, params, tiny_input, TARGETS), grad1 / 4)
    _close(_grad_cam(model_fn, params, tiny_input, TARGETS, layer="net.layer4"), cam1 / 4)
    _close(_grad_cam(model_fn, params, tiny_input, TARGETS, layer="net.layer4"),
           _autograd_grad_cam(module, tiny_input, TARGETS, "net.layer4"))


# ---------------------------------------------------------------- item 4: torch.func.grad w.r.t. params


def _recipe_loss(model_fn, params, x, y, mask, lam=1.0):
    # docs/getting-started.md, "Differentiable attributions"
    ce = F.cross_entropy(model_fn(params, x), y)
    g = fxai.gradient(model_fn, params, x, lambda logits: logits.log_softmax(-1).sum(-1))
    return ce + lam * (mask * g).square().sum() / len(x)


def test_attribution_loss_recipe_on_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=3).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    y = torch.tensor([0, 2])
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :4, :4] = 1
    snap = ModuleSnapshot(module)

    model_fn, params = fxai.functional(module)
    grads = torch.func.grad(lambda p, x, y, mask: _recipe_loss(model_fn, p, x, y, mask))(params, x, y, mask)
    stepped = {k: v - 0.1 * grads[k] for k, v in params.items()}
    assert torch.isfinite(model_fn(stepped, x)).all()
    snap.assert_unchanged()

    # oracle: plain autograd on a copy of the module, double backward through the input gradient
    oracle = copy.deepcopy(module)
    xr = x.clone().requires_grad_()
    logits = oracle(xr)
    g = torch.autograd.grad(logits.log_softmax(-1).sum(), xr, create_graph=True)[0]
    loss = F.cross_entropy(logits, y) + (mask * g).square().sum() / len(x)
    names, leaves = zip(*oracle.named_parameters())
    expected = dict(zip(names, torch.autograd.grad(loss, leaves)))
    scale = max(float(v.abs().max()) for v in expected.values())
    worst = max(float((grads[k] - v).abs().max()) for k, v in expected.items())
    assert worst <= 1e-5 * scale, (worst, scale)
    assert all(torch.isfinite(grads[k]).all() for k in grads)
    assert "bn1.num_batches_tracked" not in params
    assert all(not grads[k].any() for k, _ in module.named_buffers() if k in grads)  # buffers are constants

    # the same by plain autograd on params that require grad (the recipe's alternative)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    _recipe_loss(model_fn, leaves, x, y, mask).backward()
    worst = max(float((leaves[k].grad - v).abs().max()) for k, v in expected.items())
    assert worst <= 1e-5 * scale, (worst, scale)


def test_given_integer_buffers_are_used(tiny_input):
    # A dict with the integer buffers (a state_dict) works too, and model_fn moves its own to the input's device.
    module = make_tiny_cnn()
    model_fn, params = fxai.functional(module)
    full = dict(module.state_dict())
    torch.testing.assert_close(model_fn(full, tiny_input), module(tiny_input), rtol=0, atol=0)
    meta = model_fn({k: v.to("meta") for k, v in params.items()}, tiny_input.to("meta"))
    assert meta.device.type == "meta" and meta.shape == (3, 5)


# ---------------------------------------------------------------- item 12: functional() again and again


def test_functional_per_explanation_does_not_accumulate(tiny_input):
    loader = torch.fx.graph_module._loader

    def explain_once():
        model_fn, params = fxai.functional(make_tiny_cnn())
        fxai.grad_cam(model_fn, params, tiny_input, TARGETS)

    def alive():
        gc.collect()
        return (len(loader.eval_cache), sum(str(k).startswith("<eval_with_key>") for k in linecache.cache),
                sum(issubclass(type(o), (fxai.FunctionalModel, torch.fx.GraphModule)) for o in gc.get_objects()))

    explain_once()
    before = alive()
    for _ in range(5):
        explain_once()
    after = alive()
    # no FX source, no model_fn, no tap left behind (other tests' objects may be collected meanwhile: <=)
    assert after[:2] == before[:2] and after[2] <= before[2], (before, after)


class _Odd(nn.Module):
    """Tied weights, a submodule used twice under two names, a hook bound to the module, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Conv2d(3, 3, 1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.again = self.conv
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)
        self.head.weight = self.fc.weight
        self.offset = torch.tensor([0.5, -0.5, 0.0])
        self.fc.register_forward_hook(self._shift)

    def _shift(self, m, args, out):
        return out + self.offset * self.head.bias.sum()

    def forward(self, x):
        return self.head(self.fc(self.again(self.conv(self.pre(x))).relu().mean((2, 3))))


def test_copy_keeps_ties_shared_modules_and_bound_hooks():
    module = _Odd().eval()
    model_fn, params = fxai.functional(module)
    assert "head.weight" not in params  # tied to fc.weight: one entry, as named_parameters gives it
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model_fn(params, x), module(x), rtol=0, atol=0)
    other = dict(params, **{"fc.weight": 2 * params["fc.weight"], "head.bias": params["head.bias"] + 1})
    with torch.no_grad():
        module.fc.weight.mul_(2)
        module.head.bias.add_(1)
    torch.testing.assert_close(model_fn(other, x), module(x), rtol=1e-6, atol=1e-6)
    copy_ = model_fn.skeleton
    assert copy_.again is copy_.conv and copy_.head.weight is copy_.fc.weight
    assert next(iter(copy_.fc._forward_hooks.values())).__self__ is copy_  # the hook reads the copy, never module
    _close(_grad_cam(model_fn, other, x, torch.tensor([0, 1]), layer="pre"),
           _autograd_grad_cam(module, x, torch.tensor([0, 1]), "pre"))
    assert model_fn.graph_tap(("pre",)) is not None
