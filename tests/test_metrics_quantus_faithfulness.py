"""Agreement with Quantus 0.6 (test-only oracle) for the correlation-style faithfulness metrics, the axiomatic
metrics and the random logit test.

Two fixtures: a LeNet on 1×28×28 inputs (the model and input size of Quantus's own tests) and a small CNN on
3×10×12 inputs. Quantus predicts in float32 (``torch.Tensor(x)``), so models and inputs are float32 and the
tolerance 1e-5 covers float32 rounding of differently batched forward passes. Quantus draws from NumPy's
global generator; each test seeds it, and replays the same draws, in Quantus's order, into fxai's explicit
``subsets`` / ``noise`` / ``off_class`` arguments.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M

quantus = pytest.importorskip("quantus")
pytestmark = pytest.mark.slow
TOL = dict(rtol=1e-5, atol=1e-5)


class LeNet(nn.Module):
    """The LeNet of Quantus's test fixtures (``load_mnist_model``)."""

    def __init__(self):
        super().__init__()
        self.conv_1, self.pool_1 = nn.Conv2d(1, 6, 5), nn.MaxPool2d(2, 2)
        self.conv_2, self.pool_2 = nn.Conv2d(6, 16, 5), nn.MaxPool2d(2, 2)
        self.fc_1, self.fc_2, self.fc_3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool_1(torch.relu(self.conv_1(x)))
        x = self.pool_2(torch.relu(self.conv_2(x)))
        x = torch.relu(self.fc_1(x.flatten(1)))
        return self.fc_3(torch.relu(self.fc_2(x)))


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 7))


@pytest.fixture(params=["lenet_1x28x28", "cnn_3x10x12"])
def case(request):
    torch.manual_seed(0)
    if request.param.startswith("lenet"):
        net, shape = LeNet().eval(), (4, 1, 28, 28)
    else:
        net, shape = small_cnn().eval(), (3, 3, 10, 12)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g)
    amap = torch.randn(shape, generator=g)  # one relevance per feature: no ties, whatever the sort
    with torch.no_grad():
        y = net(x).argmax(1)
    model_fn, params = fxai.functional(net)
    warnings.filterwarnings("ignore")
    return net, model_fn, params, x, y, amap


def run(metric, net, x, y, a, **kwargs):
    out = metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", softmax=False,
                 **kwargs)
    return torch.tensor(np.asarray(out, dtype=np.float64), dtype=torch.float32)


def gradients(model, inputs, targets, **kwargs):
    """A Quantus ``explain_func``: the gradient of the target logit, by plain autograd."""
    x = torch.tensor(inputs, requires_grad=True)
    model(x).gather(1, torch.as_tensor(targets).long()[:, None]).sum().backward()
    return x.grad.numpy()


def test_faithfulness_estimate(case):
    net, model_fn, params, x, y, a = case
    for step in (1, 4):
        q = run(quantus.FaithfulnessEstimate(features_in_step=step, normalise=False, disable_warnings=True),
                net, x, y, a)
        torch.testing.assert_close(M.faithfulness_estimate(model_fn, params, x, y, a, features_in_step=step), q,
                                   **TOL)


def test_faithfulness_correlation_with_quantus_draws(case):
    net, model_fn, params, x, y, a = case
    runs, size, (b, n) = 12, 30, (x.shape[0], x[0].numel())
    np.random.seed(7)
    q = run(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, normalise=False, return_aggregate=False,
                                            disable_warnings=True), net, x, y, a)
    np.random.seed(7)  # per run: one subset per image, then the (unused) uniform draw of Quantus's baseline table
    subsets = []
    for _ in range(runs):
        subsets.append(np.stack([np.random.choice(n, size, replace=False) for _ in range(b)]))
        np.random.uniform(size=b)
    subsets = torch.tensor(np.stack(subsets, 1))
    ours = M.faithfulness_correlation(model_fn, params, x, y, a, runs=runs, subset_size=size, subsets=subsets)
    torch.testing.assert_close(ours, q, **TOL)


