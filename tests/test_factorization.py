"""Deep Feature Factorization and its NMF: scikit-learn's coordinate descent as the oracle, exact recovery of
known factors, the shift for negative layers, the head, purity, errors, and localisation on the shapes dataset."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ModuleSnapshot, active_modes, leftover_hooks, make_tiny_cnn

import fxai
from fxai._core.layers import forward_with_activations
from fxai.attribution.nmf import CHECK_EVERY, _random_init, nmf, relative_error

sklearn_nmf = pytest.importorskip("sklearn.decomposition").NMF


def _layer4(x):
    model_fn, params = fxai.functional(make_tiny_cnn())
    _, (act,) = forward_with_activations(model_fn, params, x, ["layer4"])
    return act.detach().transpose(0, 1).reshape(act.shape[1], -1)


@pytest.fixture(scope="module")
def activations():
    """The tiny CNN's post-ReLU ``layer4`` activations over 6 images, as the matrix ``[C = 16, 6·8·8]``."""
    return _layer4(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- the NMF solver


@pytest.mark.parametrize("rank", [3, 8])
@pytest.mark.parametrize("iterations", [1, 7, 40])
def test_hals_is_sklearn_coordinate_descent_iteration_for_iteration(activations, rank, iterations):
    v = activations.double()
    w0, h0 = _random_init(v, rank, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sklearn_nmf(rank, init="custom", solver="cd", max_iter=iterations, tol=0)
        w_ref = torch.from_numpy(ref.fit_transform(v.numpy(), W=w0.numpy().copy(), H=h0.numpy().copy()))
    h_ref = torch.from_numpy(ref.components_)
    ours = nmf(v, rank, iterations=iterations, tol=0, init=(w0, h0))
    assert int(ours.iterations) == iterations
    assert (ours.w - w_ref).abs().max() <= 1e-10 * w_ref.abs().max()
    assert (ours.h - h_ref).abs().max() <= 1e-10 * h_ref.abs().max()


def _sklearn_errors(v: torch.Tensor, rank: int, iterations: int, seeds: int = 5) -> list[float]:
    errors = []
    for seed in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = sklearn_nmf(rank, init="random", random_state=seed, max_iter=iterations)
            w = model.fit_transform(v.numpy())
        errors.append(float(relative_error(v.double(), torch.from_numpy(w).double(),
                                           torch.from_numpy(model.components_).double())))
    return errors


@pytest.mark.parametrize("rank, iterations", [(3, 200), (6, 30)])
def test_one_start_is_as_good_as_sklearn_random_init(activations, rank, iterations):
    """Same rank and iterations on the same activations, one random start each: the same algorithm, so the
    medians over 5 seeds agree (which local minimum a start reaches is luck; our stopping rule may end earlier)."""
    theirs = _sklearn_errors(activations, rank, iterations)
    ours = [float(nmf(activations, rank, iterations=iterations, key=seed).error) for seed in range(5)]
    assert np.median(ours) <= np.median(theirs) * (1 + 1e-3), (ours, theirs)


@pytest.mark.parametrize("rank, iterations", [(3, 200), (6, 30), (6, 200)])
def test_restarts_make_dff_no_worse_than_sklearn_random_init(rank, iterations):
    """Through the public function: the best of 5 starts (one batched solve) reconstructs the activations no
    worse than scikit-learn's median start at the same rank and iterations."""
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    v = _layer4(x)
    model_fn, params = fxai.functional(make_tiny_cnn())
    out = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=rank, iterations=iterations,
                                          restarts=5, key=0, upsample=False)
    approx = torch.einsum("kc,bkhw->cbhw", out.concepts, out.maps).reshape(v.shape)
    ours = float(torch.linalg.matrix_norm(v - approx) / torch.linalg.matrix_norm(v))
    theirs = _sklearn_errors(v, rank, iterations)
    assert ours <= np.median(theirs) * (1 + 1e-4), (ours, theirs)
    single = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=rank,
                                             iterations=iterations, key=0, upsample=False)
    approx = torch.einsum("kc,bkhw->cbhw", single.concepts, single.maps).reshape(v.shape)
    assert ours <= float(torch.linalg.matrix_norm(v - approx) / torch.linalg.matrix_norm(v)) + 1e-7


