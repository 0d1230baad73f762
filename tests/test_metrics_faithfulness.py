"""Faithfulness by correlation, the axiomatic metrics and the random logit test.

Fast tests check closed forms and the papers' definitions; tests marked ``slow`` check each metric against
Quantus 0.6 (test-only oracle) on a LeNet over 1×28×28 inputs (the fixture of Quantus's own tests) and on a
3×10×12 CNN, with Quantus's own random draws replayed into fxai (Quantus draws from NumPy's global generator).
Quantus predicts in float32, so its models and inputs are float32 here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxai
from fxai import metrics as M


def linear_model(shape, seed=0):
    """``f(x) = w · x`` (class 0) and ``-w · x`` (class 1), float64."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def model_fn(params, x):
        v = (x * params["w"]).flatten(1).sum(1)
        return torch.stack([v, -v], 1)
    return model_fn, {"w": w}


def test_feature_map_broadcasts_and_fill_values():
    x = torch.arange(24.0).view(2, 3, 2, 2)
    amap = torch.arange(8.0).view(2, 2, 2)
    assert torch.equal(M.feature_map(amap, x), amap[:, None].expand(2, 3, 2, 2).flatten(1))
    assert torch.equal(M.fill_values("black", x)[:, 0], torch.tensor([0.0, 12.0]))
    assert torch.equal(M.fill_values("white", x)[:, 0], torch.tensor([11.0, 23.0]))
    with pytest.raises(ValueError, match="baseline"):
        M.fill_values("grey", x)


def test_additive_model_scores_perfect_maps_perfectly():
    """For f = w·x with a zero baseline, removing S drops f by the sum of w·x over S: gradient × input has
    faithfulness correlation, sensitivity-n and faithfulness estimate 1 and completeness gap 0."""
    x = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    model_fn, params = linear_model(x.shape[1:])
    gi = params["w"] * x
    one = torch.ones(2, dtype=torch.float64)
    fc = M.faithfulness_correlation(model_fn, params, x, 0, gi, runs=30, subset_size=7, baseline=0.0, key=0)
    torch.testing.assert_close(fc, one)
    sn = M.sensitivity_n(model_fn, params, x, 0, gi, ns=[1, 5, 40], samples=20, baseline=0.0, key=1)
    torch.testing.assert_close(sn, torch.ones(2, 3, dtype=torch.float64))
    fe = M.faithfulness_estimate(model_fn, params, x, 0, gi, features_in_step=3, baseline=0.0)
    torch.testing.assert_close(fe, one)
    torch.testing.assert_close(M.completeness(model_fn, params, x, 0, gi, baseline=0.0), 0 * one, atol=1e-12, rtol=0)
    # the negated map anti-correlates, and is off by twice the score
    fc_neg = M.faithfulness_correlation(model_fn, params, x, 0, -gi, runs=30, subset_size=7, baseline=0.0, key=0)
    torch.testing.assert_close(fc_neg, -one)
    gap = M.completeness(model_fn, params, x, 0, -gi, baseline=0.0)
    torch.testing.assert_close(gap, 2 * model_fn(params, x)[:, 0].abs())


def test_monotonicity_of_an_additive_model():
    """Restoring features of f = w·x with w > 0 and x > baseline only raises the score: monotonic whatever the
    order; with negative weights on the least relevant features the score first falls."""
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 1
    model_fn, params = linear_model(x.shape[1:])
    params = {"w": params["w"].abs()}
    amap = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert M.monotonicity(model_fn, params, x, 0, amap, baseline=0.0).tolist() == [1.0, 1.0]
    curve = M.monotonicity_curve(model_fn, params, x, 0, amap, baseline=0.0, features_in_step=4)
    order = amap.flatten(1).argsort(1)
    expect = torch.stack([(params["w"].flatten() * x.flatten(1)).gather(1, order[:, :4 * (k + 1)]).sum(1)
                          for k in range(4)], 1)
    torch.testing.assert_close(curve, expect)
    w = params["w"].clone().flatten()
    w[order[0, 0]] = -5.0  # the least relevant feature of image 0 now lowers the score when restored
    params2 = {"w": w.view(1, 4, 4)}
    one = (x[:1], amap[:1])
    assert M.monotonicity(model_fn, params2, one[0], 0, one[1], baseline=0.0).tolist() == [1.0]  # restored first
    w[order[0, 5]] = -5.0
    params3 = {"w": w.view(1, 4, 4)}
    assert M.monotonicity(model_fn, params3, one[0], 0, one[1], baseline=0.0).tolist() == [0.0]