def test_monotonicity_correlation_with_quantus_draws(case):
    net, model_fn, params, x, y, a = case
    samples, step, b = 5, 28 if x.shape[1] == 1 else 12, x.shape[0]
    groups = x[0].numel() // step
    np.random.seed(3)
    q = run(quantus.MonotonicityCorrelation(nr_samples=samples, features_in_step=step, normalise=False,
                                            disable_warnings=True), net, x, y, a)
    np.random.seed(3)  # one uniform value per image for each (group, sample), in that order
    noise = torch.tensor(np.stack([np.stack([np.random.uniform(0, 1, size=b) for _ in range(samples)])
                                   for _ in range(groups)]), dtype=torch.float32)
    ours = M.monotonicity_correlation(model_fn, params, x, y, a, samples=samples, features_in_step=step, noise=noise)
    torch.testing.assert_close(ours, q, **TOL)


def test_monotonicity(case):
    """Quantus 0.6's Monotonicity never restores the input: it starts from the baseline image and "perturbs"
    it with the baseline of the baseline image (its minimum, the same value), so every curve is flat and every
    map scores True. With a perturbation that restores ``x`` at the given indices (Arya et al.'s definition),
    Quantus's loop gives fxai's result."""
    net, model_fn, params, x, y, a = case
    step = 28 if x.shape[1] == 1 else 12
    q_plain = run(quantus.Monotonicity(features_in_step=step, normalise=False, disable_warnings=True), net, x, y, a)
    assert q_plain.tolist() == [1.0] * x.shape[0]
    flat = x.flatten(1).numpy()

    def restore(arr, indices, perturb_baseline, **kwargs):
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    q = run(quantus.Monotonicity(features_in_step=step, normalise=False, disable_warnings=True,
                                 perturb_func=functools.partial(restore, perturb_baseline="black")), net, x, y, a)
    # the restoring perturbation replaces Quantus's default; make_perturb_func keeps the baseline keyword
    ours = M.monotonicity(model_fn, params, x, y, a, features_in_step=step)
    assert torch.equal(ours, q)
    curve = M.monotonicity_curve(model_fn, params, x, y, a, features_in_step=step)
    assert not torch.equal(curve[:, :1].expand_as(curve), curve)  # the curve is not flat


def test_non_sensitivity(case):
    net, model_fn, params, x, y, a = case
    a = a.clone()
    a.view(-1)[::3] = 0.0  # some features without relevance
    q = run(quantus.NonSensitivity(features_in_step=1, normalise=False, disable_warnings=True, eps=1e-5), net, x, y, a)
    ours = M.non_sensitivity(model_fn, params, x, y, a, normalise=False)
    torch.testing.assert_close(ours, q, rtol=0, atol=0)


def test_completeness_difference_and_quantus_exact_equality(case):
    """Quantus returns ``sum(a) == f(x) - f(baseline)`` in floating point, False unless equal to the last bit;
    fxai returns the gap. Quantus's score difference (captured through ``output_func``) equals fxai's."""
    net, model_fn, params, x, y, a = case
    seen = []
    q = run(quantus.Completeness(normalise=False, disable_warnings=True,
                                 output_func=lambda d: seen.append(d) or d), net, x, y, a)
    assert q.tolist() == [0.0] * x.shape[0]
    diff = torch.tensor(seen[0])
    ours = M.completeness(model_fn, params, x, y, a)
    torch.testing.assert_close(ours, (a.flatten(1).sum(1) - diff).abs(), **TOL)


def test_random_logit_with_quantus_draws(case):
    """Quantus compares the flattened maps by a one-dimensional SSIM (windows of 7 features along the flat
    array); fxai's default SSIM is two-dimensional, as for images. With the same similarity both agree."""
    net, model_fn, params, x, y, a = case
    classes = 10 if x.shape[1] == 1 else 7
    g = fxai.gradient(model_fn, params, x, y)
    def similarity(a, b, batched=True, **kwargs):
        return M.spearman(torch.tensor(a), torch.tensor(b)).tolist()

    q = run(quantus.RandomLogit(num_classes=classes, seed=42, normalise=False, similarity_func=similarity,
                                disable_warnings=True), net, x, y, g, explain_func=gradients)
    np.random.seed(42)
    r = torch.tensor(np.random.randint(0, classes - 1, x.shape[0]))
    off = r + (r >= y).long()
    ours = M.random_logit(model_fn, params, x, y, g, method=fxai.gradient, off_class=off, similarity="spearman",
                          normalise=False)
    torch.testing.assert_close(ours, q, **TOL)