def test_batched_problems_equal_separate_calls(activations):
    v = torch.stack([activations, activations.flip(1), activations.sqrt()])
    w0, h0 = _random_init(v, 4, 1)
    both = nmf(v, 4, iterations=200, tol=1e-3, init=(w0, h0))
    assert len(set(both.iterations.tolist())) > 1  # the problems stop at different iterations
    for i in range(3):
        one = nmf(v[i], 4, iterations=200, tol=1e-3, init=(w0[i], h0[i]))
        assert int(one.iterations) == int(both.iterations[i])
        torch.testing.assert_close(one.w, both.w[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(one.h, both.h[i], rtol=1e-5, atol=1e-6)


def test_error_is_monotone_and_stopping_is_on_relative_progress(activations):
    errors = [float(nmf(activations, 4, iterations=n, tol=0, key=0).error) for n in (1, 2, 5, 20, 80)]
    assert all(a >= b - 1e-7 for a, b in zip(errors, errors[1:])), errors
    stopped = nmf(activations, 4, iterations=500, tol=1e-3, key=0)
    n = int(stopped.iterations)
    assert n % CHECK_EVERY == 0 and n < 500
    before = float(nmf(activations, 4, iterations=n - CHECK_EVERY, tol=0, key=0).error)
    after = float(nmf(activations, 4, iterations=n, tol=0, key=0).error)
    assert before - after <= 1e-3 * before  # the last ten iterations gained less than tol
    assert float(stopped.error) == pytest.approx(after, rel=1e-6)
    assert int(nmf(activations, 4, iterations=37, tol=0, key=0).iterations) == 37


def test_same_key_same_factors_other_key_other_factors(activations):
    a, b = nmf(activations, 3, key=5), nmf(activations, 3, key=torch.Generator().manual_seed(5))
    assert torch.equal(a.w, b.w) and torch.equal(a.h, b.h)
    c = nmf(activations, 3, key=6)
    assert not torch.equal(a.w, c.w)


def test_zero_matrix_and_bad_arguments():
    zero = nmf(torch.zeros(4, 6), 2, key=0)
    assert zero.w.abs().max() == 0 and zero.h.abs().max() == 0 and float(zero.error) == 0
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-torch.ones(3, 3), 2, key=0)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        nmf(torch.ones(3, 3), 0, key=0)
    with pytest.raises(TypeError, match="key is required"):
        nmf(torch.ones(3, 3), 2)
    with pytest.raises(ValueError, match="init: expected"):
        nmf(torch.ones(3, 4), 2, init=(torch.ones(3, 2), torch.ones(3, 4)))


# ---------------------------------------------------------------- known factors through the public function


def _known_factors(shift: float = 0.0):
    """A 1×1-conv "layer" whose activation is ``W @ maps + shift`` for 4 known concepts and maps in [0, 1].

    Each concept has 3 channels that no other concept uses, and a region where it alone is present at
    1 (both separable, which makes the factorisation unique up to permutation and scale); 4 more
    channels mix them. The top two rows of every image hold no concept (every channel's minimum is ``shift``).
    """
    g = torch.Generator().manual_seed(0)
    k, c, b, s = 4, 16, 3, 8
    w = torch.rand(c, k, generator=g)
    for i in range(k):
        w[3 * i:3 * i + 3] = 0
        w[3 * i:3 * i + 3, i] = 0.5 + torch.rand(3, generator=g)
    maps = torch.rand(b, k, s, s, generator=g) * (torch.rand(b, k, s, s, generator=g) < 0.5)
    maps[:, :, :2, :] = 0
    for i in range(k):
        maps[:, :, 2 + i, :2] = 0
        maps[:, i, 2 + i, :2] = 1
    params = {"w": w, "b": torch.full((c,), shift), "fc": torch.randn(3, c, generator=g)}

    def features(p, x):
        return F.conv2d(x, p["w"][:, :, None, None]) + p["b"][None, :, None, None]

    def head(p, a):
        return a.mean((2, 3)) @ p["fc"].T

    return fxai.split(features, head), params, maps, w


def _matched(found: torch.Tensor, maps: torch.Tensor) -> list[int]:
    return list(min(itertools.permutations(range(maps.shape[1])),
                    key=lambda p: float((found[:, list(p)] - maps).abs().max())))


@pytest.mark.parametrize("shift, key", [(0.0, 0), (0.0, 1), (-1.0, 2)])
def test_known_factors_are_recovered_up_to_permutation(shift, key):
    model_fn, params, maps, w = _known_factors(shift)
    out = fxai.deep_feature_factorization(model_fn, params, maps, concepts=4, key=key, upsample=False, head="auto")
    order = _matched(out.maps, maps)
    # the scale convention (each map's maximum is 1) makes the recovered maps the true ones exactly
    assert (out.maps[:, order] - maps).abs().max() < 1e-5
    # a concept is the activation where it alone is at full strength: W[:, k] + shift
    assert (out.concepts[order] - (w.T + shift)).abs().max() < 1e-5
    expected_scores = (w.T + shift) @ params["fc"].T  # head="auto" on a split model: head(params, concept as 1x1 map)
    assert (out.class_scores[order] - expected_scores).abs().max() < 1e-5


def test_shift_applies_only_to_negative_channels():
    """A channel that never reaches 0 is not shifted (the paper factorises the activations as they are)."""
    model_fn, params, maps, w = _known_factors(0.0)
    params = dict(params, b=torch.tensor([0.0] * 15 + [0.25]))
    v = model_fn.features(params, maps).transpose(0, 1).reshape(16, -1)
    out = fxai.deep_feature_factorization(model_fn, params, maps, concepts=4, iterations=50, tol=0, key=3,
                                          upsample=False)
    fit = nmf(v, 4, iterations=50, tol=0, key=3)  # unshifted: the same numbers, before the scale convention
    recon = torch.einsum("kc,bkhw->bchw", out.concepts, out.maps).transpose(0, 1).reshape(16, -1)
    torch.testing.assert_close(recon, fit.w @ fit.h, rtol=1e-5, atol=1e-5)


def test_upsampling_chunking_keys_and_dtype():
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    raw = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=0, upsample=False)
    assert raw.maps.shape == (3, 3, 8, 8) and raw.concepts.shape == (3, 16) and raw.class_scores is None
    assert raw.maps.amin() >= 0 and torch.allclose(raw.maps.amax((0, 2, 3)), torch.ones(3))
    up = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=0)
    torch.testing.assert_close(up.maps, fxai.postprocess.upsample(raw.maps, (16, 16)), rtol=0, atol=0)
    chunked = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=0, chunk_size=2)
    torch.testing.assert_close(chunked.maps, up.maps, rtol=1e-4, atol=1e-5)
    default_layer = fxai.deep_feature_factorization(model_fn, params, x, concepts=3, key=0, upsample=False)
    torch.testing.assert_close(default_layer.maps, raw.maps, rtol=0, atol=0)
    again = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, upsample=False,
                                            key=torch.Generator().manual_seed(0))
    assert torch.equal(again.maps, raw.maps) and torch.equal(again.concepts, raw.concepts)
    other = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=1, upsample=False)
    assert not torch.equal(other.maps, raw.maps)
    params64 = {k: v.double() for k, v in params.items()}
    wide = fxai.deep_feature_factorization(model_fn, params64, x.double(), layer="layer4", concepts=3, key=0)
    assert wide.maps.dtype == wide.concepts.dtype == torch.float64