def test_monotonicity_correlation_and_non_sensitivity_closed_forms():
    """f reads only some features: non-sensitivity counts the features the map gets wrong; a map ranking the
    read features by weight correlates 1 with the variance their replacement causes."""
    x = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = torch.zeros(1, 3, 3, dtype=torch.float64)
    w[0, 0, :] = torch.tensor([1.0, 2.0, 3.0])
    model_fn = linear_model(x.shape[1:])[0]
    params = {"w": w}
    exact = w[None].clone()
    assert M.non_sensitivity(model_fn, params, x, 0, exact, baseline=-1.0).item() == 0.0
    wrong = exact.clone()
    wrong[0, 0, 0, 0] = 0.0  # a read feature without relevance
    wrong[0, 0, 2, 2] = 1.0  # an ignored feature with relevance
    assert M.non_sensitivity(model_fn, params, x, 0, wrong, baseline=-1.0).item() == 2.0
    # variance of w_i (u - x_i) over u ~ U[0, 1) grows with w_i here; the ignored features tie at 0
    rho = M.monotonicity_correlation(model_fn, params, x + 5, 0, exact, samples=50, key=0)
    expect = M.spearman(exact.flatten(1), w.flatten()[None] ** 2)
    torch.testing.assert_close(rho, expect)


def test_random_logit_and_input_invariance_of_gradients():
    """The gradient of a linear model is the class's weight: the random logit map is exactly -1 times the map
    of the target (class 1 = -class 0). Gradients are invariant to an input shift absorbed by the first
    layer; gradient × input is not (Kindermans et al.)."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model_fn, params = linear_model(x.shape[1:])
    g = fxai.gradient(model_fn, params, x, 0)
    sim = M.random_logit(model_fn, params, x, 0, g, method=fxai.gradient, similarity="spearman", key=0)
    torch.testing.assert_close(sim, -torch.ones(2, dtype=torch.float64))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)).double().eval()
    fn, p = fxai.functional(net)
    g = fxai.gradient(fn, p, x, 2)
    assert M.input_invariance(fn, p, x, 2, g, method=fxai.gradient).tolist() == [1.0, 1.0]
    gx = fxai.input_x_gradient(fn, p, x, 2)
    assert M.input_invariance(fn, p, x, 2, gx, method=fxai.input_x_gradient).tolist() == [0.0, 0.0]
    # the shifted model is the same function of the shifted input
    shifted = M.shifted_first_layer(p, "0", -1.0)
    torch.testing.assert_close(fn(shifted, x - 1.0), fn(p, x))


def test_options_are_checked():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    model_fn, params = linear_model(x.shape[1:])
    amap = torch.rand(2, 4, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="key"):
        M.faithfulness_correlation(model_fn, params, x, 0, amap, runs=3, subset_size=4)
    with pytest.raises(ValueError, match="subset_size"):
        M.faithfulness_correlation(model_fn, params, x, 0, amap, subset_size=49, key=0)
    with pytest.raises(ValueError, match="subsets"):
        M.faithfulness_correlation(model_fn, params, x, 0, amap, runs=2, subset_size=4,
                                   subsets=torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="ns"):
        M.sensitivity_n(model_fn, params, x, 0, amap, ns=[0], key=0)
    with pytest.raises(ValueError, match="noise"):
        M.monotonicity_correlation(model_fn, params, x, 0, amap, samples=2, noise=torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="off_class"):
        M.random_logit(model_fn, params, x, 0, amap, method=fxai.gradient, off_class=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="layer"):
        M.input_invariance(model_fn, params, x, 0, amap, method=fxai.gradient, layer="conv9")


def test_same_scores_whatever_the_chunk_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 5)).double().eval()
    fn, p = fxai.functional(net)
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    amap = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    for metric, opts in [(M.faithfulness_correlation, dict(runs=7, subset_size=5, key=3)),
                         (M.faithfulness_estimate, dict(features_in_step=5)),
                         (M.monotonicity_curve, dict(features_in_step=9)),
                         (M.monotonicity_correlation, dict(samples=3, features_in_step=20, key=1)),
                         (M.non_sensitivity, dict(features_in_step=4))]:
        full = metric(fn, p, x, None, amap, **opts)
        torch.testing.assert_close(metric(fn, p, x, None, amap, chunk_size=4, **opts), full, rtol=1e-12, atol=1e-12)


def test_region_perturbation_of_an_additive_model():
    """Removing whole patches of f = w·x (zero baseline) drops f by the removed patches' w·x: with gradient ×
    input the patches go in decreasing order of their own contribution."""
    x = torch.rand(2, 2, 6, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    model_fn, params = linear_model(x.shape[1:])
    gi = params["w"] * x
    curve = M.region_perturbation(model_fn, params, x, 0, gi, patch=3, regions=50, baseline=0.0)
    labels = M.patch_labels(6, 7, 3)
    assert labels.unique().numel() == 6 and curve.shape == (2, 6)
    contrib = torch.stack([gi.sum(1).flatten(1)[:, labels.flatten() == k].sum(1) for k in range(6)], 1)
    expect = contrib.sort(1, descending=True).values.cumsum(1)
    torch.testing.assert_close(curve, expect)
    lerf = M.region_perturbation(model_fn, params, x, 0, gi, patch=3, order="lerf", baseline=0.0)
    torch.testing.assert_close(lerf, contrib.sort(1).values.cumsum(1))


def test_irof_of_a_pixel_model():
    """f reads one pixel; IROF's curve p_k = f(x^(k)) / f(x) is 1 until the pixel's superpixel goes, then
    baseline / x at that pixel."""
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 1

    def model_fn(params, x):
        v = x[:, 0, 4, 1] * params["w"]
        return torch.stack([v, -v], 1)
    params = {"w": torch.tensor(2.0, dtype=torch.float64)}
    segments = (torch.arange(36).view(1, 6, 6) // 9)  # four bands of 9 pixels; the pixel is in band 2
    amap = segments.double() * -1.0  # band 0 most relevant: the pixel's band is removed third
    out = M.irof(model_fn, params, x, 0, amap, segments=segments, baseline=0.5)
    p = torch.tensor([1.0, 1.0, 0.5 / x[0, 0, 4, 1].item(), 0.5 / x[0, 0, 4, 1].item()], dtype=torch.float64)
    torch.testing.assert_close(out, 4 - torch.trapezoid(p)[None])


def test_histogram_entropy_matches_numpy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = torch.randn(3, 50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    a[2] = 1.5  # constant: one full bin
    for bins in (7, 100):
        expect = [scipy_stats.entropy(np.histogram(row, bins=bins)[0]) for row in a.numpy()]
        torch.testing.assert_close(M.histogram_entropy(a, bins=bins), torch.tensor(expect, dtype=torch.float64))
    uniform = torch.arange(8.0)[None]
    torch.testing.assert_close(M.histogram_entropy(uniform, bins=8), torch.tensor([np.log(8.0)], dtype=torch.float32))


def test_mprt_variants_on_unrandomised_stages_and_cascades():
    """An unchanged model leaves the map's complexity alone (eMPRT 0) and, without noise, the smoothed map is
    the map (sMPRT similarity 1); a cascade randomises its layers one more at a time."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double().eval()
    fn, p = fxai.functional(net)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    g = fxai.gradient(fn, p, x, 1)
    torch.testing.assert_close(M.efficient_mprt(fn, p, x, 1, g, method=fxai.gradient, randomised=p),
                               torch.zeros(2, dtype=torch.float64))
    sims = M.smooth_mprt(fn, p, x, 1, g, method=fxai.gradient, samples=3, magnitude=0.0, stages=[p, p], key=0)
    torch.testing.assert_close(sims, torch.ones(2, 2, dtype=torch.float64))
    stages = M.cascade(p, ["0", "3"], key=0)
    assert not torch.equal(stages[0]["0.weight"], p["0.weight"]) and stages[0]["3.weight"] is p["3.weight"]
    assert torch.equal(stages[1]["0.weight"], stages[0]["0.weight"]) and not torch.equal(stages[1]["3.weight"],
                                                                                         p["3.weight"])
    # a random network's gradient map is no simpler than the trained one's here, and the score is relative
    e = M.efficient_mprt(fn, p, x, 1, g, method=fxai.gradient, key=0)
    h0 = M.histogram_entropy(g)
    rand = fxai.gradient(fn, M.randomised_params(p, M.layer_order(p, fn), key=torch.Generator().manual_seed(0),
                                                 model_fn=fn), x, 1)
    torch.testing.assert_close(e, (M.histogram_entropy(rand) - h0) / h0)


def test_sufficiency_counts_close_maps_with_the_same_class():
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    model_fn, params = linear_model(x.shape[1:])
    maps = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.1, 1.0], [5.0, 0.0, 0.0, 0.0], [5.0, 0.1, 0.0, 0.0]],
                        dtype=torch.float64).view(4, 1, 2, 2)
    target = torch.tensor([0, 0, 0, 1])  # inputs 0 and 1 agree, inputs 2 and 3 do not
    out = M.sufficiency(model_fn, params, x, target, maps, threshold=0.2, distance="euclidean")
    assert out.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert M.sufficiency(model_fn, params, x, target, maps, threshold=1.0, distance="euclidean").tolist() == \
        [2 / 3, 2 / 3, 2 / 3, 0.0]