def test_input_invariance():
    """Quantus 0.6 shifts every element of the input but the first: its ``perturb_batch`` passes
    ``indices[i][1:]`` to the shift. With a shift of every element (passed as Quantus's ``perturb_func``) it
    agrees with fxai. Quantus also shifts the first layer's bias by the smallest response of the layer to a
    constant input (the border response under zero padding), fxai by the interior response: the same
    without padding, as here."""
    torch.manual_seed(0)
    net = LeNet().eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    model_fn, params = fxai.functional(net)
    y = torch.tensor([1, 4, 7])
    seen = []

    def recording(**kw):
        seen.append(kw["inputs"].copy())
        return gradients(**kw)

    g = fxai.gradient(model_fn, params, x, y)
    run(quantus.InputInvariance(disable_warnings=True), net, x, y, g, explain_func=recording)
    unshifted = np.isclose(seen[0], x.numpy()).reshape(3, -1)
    assert unshifted[:, 0].all() and not unshifted[:, 1:].any()

    def shift_all(arr, indices, indexed_axes=None, input_shift=-1, **kwargs):
        return arr + input_shift

    for method, explain in [(fxai.gradient, gradients),
                            (fxai.input_x_gradient, lambda **kw: gradients(**kw) * kw["inputs"])]:
        a = method(model_fn, params, x, y)
        q = run(quantus.InputInvariance(disable_warnings=True, perturb_func=shift_all), net, x, y, a,
                explain_func=explain)
        ours = M.input_invariance(model_fn, params, x, y, a, method=method)
        assert torch.equal(ours, q), (method.__name__, ours, q)
    assert M.input_invariance(model_fn, params, x, y, g, method=fxai.gradient).tolist() == [1.0] * 3
    a = fxai.input_x_gradient(model_fn, params, x, y)
    assert M.input_invariance(model_fn, params, x, y, a, method=fxai.input_x_gradient).tolist() == [0.0] * 3


def test_region_perturbation(case):
    """Patch sizes that divide the image and one that does not (Quantus centres its grid by padding)."""
    net, model_fn, params, x, y, a = case
    for patch in (4, 5):
        q = run(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=12, normalise=False,
                                           disable_warnings=True), net, x, y, a)
        torch.testing.assert_close(M.region_perturbation(model_fn, params, x, y, a, patch=patch, regions=12), q,
                                   **TOL)
        q = run(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=6, order="lerf", normalise=False,
                                           disable_warnings=True), net, x, y, a)
        torch.testing.assert_close(M.region_perturbation(model_fn, params, x, y, a, patch=patch, regions=6,
                                                         order="lerf"), q, **TOL)


@pytest.fixture
def trapz():
    """Quantus 0.6 calls ``np.trapz``, removed in NumPy 2: restore it as ``np.trapezoid`` for the test."""
    had = hasattr(np, "trapz")
    if not had:
        np.trapz = np.trapezoid
    yield
    if not had:
        del np.trapz


def test_irof(case, trapz):
    """One image at a time: Quantus's ``"mean"`` fill is the mean of the whole batch's current images, so a
    batch couples its images; per image it is fxai's ``"running_mean"``. Quantus 0.6 also asserts that the
    image and the (one-channel) superpixel mask have one shape, so RGB inputs fail; a mask-broadcasting copy of
    its perturbation runs them."""
    net, model_fn, params, x, y, a = case
    rgb = x.shape[1] == 3
    if rgb:
        with pytest.raises(AssertionError, match="shape"):
            run(quantus.IROF(normalise=False, disable_warnings=True), net, x[:1], y[:1], a[:1])

    def mean_fill(arr, mask, perturb_baseline="mean", **kwargs):
        return np.where(np.broadcast_to(mask, arr.shape), arr.mean(), arr)

    for i in range(x.shape[0]):
        xi, yi, ai = x[i:i + 1], y[i:i + 1], a[i:i + 1]
        opts = dict(perturb_func=mean_fill) if rgb else {}
        q = run(quantus.IROF(normalise=False, return_aggregate=False, disable_warnings=True, **opts), net, xi, yi, ai)
        torch.testing.assert_close(M.irof(model_fn, params, xi, yi, ai), q, **TOL)


