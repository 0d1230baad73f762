"""Misuse gets a clear error or the right answer, never a silent wrong one: non-finite inputs, single-logit
models, callable targets of the wrong shape, odd batches and dtypes, degenerate maps, keys."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_cnn
from torch import nn

import fxai
from fxai import metrics as M
from fxai import registry

PIXEL_CALLS = {
    "gradient": lambda mf, p, x, **kw: fxai.gradient(mf, p, x, 0, **kw),
    "integrated_gradients": lambda mf, p, x, **kw: fxai.integrated_gradients(mf, p, x, 0, steps=2, **kw),
    "grad_cam": lambda mf, p, x, **kw: fxai.grad_cam(mf, p, x, 0, layer="layer4", **kw),
    "score_cam": lambda mf, p, x, **kw: fxai.score_cam(mf, p, x, 0, layer="layer4", **kw),
    "rise": lambda mf, p, x, **kw: fxai.rise(mf, p, x, 0, num_masks=4, key=0, **kw),
}


@pytest.fixture
def tiny():
    return fxai.functional(make_tiny_cnn())


# ---------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("name", list(PIXEL_CALLS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x_is_refused(name, bad, tiny, tiny_input):
    x = tiny_input.clone()
    x[1, 0, 3, 4] = bad
    with pytest.raises(ValueError, match=r"x holds 1 NaN or infinite value"):
        PIXEL_CALLS[name](*tiny, x)


def test_non_finite_baseline_and_sigma_are_refused(tiny, tiny_input):
    with pytest.raises(ValueError, match="baseline must be finite"):
        fxai.integrated_gradients(*tiny, tiny_input, 0, baseline=float("nan"), steps=2)
    base = torch.zeros_like(tiny_input)
    base[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="baseline holds 1 NaN or infinite value"):
        fxai.integrated_gradients(*tiny, tiny_input, 0, baseline=base, steps=2)
    with pytest.raises(ValueError, match="sigma must be a non-negative number"):
        fxai.smoothgrad(fxai.gradient, samples=2, sigma=float("nan"))(*tiny, tiny_input, 0, key=0)


def test_non_finite_logits_are_refused(tiny_input):
    model_fn = lambda p, x: torch.log(x.flatten(1)[:, :3] - 0.5)  # noqa: E731 - NaN where x < 0.5
    with pytest.raises(ValueError, match="model_fn's output .* NaN or infinite"):
        fxai.gradient(model_fn, {}, tiny_input.abs(), 0)


@pytest.mark.parametrize("metric", ["pointing_game", "relevance_mass", "relevance_rank"])
def test_non_finite_map_is_refused_by_localisation(metric):
    amap = torch.rand(2, 8, 8)
    amap[1, 2, 2] = float("nan")
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2, 2] = True
    with pytest.raises(ValueError, match="attribution holds 1 NaN"):
        getattr(M, metric)(amap, mask)


def test_non_finite_map_is_refused_by_model_metrics(tiny, tiny_input):
    amap = torch.rand_like(tiny_input)
    amap[0, 0, 0, 0] = float("inf")
    for fn in (M.deletion, M.road, M.infidelity):
        with pytest.raises(ValueError, match="attribution holds 1 NaN or infinite"):
            fn(*tiny, tiny_input, 0, amap, key=0)
    with pytest.raises(ValueError, match="attribution holds"):
        M.sparseness(amap)


# ---------------------------------------------------------------- single-logit models


class Binary(nn.Module):
    """A binary classifier with one output: its logit is the brightness of the top-left quarter."""

    def forward(self, x):
        return 4 * x[:, :, :8, :8].mean((1, 2, 3))[:, None] - 2


def test_single_logit_scores_are_sigmoid_probabilities(tiny_input):
    # softmax over one logit is 1 whatever the input: every map would ignore the head.
    model_fn, params = fxai.functional(Binary())
    x = tiny_input.abs()
    deletion = M.deletion(model_fn, params, x, 0, torch.rand(3, 16, 16), steps=4, softmax=True, key=0)
    torch.testing.assert_close(deletion[:, 0], torch.sigmoid(Binary()(x))[:, 0])
    rise = fxai.rise(model_fn, params, x, 0, num_masks=64, cell_size=4, key=0)
    inside, outside = rise[:, :8, :8].mean((1, 2)), rise[:, 8:, 8:].mean((1, 2))
    assert (inside > outside + 1e-3).all()  # the quarter the logit reads stands out
    score = fxai.score_cam(fxai.split(lambda p, x: x, lambda p, a: Binary()(a)), {}, x, 0, layer="features")
    assert score.std() > 0


# ---------------------------------------------------------------- callable targets


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "grad_cam", "full_grad", "score_cam",
                                  "occlusion", "smoothgrad(input_x_gradient)"])
@pytest.mark.parametrize("bad", [lambda logits: logits[:, :2], lambda logits: logits.sum(), lambda logits: 3,
                                 lambda logits: logits.argmax(-1)])
def test_callable_target_of_the_wrong_shape_is_refused(name, bad, tiny, tiny_input):
    rows = {**registry.METHODS, "smoothgrad(input_x_gradient)": registry.applied(
        registry.TRANSFORMS["smoothgrad"], registry.METHODS["input_x_gradient"], samples=2)}
    info = rows[name]
    opts = registry.options(info, size=(16, 16), layer="layer4", quick=True)
    with pytest.raises(ValueError, match=r"callable target must return one floating score per input, a tensor \[B\]"):
        info.fn(*tiny, tiny_input, bad, **opts)


# ---------------------------------------------------------------- batches, targets, dtypes


@pytest.mark.parametrize("name", list(PIXEL_CALLS))
def test_empty_batch_is_refused(name, tiny, tiny_input):
    with pytest.raises(ValueError, match="x is an empty batch"):
        PIXEL_CALLS[name](*tiny, tiny_input[:0])


def test_empty_references_and_empty_target_columns_are_refused(tiny, tiny_input):
    with pytest.raises(ValueError, match="references is an empty batch"):
        fxai.expected_gradients(*tiny, tiny_input, 0, references=tiny_input[:0], key=0)
    with pytest.raises(ValueError, match=r"target must have shape \[B\] or \[B, K\]"):
        fxai.gradient(*tiny, tiny_input, torch.zeros(3, 0, dtype=torch.long))


def test_meta_input_is_refused(tiny, tiny_input):
    with pytest.raises(ValueError, match="x is on the meta device"):
        fxai.gradient(*tiny, tiny_input.to("meta"), 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_eigen_and_full_grad(dtype, tiny_input):
    # SVD and FullGrad's per-channel rescaling run in float32 and come back in the input's dtype.
    model = make_tiny_cnn()
    ref_fn, ref_params = fxai.functional(model)
    model_fn, params = fxai.functional(make_tiny_cnn().to(dtype))
    x = tiny_input.to(dtype)
    for method, kw in ((fxai.eigen_cam, {"layer": "layer4"}), (fxai.full_grad, {})):
        got = method(model_fn, params, x, 0, **kw)
        assert got.dtype == dtype and torch.isfinite(got).all()
        ref = method(ref_fn, ref_params, x.float(), 0, **kw)
        scale = float(ref.abs().max())
        assert float((got.float() - ref).abs().max()) < (0.05 if dtype == torch.float16 else 0.1) * scale


# ---------------------------------------------------------------- degenerate maps


def test_eigen_methods_refuse_a_one_by_one_layer(tiny, tiny_input):
    model_fn = fxai.split(lambda p, x: x.mean((2, 3), keepdim=True), lambda p, a: a.flatten(1))
    for method in (fxai.eigen_cam, fxai.eigen_grad_cam):
        with pytest.raises(ValueError, match="1×1 map"):
            method(model_fn, {}, tiny_input, 0)
    with pytest.raises(ValueError, match="1×1 map"):
        fxai.grad_cam(model_fn, {}, tiny_input, 0, eigen_smooth=True)


def test_similarities_of_constant_maps():
    const, varying = torch.ones(2, 8, 8), torch.rand(2, 8, 8)
    assert M.spearman(const, 2 * const).tolist() == [1.0, 1.0]
    assert M.spearman(const, varying).tolist() == [0.0, 0.0]
    assert M.ssim(const, const).tolist() == [1.0, 1.0]
    assert torch.isfinite(M.ssim(const, varying)).all()


def test_pointing_game_tolerance_scales_with_the_image_and_constant_maps_miss():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 10:14, 10:14] = True
    assert M.pointing_game(torch.zeros(1, 16, 16), mask).tolist() == [0.0]  # no maximum: a miss
    amap = torch.zeros(1, 16, 16)
    amap[0, 8, 11] = 1.0  # two pixels above the mask
    assert M.pointing_game(amap, mask).tolist() == [0.0]  # 15 * 16 / 224 = 1.07 pixels
    assert M.pointing_game(amap, mask, tolerance=2).tolist() == [1.0]
    big = torch.zeros(1, 224, 224, dtype=torch.bool)
    big[0, 100:120, 100:120] = True
    far = torch.zeros(1, 224, 224)
    far[0, 86, 110] = 1.0  # 14 pixels above: within the paper's 15 at 224×224
    assert M.pointing_game(far, big).tolist() == [1.0]


# ---------------------------------------------------------------- keys


def test_max_sensitivity_needs_a_key_only_when_something_is_drawn(tiny, tiny_input):
    g = fxai.gradient(*tiny, tiny_input, 0)
    fixed = lambda x, *, samples, key: 0.01 * torch.ones(samples, *x.shape)  # noqa: E731
    deterministic = M.max_sensitivity(*tiny, tiny_input, 0, g, method=fxai.gradient, perturb=fixed, samples=2)
    assert deterministic.shape == (3,)
    with pytest.raises(TypeError, match="key is required"):
        M.max_sensitivity(*tiny, tiny_input, 0, g, method=fxai.gradient, samples=2)
    with pytest.raises(TypeError, match="key is required"):
        M.infidelity(*tiny, tiny_input, 0, g, samples=2)
    assert M.infidelity(*tiny, tiny_input, 0, g, perturb=fixed, samples=2).shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_x_of_another_dtype_than_the_params_is_refused(dtype, tiny, tiny_input):
    for method in (fxai.gradient, lambda *a: fxai.grad_cam(*a, layer="layer4")):
        with pytest.raises(TypeError, match=f"x has dtype {dtype} but the model's parameters are torch.float32"):
            method(*tiny, tiny_input.to(dtype), 0)


def test_wrapped_and_scripted_modules(tiny_input):
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(nn.DataParallel(model))
    torch.testing.assert_close(fxai.gradient(model_fn, params, tiny_input, 0),
                               fxai.gradient(*fxai.functional(model), tiny_input, 0))
    with pytest.raises(TypeError, match="TorchScript module"):
        fxai.functional(torch.jit.script(nn.Linear(3, 2)))