def test_head_auto_and_callable_on_a_module():
    model = make_tiny_cnn()
    model_fn, params = fxai.functional(model)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    auto = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, head="auto", key=0)
    torch.testing.assert_close(auto.class_scores, auto.concepts @ params["fc.weight"].T + params["fc.bias"])
    seen = []
    given = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=3, key=0,
                                            head=lambda c: seen.append(c.clone()) or c[:, :2] * 2)
    torch.testing.assert_close(seen[0], auto.concepts, rtol=0, atol=0)
    torch.testing.assert_close(given.class_scores, auto.concepts[:, :2] * 2, rtol=0, atol=0)


def test_module_params_untouched_and_nothing_left_behind():
    model = make_tiny_cnn()
    snap = ModuleSnapshot(model)
    model_fn, params = fxai.functional(model)
    before = {k: v.clone() for k, v in params.items()}
    x = torch.rand(2, 3, 16, 16)
    x_before = x.clone()
    fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=2, head="auto", key=0)
    snap.assert_unchanged()
    assert torch.equal(x, x_before) and all(torch.equal(params[k], v) for k, v in before.items())

    def boom(concepts):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=2, head=boom, key=0)
    assert leftover_hooks(model) == [] and active_modes() == []


@pytest.mark.parametrize("kwargs, error, match", [
    ({"key": None}, TypeError, "key is required"),
    ({"concepts": 0}, ValueError, "concepts must be a positive int"),
    ({"concepts": 17}, ValueError, "concepts must be at most the 16 channels of layer 'layer4'"),
    ({"iterations": 0}, ValueError, "iterations must be a positive int"),
    ({"restarts": 0}, ValueError, "restarts must be a positive int"),
    ({"tol": -1.0}, ValueError, "tol must be a non-negative number"),
    ({"head": "fc"}, TypeError, "head must be None, 'auto' or a callable"),
    ({"head": lambda c: c[0]}, ValueError, r"head must return class scores \[K, classes\]"),
    ({"layer": ["layer4", "conv3"]}, ValueError, "takes one layer"),
    ({"layer": "nope"}, ValueError, "unknown layer 'nope'"),
    ({"upsample": "area"}, ValueError, "upsample must be one of"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    model_fn, params = fxai.functional(make_tiny_cnn())
    options = {"layer": "layer4", "concepts": 2, "key": 0, **kwargs}
    with pytest.raises(error, match=match):
        fxai.deep_feature_factorization(model_fn, params, torch.rand(2, 3, 16, 16), **options)


def test_head_auto_needs_a_matching_linear_layer():
    model_fn, params = fxai.functional(make_tiny_cnn())
    with pytest.raises(ValueError, match="last linear layer 'fc' does not take the layer's 8 channels"):
        fxai.deep_feature_factorization(model_fn, params, torch.rand(2, 3, 16, 16), layer="conv2", concepts=2,
                                        head="auto", key=0)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        fxai.deep_feature_factorization(model_fn, params, torch.rand(3, 16, 16), layer="layer4", key=0)


# ---------------------------------------------------------------- the figure


def test_concept_overlay_colours_each_pixel_by_its_strongest_concept():
    from fxai import viz

    image = torch.full((3, 2, 3), 0.5)
    maps = torch.tensor([[[0.5, 0.0, 2.0], [0.1, 0.0, 0.3]],
                         [[0.2, 0.0, 1.0], [0.4, 0.0, 0.3]]])
    colours = np.array([[0.5, 0.0, 0.0], [0.0, 1.0, 0.5]], dtype=np.float32)  # red at half value, spring green
    rgb = viz.concept_overlay(image, maps, colours=colours, alpha=0.6)
    unit = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    value = np.array([[0.5, 0.0, 1.0], [0.4, 0.0, 0.3]])  # strongest concept's value, clipped to [0, 1]
    best = np.array([[0, 0, 0], [1, 0, 0]])  # ties go to the first concept
    np.testing.assert_allclose(rgb, 0.4 * 0.5 + 0.6 * unit[best] * value[..., None], atol=1e-6)
    assert viz.concept_colours(4).shape == (4, 3)
    with pytest.raises(ValueError, match=r"maps must be \[K, H, W\] with the image's size"):
        viz.concept_overlay(image, maps[:, :1])
    with pytest.raises(ValueError, match=r"colours must be \[K, 3\]"):
        viz.concept_overlay(image, maps, colours=colours[:1])


def test_concept_overlay_matches_pytorch_grad_cam():
    """``show_factorization_on_image`` (uint8 HSV arithmetic) on the same maps, within its rounding."""
    from pytorch_grad_cam.utils.image import show_factorization_on_image

    from fxai import viz

    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 12, 12, generator=g)
    maps = torch.rand(3, 12, 12, generator=g)
    colours = viz.concept_colours(3)  # their default palette, which recent matplotlib no longer builds for them
    theirs = show_factorization_on_image(image.permute(1, 2, 0).numpy(), maps.numpy().copy(), image_weight=0.3,
                                         colors=[np.append(c, 1.0) for c in colours])
    ours = viz.concept_overlay(image, maps, alpha=0.7)
    assert np.abs(ours - theirs / 255.0).max() < 0.01


def test_concept_labels_and_factorization_figure(tmp_path):
    from fxai import viz

    assert viz.concept_labels(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]), labels=["cat", "dog", "emu"]) == \
        ["cat 0.84, dog 0.11", "emu 0.84, dog 0.11"]
    assert viz.concept_labels(torch.tensor([[2.0, 0.5]]), top=1, softmax=False) == ["0 2.00"]
    model_fn, params = fxai.functional(make_tiny_cnn())
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    dff = fxai.deep_feature_factorization(model_fn, params, x, layer="layer4", concepts=2, head="auto", key=0)
    fig = viz.factorization(x, dff, labels=list("abcde"), top=1, title="concepts")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    top = dff.class_scores.softmax(-1).max(-1)
    assert legend == [f"concept {k}: {'abcde'[int(top.indices[k])]} {float(top.values[k]):.2f}" for k in range(2)]
    assert len([ax for ax in fig.axes if ax.images]) == 3
    path = viz.save(fig, tmp_path / "dff.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    plain = viz.factorization(x, dff._replace(class_scores=None))
    assert [t.get_text() for t in plain.legends[0].get_texts()] == ["concept 0", "concept 1"]
    with pytest.raises(ValueError, match="same batch"):
        viz.factorization(x[:2], dff)
    with pytest.raises(TypeError, match="result must be the Factorization"):
        viz.factorization(x, dff.maps)


# ---------------------------------------------------------------- a trained CNN on the shapes dataset


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``positive`` (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata

    ranks = torch.from_numpy(rankdata(scores.numpy()))
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.slow
def test_concepts_of_a_trained_cnn_separate_object_from_background():
    """SmallCNN trained as the demo trains it (24×24, 300 steps; 100 % held-out accuracy), then 2 concepts at its
    last block over 64 held-out images: one concept's map picks out the objects' pixels well above chance."""
    from fxai.app import demo
    from fxai.data.synthetic import shapes

    config = demo.DemoConfig(size=24, width=16, steps=300, batch=64)
    model = demo.train(config, seed=0, device=torch.device("cpu"), progress=False)
    model_fn, params = fxai.functional(model)
    images, labels, masks = shapes(64, seed=0, start=demo.TEST_START, size=24)
    assert demo.accuracy(model_fn, params, images, labels) > 0.9
    out = fxai.deep_feature_factorization(model_fn, params, images, layer="features", concepts=2, key=0)
    aucs = [_auc(out.maps[:, k].flatten(), masks.flatten()) for k in range(2)]
    best = int(np.argmax(aucs))
    assert aucs[best] > 0.7  # chance: 0.5
    mass = fxai.metrics.relevance_mass(out.maps[:, best], masks).mean()
    assert mass > 1.5 * masks.float().mean()  # chance: the objects' share of the pixels


def test_channels_last_layers_are_read_as_grids():
    """A layer returning ``[B, h, w, C]`` (Swin) gives the factorisation of the same activations channels-first."""
    model_fn, params, maps, _ = _known_factors(0.0)
    nhwc = fxai.split(lambda p, x: model_fn.features(p, x).permute(0, 2, 3, 1), lambda p, a: a.mean((1, 2)))
    a = fxai.deep_feature_factorization(model_fn, params, maps, concepts=4, key=0, upsample=False)
    b = fxai.deep_feature_factorization(nhwc, params, maps, concepts=4, key=0, upsample=False)
    torch.testing.assert_close(b.maps, a.maps, rtol=0, atol=0)
    torch.testing.assert_close(b.concepts, a.concepts, rtol=0, atol=0)
    c = fxai.deep_feature_factorization(nhwc, params, maps, concepts=4, key=0, upsample=False,
                                        reshape=lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(c.maps, a.maps, rtol=0, atol=0)