def quantus_stages(net):
    """The randomised models of Quantus's bottom-up cascade (``reset_parameters`` under seed 43, module by
    module), as fxai params dicts."""
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    return [{k: v.detach().clone() for k, v in fxai.functional(model)[1].items()}
            for _, model in wrapped.get_random_layer_generator(order="bottom_up", seed=42)]


def test_efficient_mprt(case):
    """Quantus 0.6's EfficientMPRT also takes the entropy of the model's outputs, which asserts non-negative
    values: it runs only with ``softmax=True`` (which does not touch the maps)."""
    net, model_fn, params, x, y, a = case
    g = fxai.gradient(model_fn, params, x, y)
    q = quantus.EfficientMPRT(disable_warnings=True)(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=g.numpy(),
                                                    device="cpu", softmax=True, explain_func=gradients)
    q = torch.tensor(q, dtype=torch.float32)
    ours = M.efficient_mprt(model_fn, params, x, y, g, method=fxai.gradient, randomised=quantus_stages(net)[-1])
    torch.testing.assert_close(ours, q, **TOL)


def test_smooth_mprt(case, monkeypatch):
    """Quantus 0.6's SmoothMPRT ignores ``explain_func`` and calls ``quantus.explain`` (here replaced by the
    same gradient); its noise is replayed, the draws of the original model's smoothed map skipped."""
    net, model_fn, params, x, y, a = case
    calls = []

    def explain(model, inputs, targets, **kwargs):
        calls.append(len(inputs))
        return gradients(model, np.asarray(inputs, dtype=np.float32), targets)

    monkeypatch.setattr(quantus, "explain", explain)
    g = fxai.gradient(model_fn, params, x, y)
    samples = 4
    np.random.seed(11)
    q = quantus.SmoothMPRT(nr_samples=samples, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=g.numpy(), device="cpu", softmax=False,
        explain_func=lambda **kw: pytest.fail("explain_func is not called"))
    stages = quantus_stages(net)
    assert len(calls) == samples * (len(stages) + 1)
    q = torch.tensor([q[name] for name in list(q)[1:]], dtype=torch.float32).T  # [B, L] without "original"
    np.random.seed(11)
    for _ in range(samples - 1):
        np.random.randn(*x.shape)
    ours = M.smooth_mprt(model_fn, params, x, y, g, method=fxai.gradient, samples=samples, stages=stages,
                         noise=lambda shape: torch.from_numpy(np.random.randn(*shape)))
    torch.testing.assert_close(ours, q, **TOL)


def test_sufficiency(case):
    net, model_fn, params, x, y, a = case
    b = x.shape[0]
    x2, a2 = torch.cat([x, x.flip(0)]), torch.cat([a, a.flip(0) + 0.05 * torch.randn(a.shape)])  # close pairs
    with torch.no_grad():
        y2 = net(x2).argmax(1)
    for t in (0.3, 0.6, 0.9):
        q = quantus.Sufficiency(threshold=t, normalise=False, disable_warnings=True)(
            model=net, x_batch=x2.numpy(), y_batch=y2.numpy(), a_batch=a2.numpy(), device="cpu", softmax=True)
        ours = M.sufficiency(model_fn, params, x2, None, a2, threshold=t)
        torch.testing.assert_close(ours, torch.tensor(np.asarray(q), dtype=torch.float32), **TOL)
    assert b > 1


