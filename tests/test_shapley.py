"""Feature masks, feature ablation, Shapley values (exact, sampled, KernelSHAP), LIME and Owen values against
brute force, the axioms, Captum, and shap's PartitionExplainer (float64 where the oracles allow)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_cnn

import fxai
from fxai.attribution import coalitions

METHODS = ["feature_ablation", "shapley_values", "shapley_sampling", "kernel_shap", "lime", "owen_values"]
SAMPLED = {"shapley_sampling": {"samples": 4}, "kernel_shap": {"samples": 32}, "lime": {"samples": 32}}


@pytest.fixture(scope="module")
def net64():
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, model_fn, params, x


def _expanded(mask, x):
    return mask.reshape(-1 if mask.ndim == 4 else 1, *mask.shape[-3:] if mask.ndim == 4 else (1, *mask.shape[-2:])) \
        .expand(x.shape).contiguous()


def _per_feature(amap, groups):
    """The value of each feature of image 0, read from a map ``[1, C, H, W]``."""
    g = groups.expand_as(amap)[0].flatten()
    return torch.stack([amap[0].flatten()[g == j][0] for j in range(int(g.max()) + 1)])


# ---------------------------------------------------------------- against Captum and brute force


def test_feature_ablation_equals_captum(net64):
    from captum.attr import FeatureAblation

    model, model_fn, params, x = net64
    t = torch.tensor([0, 3])
    for mask, baseline in ((fxai.grid_mask((16, 16), 4), 0.0),
                           (torch.randint(0, 5, (2, 3, 16, 16), generator=torch.Generator().manual_seed(1)), 0.3)):
        ours = fxai.feature_ablation(model_fn, params, x, t, feature_mask=mask, baseline=baseline, chunk_size=7)
        ref = FeatureAblation(model).attribute(x, target=t, feature_mask=_expanded(mask, x), baselines=baseline)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13)


def _brute_force_shapley(model, x, target, groups, baseline):
    """Σ_S |S|!(M−|S|−1)!/M! (v(S ∪ j) − v(S)), one forward per coalition."""
    m = int(groups.max()) + 1

    def v(coalition):
        keep = torch.zeros_like(x, dtype=torch.bool)
        for j in coalition:
            keep |= (groups == j).expand_as(x)
        with torch.no_grad():
            return model(torch.where(keep, x, baseline))[0, target]

    phi = torch.zeros(m, dtype=x.dtype)
    for j in range(m):
        others = [i for i in range(m) if i != j]
        for size in range(m):
            for s in itertools.combinations(others, size):
                w = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[j] += w * (v(s + (j,)) - v(s))
    return phi, v(tuple(range(m))) - v(())


def test_exact_shapley_equals_brute_force_and_captum_and_kernel_shap(net64):
    from captum.attr import ShapleyValues

    model, model_fn, params, x = net64
    x = x[:1]
    mask = fxai.grid_mask((16, 16), (2, 2))
    brute, total = _brute_force_shapley(model, x, 2, mask, 0.0)
    ours = fxai.shapley_values(model_fn, params, x, 2, feature_mask=mask)
    torch.testing.assert_close(_per_feature(ours, mask), brute, rtol=0, atol=1e-14)
    assert abs(float(brute.sum() - total)) < 1e-14                                            # efficiency
    ks, fit = fxai.kernel_shap(model_fn, params, x, 2, feature_mask=mask, samples=None, return_fit=True)
    torch.testing.assert_close(ks, ours, rtol=0, atol=1e-13)
    assert abs(float(fit.coefficients.sum() - total)) < 1e-14
    ref = ShapleyValues(model).attribute(x, target=2, feature_mask=_expanded(mask, x))
    # Captum's ShapleyValues returns float32 for a float64 input: agreement to float32 rounding.
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1e-5, atol=1e-7)


def test_shapley_values_refuses_too_many_features(net64):
    _, model_fn, params, x = net64
    with pytest.raises(ValueError, match="2\\^16"):
        fxai.shapley_values(model_fn, params, x, 0, feature_mask="grid:4")
    with pytest.raises(ValueError, match="at most|up to"):
        fxai.kernel_shap(model_fn, params, x, 0, feature_mask="grid:4", samples=None)


def test_images_with_different_numbers_of_features(net64):
    # Superpixel counts differ per image: the batch equals the single calls, missing features get nothing.
    _, model_fn, params, x = net64
    mask = torch.stack([fxai.grid_mask((16, 16), (1, 3)), fxai.grid_mask((16, 16), (2, 2))])
    t = torch.tensor([1, 4])
    for name, opts in (("shapley_values", {}), ("kernel_shap", {"samples": None}), ("feature_ablation", {})):
        fn = getattr(fxai, name)
        batch = fn(model_fn, params, x, t, feature_mask=mask, **opts)
        for b in range(2):
            single = fn(model_fn, params, x[b:b + 1], t[b:b + 1], feature_mask=mask[b:b + 1], **opts)
            torch.testing.assert_close(batch[b:b + 1], single, rtol=0, atol=1e-13, msg=name)


def test_efficiency_of_sampled_shapley_and_kernel_shap(net64):
    _, model_fn, params, x = net64
    t = torch.tensor([0, 2])
    full = model_fn(params, x).gather(1, t[:, None])[:, 0]
    empty = model_fn(params, torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    _, fit = fxai.kernel_shap(model_fn, params, x, t, feature_mask="grid:4", samples=50, key=3, return_fit=True)
    torch.testing.assert_close(fit.coefficients.sum(-1), full - empty, rtol=0, atol=1e-13)
    torch.testing.assert_close(fit.intercept, empty, rtol=0, atol=1e-14)
    assert (fit.r2 > 0).all() and (fit.r2 <= 1).all()
    phi = fxai.shapley_sampling(model_fn, params, x, t, feature_mask="grid:4", samples=3, key=3)
    per_pixel = phi.sum((1, 2, 3)) / (3 * 16)       # 16 cells of 16 pixels × 3 channels
    torch.testing.assert_close(per_pixel, full - empty, rtol=0, atol=1e-13)


def _rmse_over_seeds(fn, exact, seeds):
    return torch.stack([(fn(seed) - exact).square().mean() for seed in seeds]).mean().sqrt()


def _error_ratio(name, mask, small, large, seeds):
    model_fn, params = fxai.functional(make_tiny_cnn().double())
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = fxai.shapley_values(model_fn, params, x, 1, feature_mask=mask)
    fn = getattr(fxai, name)
    errors = [_rmse_over_seeds(lambda s, n=n: fn(model_fn, params, x, 1, feature_mask=mask, samples=n, key=s),
                               exact, range(seeds)) for n in (small, large)]
    return float(errors[0] / errors[1])


def test_sampling_error_falls_as_one_over_root_n():
    # 4 times the orderings: the RMS error against exact Shapley halves (1/√n); measured 2.0–2.3 over seeds.
    assert 1.6 < _error_ratio("shapley_sampling", "grid:2x4", 4, 16, 24) < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("name, small", [("shapley_sampling", 16), ("kernel_shap", 192)])
def test_sampling_error_falls_as_one_over_root_n_12_features(name, small):
    # 12 features: measured ratios 2.0 (orderings 16 -> 64) and 2.0 (KernelSHAP 192 -> 768 coalitions).
    assert 1.6 < _error_ratio(name, "grid:3x4", small, 4 * small, 16) < 2.6


def _lime_coalitions(key, samples, m):
    z = torch.rand(samples, m, generator=torch.Generator().manual_seed(key)) < 0.5
    z[0] = True
    return z


@pytest.mark.parametrize("surrogate", ["ridge", "lasso"])
def test_lime_equals_captum_given_the_same_coalitions_and_kernel(net64, surrogate):
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
    from captum.attr import Lime

    model, model_fn, params, x = net64
    x = x[1:]
    mask, m, width, samples = fxai.grid_mask((16, 16), 3), 9, 0.4, 60
    ours, fit = fxai.lime(model_fn, params, x, 4, feature_mask=mask, samples=samples, key=5, kernel_width=width,
                          surrogate=surrogate, lasso_iterations=20000, return_fit=True)
    draws = iter(_lime_coalitions(5, samples, m).double())

    def perturb(original, **kwargs):
        return next(draws)[None]

    def kernel(original, perturbed, interpretable, **kwargs):
        on = interpretable.sum()
        d = 1 - (on / m).sqrt() if on > 0 else torch.tensor(1.0)
        return torch.exp(-d**2 / width**2)

    model_cls = SkLearnRidge(alpha=1.0) if surrogate == "ridge" else SkLearnLasso(alpha=0.01, tol=1e-10,
                                                                                 max_iter=100000)
    lime = Lime(model, interpretable_model=model_cls, similarity_func=kernel, perturb_func=perturb)
    ref = lime.attribute(x, target=4, feature_mask=_expanded(mask, x), n_samples=samples)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=0, atol=1e-8)
    assert 0 < float(fit.r2[0]) <= 1
    # Captum keeps the surrogate's bias in float32.
    torch.testing.assert_close(fit.intercept, torch.as_tensor(float(model_cls.bias()), dtype=torch.float64)[None],
                               rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3)).double()
    return net, torch.rand(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _shap_partition(net, x, target, baseline, max_evals, batch_size):
    import shap

    def f(a):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2))[:, target].numpy()

    masker = shap.maskers.Image(baseline.permute(1, 2, 0).numpy().copy())
    explainer = shap.PartitionExplainer(f, masker)
    values = explainer(x.permute(0, 2, 3, 1).numpy(), max_evals=max_evals, batch_size=batch_size, silent=True)
    return torch.from_numpy(values.values[0]).permute(2, 0, 1)


@pytest.mark.slow  # shap's import and numba compilation take ~15 s
@pytest.mark.parametrize("max_evals, per_round", [(60, 10), (200, 10), (200, 50)])
def test_owen_values_equal_shap_partition_explainer(small_net, max_evals, per_round):
    net, x = small_net
    model_fn, params = fxai.functional(net)
    baseline = torch.rand(3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = fxai.owen_values(model_fn, params, x, 1, baseline=baseline, max_evals=max_evals, per_round=per_round,
                            chunk_size=7)[0]
    ref = _shap_partition(net, x, 1, baseline, max_evals, per_round)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)
    with torch.no_grad():
        total = net(x)[0, 1] - net(baseline[None])[0, 1]
    assert abs(float(ours.sum() - total)) < 1e-13


def test_owen_values_of_a_linear_model_and_efficiency_at_any_budget():
    # f = w·x: with the whole tree expanded each element gets w·(x − b), whatever the rounds; below that
    # budget the values still sum to f(x) − f(b).
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, 3, 5, generator=gen, dtype=torch.float64)
    x, b = (torch.rand(1, 2, 3, 5, generator=gen, dtype=torch.float64) for _ in range(2))

    def model_fn(params, x):
        return x.flatten(1) @ params["w"].flatten(1).T

    params = {"w": w}
    for per_round in (10, 64):
        phi = fxai.owen_values(model_fn, params, x, 2, baseline=b, max_evals=2000, per_round=per_round)
        torch.testing.assert_close(phi, w[2] * (x - b), rtol=0, atol=1e-14)
    for max_evals in (3, 20, 51):
        phi = fxai.owen_values(model_fn, params, x, 2, baseline=b, max_evals=max_evals)
        assert abs(float(phi.sum() - (w[2] * (x - b)).sum())) < 1e-14


@pytest.mark.slow
def test_owen_values_whole_tree_equal_shap(small_net):
    net, x = small_net
    model_fn, params = fxai.functional(net)
    ours = fxai.owen_values(model_fn, params, x, 2, max_evals=20000, per_round=400)[0]
    torch.testing.assert_close(ours, _shap_partition(net, x, 2, torch.zeros(3, 6, 6, dtype=torch.float64), 20000, 400),
                               rtol=0, atol=1e-14)


# ---------------------------------------------------------------- black boxes, baselines


class _Raises(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("this model has no backward")


GRAD_MODES: set = set()


class _BlackBox(torch.nn.Module):
    """The tiny CNN behind a numpy round trip and a function without a backward; records the grad mode."""

    def __init__(self):
        super().__init__()
        self.net = make_tiny_cnn()

    def forward(self, x):
        GRAD_MODES.add(torch.is_grad_enabled())
        x = torch.from_numpy(np.asarray(x.detach().cpu().numpy()))
        return self.net(_Raises.apply(x))


@pytest.mark.parametrize("name", METHODS)
def test_black_box_model_under_no_grad(name, tiny_input):
    box = _BlackBox()
    model_fn, params = fxai.functional(box)
    opts = {"feature_mask": "grid:2"} if name != "owen_values" else {"max_evals": 30, "per_round": 30}
    opts.update({"key": 0, **SAMPLED[name]} if name in SAMPLED else {})
    GRAD_MODES.clear()
    out = getattr(fxai, name)(model_fn, params, tiny_input, 1, **opts)
    assert GRAD_MODES == {False}
    ref = getattr(fxai, name)(*fxai.functional(box.net), tiny_input, 1, **opts)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)


def test_baselines_fill_and_imputers(net64):
    _, model_fn, params, x = net64
    opts = {"feature_mask": "grid:2", "chunk_size": 3}
    blurred = fxai.metrics.imputers.gaussian_blur(x, sigma=5.0, kernel_size=31)
    torch.testing.assert_close(fxai.shapley_values(model_fn, params, x, 0, baseline="blur", **opts),
                               fxai.shapley_values(model_fn, params, x, 0, baseline=blurred, **opts), rtol=0, atol=0)
    # ROAD's noisy linear imputation, called per coalition: feature ablation against hand-built imputed inputs.
    imputer = fxai.metrics.noisy_linear(noise=0.0, tol=1e-10)
    got = fxai.feature_ablation(model_fn, params, x, 0, baseline=imputer, **opts)
    groups = fxai.grid_mask((16, 16), 2)
    removed = torch.stack([groups == j for j in range(4)])[:, None].expand(4, 2, 16, 16)
    with torch.no_grad():
        scores = model_fn(params, imputer(x, removed).reshape(-1, 3, 16, 16))[:, 0].reshape(4, 2)
        drops = model_fn(params, x)[:, 0] - scores
    torch.testing.assert_close(got[:, 0], drops.T[:, groups], rtol=0, atol=1e-12)
    noisy = fxai.metrics.noisy_linear(noise=0.05)
    with pytest.raises(ValueError, match="random"):
        fxai.feature_ablation(model_fn, params, x, 0, baseline=noisy, **opts)
    a = fxai.kernel_shap(model_fn, params, x, 0, baseline=noisy, samples=16, key=1, **opts)
    b = fxai.kernel_shap(model_fn, params, x, 0, baseline=noisy, samples=16, key=1, feature_mask="grid:2", chunk_size=5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_errors_name_the_argument(net64):
    _, model_fn, params, x = net64
    with pytest.raises(ValueError, match="distance"):
        fxai.lime(model_fn, params, x, 0, key=0, distance="manhattan")
    with pytest.raises(ValueError, match="surrogate"):
        fxai.lime(model_fn, params, x, 0, key=0, surrogate="tree")
    with pytest.raises(TypeError, match="key"):
        fxai.kernel_shap(model_fn, params, x, 0)
    with pytest.raises(ValueError, match="baseline"):
        fxai.owen_values(model_fn, params, x, 0, baseline="linear")
    assert coalitions.EXACT_LIMIT == 14


TINY_MODEL = '''
from torch import nn


def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
'''


def test_cli_explain_with_superpixels(tmp_path, monkeypatch):
    from PIL import Image

    from fxai.app import cli

    (tmp_path / "shapley_models.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    blocks = np.kron(np.random.default_rng(0).integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(blocks).save(tmp_path / "blocks.png")
    code = cli.main(["explain", "blocks.png", "--model", "shapley_models:tiny", "--keep-size", "--method",
                     "kernel_shap,owen_values", "--option", "feature_mask=felzenszwalb:50", "--option", "samples=32",
                     "--option", "max_evals=40", "--out", "out"])
    assert code == 0
    amap = torch.load(tmp_path / "out" / "blocks_kernel_shap.pt")
    assert amap.shape == (3, 32, 32) and len(torch.unique(amap)) > 2
