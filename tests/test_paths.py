"""Blur IG and Guided IG against PAIR's ``saliency`` 0.2 (test-only oracle), the papers and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_cnn
from scipy import ndimage

import fxai
from fxai.attribution import paths

saliency_core = pytest.importorskip("saliency.core")


def pair_call(model, target, dtype=torch.float64):
    """The torch model as PAIR's ``call_model_function``: images ``[N, H, W, C]`` in, input gradients out."""
    def call(batch, call_model_args=None, expected_keys=None):
        t = torch.tensor(np.asarray(batch), dtype=dtype).permute(0, 3, 1, 2).contiguous().requires_grad_()
        (g,) = torch.autograd.grad(model(t)[:, target].sum(), t)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}
    return call


@pytest.fixture
def numpy2_quantile(monkeypatch):
    """PAIR's GuidedIG calls ``np.quantile(..., interpolation=...)``, which numpy 2 renamed ``method=``."""
    quantile = np.quantile

    def shim(*args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return quantile(*args, **kwargs)

    monkeypatch.setattr(np, "quantile", shim)


def hwc(t):
    return t.permute(1, 2, 0).numpy()


@pytest.fixture
def model64():
    model = make_tiny_cnn().double()
    return (model,) + fxai.functional(model)


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
TARGETS = [1, 2]


def test_blur_matrices_are_scipy_gaussian_filter():
    img = np.random.default_rng(0).random((12, 20, 3))
    for sigma in (0.0, 0.01, 0.3, 1.7, 5.0, 50.0):
        ref = img if sigma == 0 else ndimage.gaussian_filter(img, sigma=[sigma, sigma, 0], mode="constant")
        got = hwc(paths.blurred(torch.from_numpy(img).permute(2, 0, 1)[None], [sigma])[0, 0])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("spacing", ["linear", "sqrt"])
def test_blur_ig_equals_pair(model64, spacing):
    model, model_fn, params = model64
    x = X.double()
    ours = fxai.blur_ig(model_fn, params, x, torch.tensor(TARGETS), max_sigma=6.0, steps=12, spacing=spacing,
                        chunk_size=5)
    for i, t in enumerate(TARGETS):
        ref = saliency_core.BlurIG().GetMask(hwc(x[i]), pair_call(model, t), max_sigma=6.0, steps=12,
                                             sqrt=spacing == "sqrt")
        np.testing.assert_allclose(hwc(ours[i]), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_blur_ig_equals_pair_float32():
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    ours = fxai.blur_ig(model_fn, params, X[:1], 1, max_sigma=6.0, steps=12)
    ref = saliency_core.BlurIG().GetMask(hwc(X[0]), pair_call(model, 1, torch.float32), max_sigma=6.0, steps=12)
    assert ref.dtype == np.float32
    err = np.abs(hwc(ours[0]) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


@pytest.mark.slow
def test_blur_ig_equals_pair_at_its_defaults():
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = fxai.blur_ig(model_fn, params, x, 3)
    ref = saliency_core.BlurIG().GetMask(hwc(x[0]), pair_call(model, 3))
    np.testing.assert_allclose(hwc(ours[0]), ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_blur_ig_completeness(model64):
    # Completeness (Xu et al.): the map sums to f(x) - f(L(x, sigma_max)); the ReLU network makes the
    # integrand piecewise smooth, so Gauss-Legendre converges slowly: 1% at 512 points.
    _, model_fn, params = model64
    big, err = fxai.blur_ig(model_fn, params, X.double(), 1, max_sigma=6.0, steps=512, grad_step=1e-5,
                            method="gausslegendre", return_error=True)
    sums = big.sum((1, 2, 3))
    assert (err.abs() < 0.01 * sums.abs()).all(), (err, sums)
    assert (sums.abs() > 0.1).all()


def test_blur_rules_sum_to_the_change_of_sigma():
    for method in paths.RULES:
        for spacing, end in (("linear", 50.0), ("sqrt", 50 ** 0.5)):
            sig, w = paths.blur_rule(method, 33, 50.0, spacing)
            tol = 2e-2 if (method, spacing) == ("gausslegendre", "sqrt") else 1e-12  # a 1/sqrt singularity
            assert abs(float(w.sum()) + end) < tol * end, (method, spacing, float(w.sum()))
            assert (sig >= 0).all() and (sig <= end).all()


def test_pair_sqrt_spacing_ends_at_sqrt_max_sigma():
    # Departure from the paper: the paper's path starts at the most blurred image, L(x, sigma_max); PAIR's
    # sqrt=True spaces sigma_i = sqrt(i * max_sigma / steps), so its path starts at L(x, sqrt(max_sigma)).
    # On a linear model f = <w, z>, Blur IG sums to f(x) - f(start of the path).
    img = np.zeros((24, 24, 1))
    img[8:16, 8:16] = 1.0
    w = np.zeros_like(img)
    w[10:14, 10:14] = 1.0

    def call(batch, call_model_args=None, expected_keys=None):
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: np.broadcast_to(w, np.shape(batch))}

    f = lambda sigma: float((w * ndimage.gaussian_filter(img, [sigma, sigma, 0], mode="constant")).sum())  # noqa
    total = saliency_core.BlurIG().GetMask(img, call, max_sigma=16.0, steps=400, sqrt=True).sum()
    assert abs(total - (f(0.0) - f(4.0))) < 0.01 * total
    assert abs(total - (f(0.0) - f(16.0))) > 0.2 * total
    ours = fxai.blur_ig(lambda p, z: z.flatten(1) @ p, torch.from_numpy(w).permute(2, 0, 1).reshape(-1, 1),
                        torch.from_numpy(img).permute(2, 0, 1)[None], 0, max_sigma=16.0, steps=400, spacing="sqrt")
    assert abs(float(ours.sum()) - total) < 1e-9 * total


def test_blur_ig_paper_derivative_is_the_heat_equation():
    # The paper writes dL/dsigma = sigma * laplacian(L) (heat equation); PAIR's finite difference with
    # grad_step = 0.01 on the truncated kernel agrees inside the image, to the step's first-order error.
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.random((48, 48)), 2.0)
    x = torch.from_numpy(img)[None, None]
    sigma, h = 3.0, 0.01
    fd = ((paths.blurred(x, [sigma + h]) - paths.blurred(x, [sigma])) / h)[0, 0, 0].numpy()
    lap = ndimage.gaussian_laplace(img, sigma, mode="constant", truncate=8.0)
    inner = (slice(16, 32), slice(16, 32))
    np.testing.assert_allclose(fd[inner], sigma * lap[inner], rtol=0, atol=0.01 * np.abs(lap[inner]).max() * sigma)


def test_guided_ig_equals_pair(model64, numpy2_quantile):
    model, model_fn, params = model64
    x = X.double()
    ours = fxai.guided_ig(model_fn, params, x, torch.tensor(TARGETS), steps=24, chunk_size=1)
    for i, t in enumerate(TARGETS):
        ref = saliency_core.GuidedIG().GetMask(hwc(x[i]), pair_call(model, t), x_steps=24)
        np.testing.assert_allclose(hwc(ours[i]), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("fraction, max_dist", [(0.1, 0.0), (0.5, 1.0)])
def test_guided_ig_equals_pair_other_settings(model64, numpy2_quantile, fraction, max_dist):
    model, model_fn, params = model64
    x, base = X[:1].double(), torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    ours = fxai.guided_ig(model_fn, params, x, 2, baseline=base, steps=10, fraction=fraction, max_dist=max_dist)
    ref = saliency_core.GuidedIG().GetMask(hwc(x[0]), pair_call(model, 2), x_baseline=hwc(base[0]), x_steps=10,
                                           fraction=fraction, max_dist=max_dist)
    np.testing.assert_allclose(hwc(ours[0]), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_guided_ig_equals_pair_float32(numpy2_quantile):
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    ours = fxai.guided_ig(model_fn, params, X[:1], 1, steps=20)
    ref = saliency_core.GuidedIG().GetMask(hwc(X[0]), pair_call(model, 1, torch.float32), x_steps=20)
    err = np.abs(hwc(ours[0]) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


@pytest.mark.slow
def test_guided_ig_equals_pair_at_its_defaults(numpy2_quantile):
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = fxai.guided_ig(model_fn, params, x, 3)
    ref = saliency_core.GuidedIG().GetMask(hwc(x[0]), pair_call(model, 3))
    np.testing.assert_allclose(hwc(ours[0]), ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_guided_ig_with_no_deviation_is_ig_left_riemann(model64):
    # max_dist = 0 pins the path to the straight line: IG's left Riemann sum over the steps (the paper's claim).
    _, model_fn, params = model64
    x = X.double()
    gig = fxai.guided_ig(model_fn, params, x, 1, steps=16, max_dist=0.0)
    grads = [fxai.gradient(model_fn, params, x * (s / 16), 1) for s in range(16)]
    torch.testing.assert_close(gig, x * torch.stack(grads).mean(0), rtol=1e-9, atol=1e-12)


def test_guided_ig_completeness_and_linear_model(model64):
    _, model_fn, params = model64
    x = X.double()
    gig = fxai.guided_ig(model_fn, params, x, 1, steps=100)
    logits = model_fn(params, torch.cat([x, torch.zeros_like(x)]))[:, 1]
    gap = logits[:2] - logits[2:]
    assert ((gig.sum((1, 2, 3)) - gap).abs() < 0.03 * gap.abs()).all()  # 1.1 % and 0.9 % here
    # A linear model: any monotone path gives w * (x - b) exactly.
    w = torch.randn(3 * 16 * 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lin = lambda p, z: z.flatten(1) @ p["w"]  # noqa: E731
    out = fxai.guided_ig(lin, {"w": w}, x, 2, steps=7)
    torch.testing.assert_close(out, w[:, 2].view(1, 3, 16, 16) * x, rtol=1e-10, atol=1e-12)


def test_path_options_are_checked(model64):
    _, model_fn, params = model64
    with pytest.raises(ValueError, match="max_sigma"):
        fxai.blur_ig(model_fn, params, X.double(), 1, max_sigma=0)
    with pytest.raises(ValueError, match="spacing"):
        fxai.blur_ig(model_fn, params, X.double(), 1, spacing="log")
    with pytest.raises(ValueError, match="grad_step"):
        fxai.blur_ig(model_fn, params, X.double(), 1, grad_step=0)
    with pytest.raises(ValueError, match="fraction"):
        fxai.guided_ig(model_fn, params, X.double(), 1, fraction=1.5)


def test_pair_blur_ig_batches_weight_every_point_by_the_last_step(model64):
    # A quirk of PAIR's BlurIG (not of the paper): with batch_size > 1 every point of a batch is weighted by
    # the sigma step of the batch's last point. Linear spacing has equal steps, so nothing shows; with
    # sqrt=True the answer depends on batch_size. fxai's map is PAIR's with batch_size=1.
    model, model_fn, params = model64
    x = X[:1].double()
    one = saliency_core.BlurIG().GetMask(hwc(x[0]), pair_call(model, 1), max_sigma=6.0, steps=12, sqrt=True)
    four = saliency_core.BlurIG().GetMask(hwc(x[0]), pair_call(model, 1), max_sigma=6.0, steps=12, sqrt=True,
                                          batch_size=4)
    ours = fxai.blur_ig(model_fn, params, x, 1, max_sigma=6.0, steps=12, spacing="sqrt", chunk_size=4)
    assert np.abs(one - four).max() > 0.05 * np.abs(one).max()
    np.testing.assert_allclose(hwc(ours[0]), one, rtol=0, atol=1e-12 * np.abs(one).max())


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    return (model,) + fxai.functional(model)


@pytest.mark.slow
def test_guided_ig_equals_pair_on_resnet18_float32(resnet, numpy2_quantile):
    # PAIR's defaults (200 steps) on a real network in float32: the paths stay the same when both sides
    # compute the gradients the same way (a contiguous batch; see pair_call).
    model, model_fn, params = resnet
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = fxai.guided_ig(model_fn, params, x, 7)
    ref = saliency_core.GuidedIG().GetMask(hwc(x[0]), pair_call(model, 7, torch.float32))
    assert np.abs(hwc(ours[0]) - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.slow
def test_blur_ig_on_resnet18_float32_is_pairs_on_float64_blurs(resnet):
    # PAIR's float32 blurs put ~1e-7 / grad_step of rounding into its map; fxai blurs in float64, and equals
    # PAIR run on a float64 copy of the image (the same float32 model, the same 8 rows per pass: the
    # terms of the sum cancel, so even the batch's float32 rounding of the gradients shows) to 1e-5.
    model, model_fn, params = resnet
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = hwc(fxai.blur_ig(model_fn, params, x, 7, chunk_size=8)[0])
    call = pair_call(model, 7, torch.float32)
    ref64 = saliency_core.BlurIG().GetMask(hwc(x[0]).astype(np.float64), call, batch_size=8)
    ref32 = saliency_core.BlurIG().GetMask(hwc(x[0]), call, batch_size=8)
    scale = np.abs(ref64).max()
    assert np.abs(ours - ref64).max() < 1e-5 * scale
    assert np.abs(ours - ref32).max() < 0.05 * scale  # PAIR's own float32 rounding


def test_exact_sigma_derivative():
    # grad_step=None: the kernel's exact derivative, = central differences between the radius's jumps, and
    # Blur IG with it = Blur IG with a vanishing finite-difference step.
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.3, 1.7, 5.0, 12.0):
        h = 1e-6
        fd = (paths.blurred(x, [sigma + h]) - paths.blurred(x, [sigma - h])) / (2 * h)
        torch.testing.assert_close(paths.blurred(x, [sigma], derivative=True), fd, rtol=0, atol=1e-8)
    assert not paths.blurred(x, [0.0], derivative=True).any()
    model_fn, params = fxai.functional(make_tiny_cnn().double())
    exact = fxai.blur_ig(model_fn, params, X.double(), 1, max_sigma=6.0, steps=16, grad_step=None)
    fine = fxai.blur_ig(model_fn, params, X.double(), 1, max_sigma=6.0, steps=16, grad_step=1e-7)
    torch.testing.assert_close(exact, fine, rtol=0, atol=1e-5 * float(exact.abs().max()))