def test_sensitivity_n_differs_from_quantus(case):
    """Quantus 0.6's SensitivityN is not Ancona et al.'s: it removes the top features cumulatively, one group
    of ``features_in_step`` more per step, and for each step correlates, across the images of the (first)
    batch, the drop so far with the relevance of the last group only. fxai follows the paper (random subsets
    of n features per input, correlation over the subsets; tested against the closed form elsewhere). Here
    Quantus's number is rebuilt from its definition, to pin what it computes."""
    net, model_fn, params, x, y, a = case
    step = 28 if x.shape[1] == 1 else 12
    q = torch.tensor(quantus.SensitivityN(features_in_step=step, n_max_percentage=0.5, normalise=False,
                                          return_aggregate=False, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", softmax=False),
        dtype=torch.float32)
    flat, fa = x.flatten(1), a.flatten(1)
    order, _ = M.feature_order(fa, descending=True)
    steps = int(0.5 * x[0, 0].numel() // step)
    with torch.no_grad():
        f0 = net(x).gather(1, y[:, None])[:, 0]
        drops, sums = [], []
        for k in range(steps):
            gone = order[:, : (k + 1) * step]
            xk = flat.scatter(1, gone, flat.amin(1, keepdim=True).expand_as(gone)).view(x.shape)
            drops.append(f0 - net(xk).gather(1, y[:, None])[:, 0])
            sums.append(fa.gather(1, order[:, k * step:(k + 1) * step]).sum(1))
    rebuilt = M.pearson(torch.stack(drops), torch.stack(sums))  # per step, across images
    torch.testing.assert_close(q, rebuilt, **TOL)
    ours = M.sensitivity_n(model_fn, params, x, y, a, ns=[step, 2 * step], samples=10, key=0)
    assert ours.shape == (x.shape[0], 2)  # one correlation per input and n, not one per step across inputs


def test_sufficiency_with_an_entry_constant_over_the_batch():
    """SciPy's standardised Euclidean distance divides by each entry's variance over the batch: one entry at 0
    in every map makes every distance NaN, and Quantus scores every input 0. fxai leaves the entry out."""
    torch.manual_seed(0)
    net = small_cnn().eval()
    model_fn, params = fxai.functional(net)
    x = torch.rand(6, 3, 10, 12, generator=torch.Generator().manual_seed(3))
    a = torch.randn(3, 3, 10, 12, generator=torch.Generator().manual_seed(4)).repeat(2, 1, 1, 1)
    a = a + 0.01 * torch.randn(a.shape, generator=torch.Generator().manual_seed(5))  # three close pairs
    a[:, 0, 0, 0] = 0.0
    with torch.no_grad():
        y = net(x).argmax(1)
    q = quantus.Sufficiency(threshold=0.6, normalise=False, disable_warnings=True)(
        model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", softmax=True)
    assert np.asarray(q).tolist() == [0.0] * 6
    ours = M.sufficiency(model_fn, params, x, None, a, threshold=0.6)
    from scipy.spatial.distance import cdist

    flat = np.abs(a.flatten(1).double().numpy())[:, 1:]  # without the constant entry
    d = cdist(flat, flat, "seuclidean")
    near = (d / d.max() <= 0.6) & ~np.eye(6, dtype=bool)
    same = y.numpy()[:, None] == y.numpy()[None]
    expect = (near & same).sum(1) / np.maximum(near.sum(1), 1)
    torch.testing.assert_close(ours, torch.tensor(expect, dtype=torch.float32), **TOL)
    assert ours.max() > 0


def test_input_invariance_bias_under_zero_padding():
    """With a zero-padded first convolution the response to a constant shift is smaller at the border;
    Quantus takes the smallest response for the bias correction, fxai the interior one, which keeps the
    pre-activations of every interior position exactly."""
    torch.manual_seed(0)
    net = small_cnn()
    net[0] = nn.Conv2d(3, 6, 3, padding=1)
    net = net.eval()
    model_fn, params = fxai.functional(net)
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    theirs = wrapped.add_mean_shift_to_first_layer(-1.0, (1, 3, 10, 12))[0].bias.detach()
    ours = M.shifted_first_layer(params, "0", -1.0)["0.bias"]
    assert not torch.allclose(ours, theirs, atol=1e-4)
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    conv = torch.nn.functional.conv2d
    before = conv(x, params["0.weight"], params["0.bias"], padding=1)
    after = conv(x - 1.0, params["0.weight"], ours, padding=1)
    torch.testing.assert_close(after[..., 1:-1, 1:-1], before[..., 1:-1, 1:-1], **TOL)
