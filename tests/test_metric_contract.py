"""The contract every metric keeps, driven by ``fxai.metrics.registry.METRICS``.

Each metric scores the gradient maps of the tiny CNN with its ``quick`` settings: output shape, finite values,
determinism (the same key gives the same scores), batch equals single calls, nothing of the caller's changed,
and a clear error for a map of the wrong shape.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ModuleSnapshot, make_tiny_cnn

import fxai
from fxai.metrics.registry import METRICS

B = 3
TARGETS = torch.tensor([0, 4, 2])
# Metrics that draw their perturbations
# (infidelity, max-sensitivity) or a removal fill (the noisy imputers of MoRF/LeRF and ROAD) for the batch as a
# whole, so that a batch and its single rows draw different numbers from one key.
BATCH_DRAWS = {"infidelity", "max_sensitivity", "morf", "lerf", "road"}
BATCH_DRAWS |= {"local_lipschitz_estimate", "avg_sensitivity", "relative_input_stability",
                "relative_output_stability", "relative_representation_stability"}
# Random subsets, fill values and off classes, likewise drawn for the whole batch.
BATCH_DRAWS |= {"faithfulness_correlation", "sensitivity_n", "monotonicity_correlation", "random_logit", "smooth_mprt"}
# Scores that compare the inputs of a batch with each other.
BATCH_COUPLED = {"consistency", "sufficiency"}


@pytest.fixture(params=list(METRICS), ids=list(METRICS))
def info(request):
    return METRICS[request.param]


def _mask(x):
    mask = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
    mask[:, 4:10, 3:9] = True
    return mask


def score(info, model_fn, params, x, target, amap, key=0):
    opts = dict(info.quick)
    if info.randomised:
        opts["key"] = key
    if "method" in info.needs:
        opts["method"] = fxai.gradient
    if info.kind == "localisation":
        return info.fn(amap, _mask(x), **opts)
    if info.kind == "complexity":
        return info.fn(amap, **opts)
    return info.fn(model_fn, params, x, target, amap, **opts)


@pytest.fixture
def setup(tiny_input):
    model = make_tiny_cnn().double()
    model_fn, params = fxai.functional(model)
    x = tiny_input.double()
    amap = fxai.gradient(model_fn, params, x, TARGETS)
    return model, model_fn, params, x, amap


def test_shape_and_finite(info, setup):
    _, model_fn, params, x, amap = setup
    out = score(info, model_fn, params, x, TARGETS, amap)
    assert out.shape[0] == B and out.ndim == (1 if info.output == "score" else 2)
    assert out.dtype == x.dtype or info.kind == "localisation"
    assert torch.isfinite(out).all()


def test_same_key_same_scores(info, setup):
    _, model_fn, params, x, amap = setup
    first = score(info, model_fn, params, x, TARGETS, amap, key=torch.Generator().manual_seed(5))
    torch.testing.assert_close(score(info, model_fn, params, x, TARGETS, amap, key=5), first, rtol=0, atol=0)
    if info.randomised:
        opts = dict(info.quick, **({"method": fxai.gradient} if "method" in info.needs else {}))
        if info.name in {"infidelity", "max_sensitivity", "randomisation", "efficient_mprt"} | BATCH_DRAWS \
                - {"morf", "lerf", "road"}:
            with pytest.raises(TypeError, match="key"):
                info.fn(model_fn, params, x, TARGETS, amap, **opts)


def test_batch_equals_single_calls(info, setup):
    if info.name in BATCH_DRAWS:
        pytest.skip("draws its perturbations for the batch as a whole; covered by the key test")
    if info.name in BATCH_COUPLED:
        pytest.skip("compares the inputs of the batch with each other")
    _, model_fn, params, x, amap = setup
    out = score(info, model_fn, params, x, TARGETS, amap)
    for i in range(B):
        one = score(info, model_fn, params, x[i:i + 1], TARGETS[i:i + 1], amap[i:i + 1])
        torch.testing.assert_close(one, out[i:i + 1], rtol=1e-9, atol=1e-12)


def test_nothing_of_the_caller_changes(info, setup):
    model, model_fn, params, x, amap = setup
    snap = ModuleSnapshot(model)
    before = [t.clone() for t in (x, amap, *params.values())]
    score(info, model_fn, params, x, TARGETS, amap)
    snap.assert_unchanged()
    for b, a in zip(before, (x, amap, *params.values())):
        assert torch.equal(a, b)


def test_wrong_shape_map_is_refused(info, setup):
    _, model_fn, params, x, amap = setup
    if info.kind == "complexity":
        bad = amap[0, 0, 0]  # [W]: no batch of maps
    else:
        bad = amap[..., :-1]
    with pytest.raises((ValueError, TypeError), match="attribution"):
        score(info, model_fn, params, x, TARGETS, bad)
